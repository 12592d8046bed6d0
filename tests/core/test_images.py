"""Decoding real image files of every kind Pillow writes, and refusing bad ones."""
from __future__ import annotations

import hashlib
import os
import resource
import signal
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from lookalike.core import images
from lookalike.core.errors import UnreadableImage
from tests.helpers import png_header_only

GRAY = images.Shape(56, "grayscale")
RGB = images.Shape(56, "rgb")


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def halves(width: int, height: int, left: int, right: int, mode: str = "L") -> Image.Image:
    """An image whose left half has value `left` and right half `right`."""
    image = Image.new(mode, (width, height), right)
    image.paste(left, (0, 0, width // 2, height))
    return image


def refused(path: Path, shape: images.Shape = RGB) -> str:
    """The error code `images.load` gives for `path` (fails if it decodes)."""
    with pytest.raises(UnreadableImage) as caught:
        images.load(path, shape)
    assert caught.value.message  # a reason a person can read
    return caught.value.code


@pytest.fixture
def alarm() -> Iterator[None]:
    """Turn a read that would block for ever into a failure after 5 s."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("images.load blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# -- every format ------------------------------------------------------------
def save_jpeg(path: Path) -> None:
    noise(90, 70).save(path, "JPEG", quality=90)


def save_png(path: Path) -> None:
    noise(64, 64).save(path, "PNG")


def save_webp(path: Path) -> None:
    noise(64, 48).save(path, "WEBP")


def save_tiff(path: Path) -> None:
    noise(40, 60).save(path, "TIFF")


def save_bmp(path: Path) -> None:
    noise(33, 17).save(path, "BMP")


def save_gray_png(path: Path) -> None:
    noise(64, 64).convert("L").save(path, "PNG")


def save_gray_jpeg(path: Path) -> None:
    noise(64, 64).convert("L").save(path, "JPEG")


def save_heic(path: Path) -> None:
    noise(64, 48).save(path, "HEIF", quality=90)  # (pillow-heif's writer)


def save_avif(path: Path) -> None:
    noise(64, 48).save(path, "AVIF", quality=90)


FORMATS: dict[str, Callable[[Path], None]] = {
    "x.jpg": save_jpeg, "x.png": save_png, "x.webp": save_webp, "x.tif": save_tiff,
    "x.bmp": save_bmp, "gray.png": save_gray_png, "gray.jpg": save_gray_jpeg,
    "x.heic": save_heic, "x.avif": save_avif,
}


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("shape", [GRAY, RGB, images.Shape(32, "rgb")], ids=str)
def test_every_format_gives_uint8_square_and_file_hash(tmp_path: Path, name: str,
                                                       shape: images.Shape) -> None:
    if name.endswith(".webp") and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    path = tmp_path / name
    FORMATS[name](path)
    decoded = images.load(path, shape)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == (shape.size, shape.size, shape.channels)
    assert decoded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert decoded.pixels.std() > 10  # the noise survived: not a blank image


def test_colours_are_kept_in_rgb(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (200, 30, 90)).save(tmp_path / "x.png")
    pixels = images.load(tmp_path / "x.png", RGB).pixels
    assert np.abs(pixels.reshape(-1, 3) - (200, 30, 90)).max() <= 1


def test_png_alpha_is_flattened_onto_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half: black, fully transparent
    rgba.save(tmp_path / "alpha.png")
    pixels = images.load(tmp_path / "alpha.png", RGB).pixels
    assert pixels[:, :26].min() >= 250  # transparent: white, not the hidden black
    assert pixels[:, 30:].max() <= 5


def test_grey_alpha_is_flattened_onto_white(tmp_path: Path) -> None:
    grey = halves(64, 64, 0, 0).convert("LA")
    grey.putalpha(halves(64, 64, 0, 255))
    grey.save(tmp_path / "la.png")
    pixels = images.load(tmp_path / "la.png", GRAY).pixels
    assert pixels[:, :26].min() >= 250
    assert pixels[:, 30:].max() <= 5


def test_palette_png_transparency_becomes_white(tmp_path: Path) -> None:
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # 0 black, 1 red
    palette.paste(0, (0, 0, 32, 64))
    palette.save(tmp_path / "palette.png", transparency=0)
    assert Image.open(tmp_path / "palette.png").mode == "P"
    pixels = images.load(tmp_path / "palette.png", RGB).pixels
    assert pixels[:, :26].min() >= 250  # transparent index: white, not black
    assert np.abs(pixels[:, 30:].reshape(-1, 3).astype(int) - (255, 0, 0)).max() <= 2


@pytest.mark.parametrize(("mode", "key", "opaque"), [("RGB", (0, 0, 0), (200, 0, 0)),
                                                    ("L", 0, 200)])
def test_colour_key_transparency_becomes_white(tmp_path: Path, mode: str, key: object,
                                               opaque: object) -> None:
    keyed = Image.new(mode, (64, 64), key)  # type: ignore[arg-type]
    keyed.paste(opaque, (32, 0, 64, 64))  # type: ignore[arg-type]
    keyed.save(tmp_path / "keyed.png", transparency=key)
    assert Image.open(tmp_path / "keyed.png").info["transparency"] == key
    pixels = images.load(tmp_path / "keyed.png", GRAY).pixels[:, :, 0].astype(int)
    assert pixels[:, :26].min() >= 250  # the key colour is transparent: white
    assert pixels[:, 30:].max() < 250


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.zeros((64, 64), np.uint16)
    ramp[:, :16], ramp[:, 16:32], ramp[:, 32:48], ramp[:, 48:] = 0, 16384, 32768, 65535
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")
    pixels = images.load(tmp_path / "deep.png", GRAY).pixels[:, :, 0].astype(int)
    assert abs(pixels[:, 2:12].mean() - 0) <= 1
    assert abs(pixels[:, 16:26].mean() - 64) <= 2  # clipping would give 255
    assert abs(pixels[:, 30:40].mean() - 128) <= 2
    assert abs(pixels[:, 44:54].mean() - 255) <= 1


def test_16_bit_mid_grey_comes_out_mid_grey(tmp_path: Path) -> None:
    Image.new("I;16", (64, 64), 32768).save(tmp_path / "mid.png")
    pixels = images.load(tmp_path / "mid.png", RGB).pixels
    assert np.abs(pixels.astype(int) - 128).max() <= 2


def test_16_bit_tiff_is_scaled(tmp_path: Path) -> None:
    Image.new("I;16", (64, 64), 16384).save(tmp_path / "deep.tif")
    pixels = images.load(tmp_path / "deep.tif", GRAY).pixels
    assert np.abs(pixels.astype(int) - 64).max() <= 2


def test_float_tiff_in_0_to_1_is_scaled(tmp_path: Path) -> None:
    Image.fromarray(np.full((64, 64), 0.75, np.float32), "F").save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    pixels = images.load(tmp_path / "float.tif", RGB).pixels
    assert np.abs(pixels.astype(int) - 191).max() <= 2


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (80, 80), (0, 255, 255, 0)).save(tmp_path / "print.jpg", "JPEG")
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    pixels = images.load(tmp_path / "print.jpg", RGB).pixels.reshape(-1, 3).astype(int)
    assert np.abs(pixels - (255, 0, 0)).max() <= 8  # red, not inverted cyan
    assert images.load(tmp_path / "print.jpg", GRAY).pixels.shape == (56, 56, 1)


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    black, white = Image.new("L", (40, 40), 0), Image.new("L", (40, 40), 255)
    grey = Image.new("L", (40, 40), 128)
    black.save(tmp_path / "anim.gif", save_all=True, append_images=[white, grey], duration=50)
    assert getattr(Image.open(tmp_path / "anim.gif"), "n_frames", 1) == 3
    assert images.load(tmp_path / "anim.gif", GRAY).pixels.max() <= 5
    white.save(tmp_path / "anim2.gif", save_all=True, append_images=[black], duration=50)
    assert images.load(tmp_path / "anim2.gif", GRAY).pixels.min() >= 250


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = halves(80, 40, 0, 255).convert("RGB")  # as stored: left half dark
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "turned.jpg", "JPEG", quality=95, exif=exif)
    stored.save(tmp_path / "plain.jpg", "JPEG", quality=95)

    upright = images.load(tmp_path / "turned.jpg", GRAY).pixels[:, :, 0].astype(int)
    # Turned clockwise, the stored left edge is at the top.
    assert upright[:24].mean() < 30 and upright[32:].mean() > 225
    assert abs(upright[:, :24].mean() - upright[:, 32:].mean()) < 20

    plain = images.load(tmp_path / "plain.jpg", GRAY).pixels[:, :, 0].astype(int)
    assert plain[:, :24].mean() < 30 and plain[:, 32:].mean() > 225


@pytest.mark.parametrize("kind", ["HEIF", "AVIF"])
def test_a_turned_heic_or_avif_comes_out_upright_turned_once(tmp_path: Path, kind: str) -> None:
    import pillow_heif

    stored = halves(80, 40, 0, 255).convert("RGB")  # as the camera's sensor saw it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as an iPhone held upright
    if kind == "HEIF":  # as an iPhone writes it: a rotation box (irot) and the EXIF tag
        pillow_heif.from_pillow(stored).save(tmp_path / "turned", quality=95,
                                             exif=exif.tobytes())
    else:
        stored.save(tmp_path / "turned", kind, quality=95, exif=exif)
    assert b"irot" in (tmp_path / "turned").read_bytes()
    upright = images.load(tmp_path / "turned", GRAY).pixels[:, :, 0].astype(int)
    # As for the JPEG above: the stored left edge at the top, turned once, not twice.
    assert upright[:24].mean() < 30 and upright[32:].mean() > 225
    assert abs(upright[:, :24].mean() - upright[:, 32:].mean()) < 20


def test_heic_over_the_pixel_limit_is_refused_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pillow_heif.as_plugin import HeifImageFile

    noise(400, 300).save(tmp_path / "big.heic", "HEIF")

    def decode(self: object) -> None:
        raise AssertionError("decoded an image over the limit")

    monkeypatch.setattr(HeifImageFile, "load", decode)
    with pytest.raises(UnreadableImage) as caught:
        images.load(tmp_path / "big.heic", images.Shape(56, "rgb", max_pixels=100_000))
    assert (caught.value.code, "400x300" in caught.value.message) == ("too_many_pixels", True)


@pytest.mark.parametrize("kind", ["HEIF", "AVIF"])
def test_truncated_heic_and_avif_are_refused(tmp_path: Path, kind: str) -> None:
    stream = BytesIO()
    noise(200, 150).save(stream, kind, quality=90)
    (tmp_path / "cut").write_bytes(stream.getvalue()[:len(stream.getvalue()) // 2])
    # (Pillow's AVIF reader cannot even open half a file: "not_an_image")
    assert refused(tmp_path / "cut") in ("truncated", "corrupt", "not_an_image")


@pytest.mark.parametrize("shape", [GRAY, RGB], ids=str)
def test_large_jpeg_decodes_in_draft_mode(tmp_path: Path, shape: images.Shape) -> None:
    photo = halves(4000, 3000, 20, 230).convert("RGB")
    photo.save(tmp_path / "photo.jpg", "JPEG", quality=80)
    pixels = images.load(tmp_path / "photo.jpg", shape).pixels
    assert pixels.shape == (shape.size, shape.size, shape.channels)
    assert pixels[:, :24].mean() < 40 and pixels[:, 32:].mean() > 210


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    stream = BytesIO()
    image.save(stream, "JPEG", **options)
    return stream.getvalue()


@pytest.mark.parametrize("size", [(256, 256), (300, 200), (449, 112), (57, 113), (20, 20),
                                  (1, 1), (4000, 3000)], ids=str)
@pytest.mark.parametrize("kind", ["colour", "grey", "progressive", "444"])
@pytest.mark.parametrize("shape", [GRAY, RGB, images.Shape(32, "rgb")], ids=str)
def test_plain_jpeg_gives_pillows_pixels(monkeypatch: pytest.MonkeyPatch, size: tuple[int, int],
                                         kind: str, shape: images.Shape) -> None:
    # A smooth picture with noise on it: real detail at every scale Pillow's draft picks.
    picture = Image.blend(noise(8, 6).resize(size, Image.Resampling.BICUBIC), noise(*size), 0.3)
    data = jpeg_bytes(picture.convert("L") if kind == "grey" else picture, quality=85,
                      progressive=kind == "progressive", subsampling=0 if kind == "444" else -1)
    assert images.plain_jpeg(data, shape) is not None  # the fast path is taken
    fast = images.decode(data, shape)
    monkeypatch.setattr(images, "plain_jpeg", lambda data, shape: None)
    assert np.array_equal(fast, images.decode(data, shape))  # Pillow's, to the last bit


def test_jpeg_that_pillow_would_treat_differently_is_left_to_it() -> None:
    picture = noise(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    left = {"exif": jpeg_bytes(picture, exif=exif), "xmp": jpeg_bytes(picture, xmp=xmp),
            "cmyk": jpeg_bytes(picture.convert("CMYK")), "png": png_bytes(picture),
            "truncated": jpeg_bytes(picture)[:-200],
            # The walk over the segments steps over a start-of-scan marker in a payload.
            "xmp after a stray marker": with_segment(jpeg_bytes(picture, xmp=xmp),
                                                     b"\xff\xda" * 99)}
    for name, data in left.items():
        assert images.plain_jpeg(data, RGB) is None, name
    assert images.plain_jpeg(jpeg_bytes(picture), RGB) is not None
    few = images.Shape(56, "rgb", max_pixels=120 * 80 - 1)  # Pillow says it is too large
    assert images.plain_jpeg(jpeg_bytes(picture), few) is None


def with_segment(data: bytes, payload: bytes) -> bytes:
    """A JPEG with an application segment (APP15) holding `payload` first."""
    return data[:2] + b"\xff\xef" + (2 + len(payload)).to_bytes(2, "big") + payload + data[2:]


def test_jpeg_header_ends_at_the_first_scan() -> None:
    data = jpeg_bytes(noise(120, 80))
    assert images.jpeg_header(data) == data[:data.index(b"\xff\xda")]
    assert images.jpeg_header(b"\xff\xd8\xff\xe0 not segments") == b"\xff\xd8\xff\xe0 not segments"


def png_bytes(image: Image.Image) -> bytes:
    stream = BytesIO()
    image.save(stream, "PNG")
    return stream.getvalue()


def test_image_under_the_limit_but_over_pillows_bomb_warning_is_decoded(tmp_path: Path) -> None:
    # 90 Mpx: more than Pillow's default MAX_IMAGE_PIXELS (89.5 Mpx), fewer than the
    # configured 150 Mpx limit. A 100 Mpx camera is real; the configured limit decides.
    assert 10_000 * 9_000 > (Image.MAX_IMAGE_PIXELS or 0)
    Image.new("L", (10_000, 9_000), 128).save(tmp_path / "huge.jpg", "JPEG", quality=50)
    shape = images.Shape(56, "grayscale", max_pixels=150_000_000)
    pixels = images.load(tmp_path / "huge.jpg", shape).pixels
    assert pixels.shape == (56, 56, 1) and abs(int(pixels.mean()) - 128) <= 2


# -- refusals with a code --------------------------------------------------------
def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").touch()
    assert refused(tmp_path / "empty.jpg") == "empty"


def test_text_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not a picture\n" * 20)
    assert refused(tmp_path / "notes.jpg") == "not_an_image"


def test_truncated_jpeg(tmp_path: Path) -> None:
    noise(200, 200).save(tmp_path / "whole.jpg", "JPEG")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    assert refused(tmp_path / "cut.jpg") in ("truncated", "corrupt")


def test_truncated_png(tmp_path: Path) -> None:
    noise(200, 200).save(tmp_path / "whole.png", "PNG")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    assert refused(tmp_path / "cut.png") in ("truncated", "corrupt")


def test_corrupt_jpeg_body(tmp_path: Path) -> None:
    noise(200, 200).save(tmp_path / "whole.jpg", "JPEG")
    data = bytearray((tmp_path / "whole.jpg").read_bytes())
    data[len(data) // 3:] = b"\xff\xd9" * ((len(data) - len(data) // 3) // 2)
    (tmp_path / "garbled.jpg").write_bytes(bytes(data))
    try:
        decoded = images.load(tmp_path / "garbled.jpg", RGB)
    except UnreadableImage as problem:  # libjpeg may also pad a damaged scan: either is fine
        assert problem.code in ("truncated", "corrupt")
    else:
        assert decoded.pixels.shape == (56, 56, 3)


def test_png_declaring_ten_gigapixels_is_refused_without_allocating(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert refused(tmp_path / "bomb.png") == "too_many_pixels"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50_000  # decoding would need 10 GB


def test_configured_pixel_limit(tmp_path: Path) -> None:
    noise(100, 100).save(tmp_path / "x.png")
    with pytest.raises(UnreadableImage) as caught:
        images.load(tmp_path / "x.png", images.Shape(56, "rgb", max_pixels=9_999))
    assert caught.value.code == "too_many_pixels"
    assert "100x100" in caught.value.message
    assert images.load(tmp_path / "x.png", images.Shape(56, "rgb", max_pixels=10_000))


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    assert refused(tmp_path / "folder.jpg") == "not_a_file"


def test_missing_file_has_vanished(tmp_path: Path) -> None:
    assert refused(tmp_path / "gone.jpg") == "vanished"


def test_broken_symlink_has_vanished(tmp_path: Path) -> None:
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    assert refused(tmp_path / "link.jpg") == "vanished"


@pytest.mark.usefixtures("alarm")
def test_fifo_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.jpg")  # opening it for reading would wait for a writer
    assert refused(tmp_path / "x.jpg") == "not_a_file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_without_read_permission(tmp_path: Path) -> None:
    noise(20, 20).save(tmp_path / "secret.png")
    (tmp_path / "secret.png").chmod(0)
    try:
        assert refused(tmp_path / "secret.png") == "unreadable"
    finally:
        (tmp_path / "secret.png").chmod(0o644)


def test_symlink_to_an_image_is_read(tmp_path: Path) -> None:
    noise(30, 30).save(tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert np.array_equal(images.load(tmp_path / "link.png", RGB).pixels,
                          images.load(tmp_path / "real.png", RGB).pixels)


def test_decode_is_deterministic(tmp_path: Path) -> None:
    noise(123, 77).save(tmp_path / "x.jpg", "JPEG")
    first = images.load(tmp_path / "x.jpg", RGB)
    assert np.array_equal(first.pixels, images.load(tmp_path / "x.jpg", RGB).pixels)
