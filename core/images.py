"""Decode any raster Pillow reads and shape it for the encoder.

`load` returns a (size, size, channels) uint8 array: upright (EXIF
orientation applied), transparency flattened onto white, converted to the
model's colour mode and resized (squashed, as in the seed article) to its
square input. JPEGs are decoded in draft mode, at the smallest scale that
still covers the output, so a 12-megapixel photo never decodes in full.

A JPEG with nothing in it that Pillow would act on (no orientation, not a
multi-picture file, not CMYK) is decoded by simplejpeg at Pillow's draft
scale: the same libjpeg-turbo, pixel for pixel the same image, but decoded
without holding the GIL and without parsing the header in Python: a
256x256 JPEG, resize included, decodes in two thirds of the time, on one
thread or two. Anything else, and any JPEG simplejpeg refuses, goes to
Pillow, which also says what is wrong.

HEIC/HEIF (every iPhone's photos) are read through pillow-heif, whose opener
is registered once, here, before anything asks Pillow which extensions it
opens; AVIF is Pillow's own. Both declare their size before decoding, so the
pixel limit applies first; pillow-heif turns the picture upright as it
decodes (and resets the EXIF orientation, which would turn it again), and
decodes an embedded thumbnail when one still covers the output.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pillow_heif
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UnreadableImage

# Depth maps and auxiliary images (an iPhone portrait's) are never read: not opened.
pillow_heif.register_heif_opener(depth_images=False, aux_images=False)
# The formats whose draft mode decodes less than the whole picture: JPEG at a
# smaller scale, HEIF an embedded thumbnail that still covers the wanted size.
DRAFTED = ("JPEG", "HEIF")

COLORS = {"rgb": "RGB", "grayscale": "L"}
WHITE = {"RGB": (255, 255, 255), "L": 255}
# What makes Pillow do more to a JPEG than decode its pixels: an orientation to
# apply (EXIF, or XMP since Pillow 9), or a multi-picture file (MPO) that it decodes
# without draft mode. They live in the segments before the first scan (`jpeg_header`);
# found anywhere there they send the file to Pillow: a stray match only costs speed.
JPEG_EXTRAS = (b"Exif\x00", b"http://ns.adobe.com/xap/1.0/", b"MPF\x00")
SIMPLE_COLORSPACES = ("YCbCr", "Gray")  # (CMYK, YCCK and RGB-coded JPEGs: Pillow)


@dataclass(frozen=True)
class Shape:
    """What the encoder reads: a square side and a colour mode."""

    size: int
    color: str  # "rgb" or "grayscale"
    max_pixels: int = 150_000_000

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # (size, size, channels) uint8
    sha256: str  # of the file's bytes, as read
    size: tuple[int, int]  # the picture's upright width and height (`decode_sized`)


def read(path: Path) -> bytes:
    """The file's bytes, or UnreadableImage saying why not.

    Only a regular file is read, and that is checked on the open file too:
    a file swapped for a FIFO between a look and the read must not block.
    """
    try:
        # stat, not is_file(): is_file() says False for a missing file too.
        if not stat.S_ISREG(path.stat().st_mode):
            raise UnreadableImage("not_a_file", "not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as image:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnreadableImage("not_a_file", "not a regular file")
            data = image.read()
    except PermissionError:
        raise UnreadableImage("unreadable", "no permission to read the file") from None
    except FileNotFoundError:
        raise UnreadableImage("vanished", "the file disappeared before it could be read") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnreadableImage("unreadable", "a loop of symbolic links: it leads to no file") \
                from None
        raise UnreadableImage("unreadable", f"cannot read the file: {error.strerror}") from None
    if not data:
        raise UnreadableImage("empty", "the file is empty")
    return data


def load(path: Path, shape: Shape) -> Decoded:
    """Read and decode one file; raise UnreadableImage with a code and a reason."""
    data = read(path)
    pixels, size = decode_sized(data, shape)
    return Decoded(pixels, hashlib.sha256(data).hexdigest(), size)


def decode(data: bytes, shape: Shape) -> np.ndarray:
    return decode_sized(data, shape)[0]


def decode_sized(data: bytes, shape: Shape) -> tuple[np.ndarray, tuple[int, int]]:
    """The encoder's pixels of an image file's bytes, and the picture's upright width and
    height (as `lookalike duplicates` reports them)."""
    side = (shape.size, shape.size)
    converted, size = plain_jpeg(data, shape), None
    if converted is not None:
        size = simplejpeg.decode_jpeg_header(data)[1::-1]
    else:
        converted = upright(data, COLORS[shape.color], shape.max_pixels, side)
        size = converted.info.get("upright_size", converted.size)
    resized = converted.resize(side, Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = np.asarray(resized, dtype=np.uint8)
    return pixels.reshape(shape.size, shape.size, shape.channels), (int(size[0]), int(size[1]))


def plain_jpeg(data: bytes, shape: Shape) -> Image.Image | None:
    """A JPEG without extras decoded as Pillow's draft mode would, or None for Pillow to do.

    simplejpeg picks the scale from the wanted size and `min_factor`; the
    ones Pillow's draft picks (1/8, 1/4, 1/2, 1) are among libjpeg's.
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    header = jpeg_header(data)
    if any(extra in header for extra in JPEG_EXTRAS):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in SIMPLE_COLORSPACES or width * height > shape.max_pixels:
            return None
        scale = draft_scale(width, height, shape.size)
        wanted = (-(-height // scale), -(-width // scale))  # as Pillow rounds: up
        pixels = simplejpeg.decode_jpeg(data, "RGB" if shape.color == "rgb" else "GRAY",
                                        min_height=wanted[0], min_width=wanted[1],
                                        min_factor=scale)
    except ValueError:  # damaged, or only a warning: Pillow decides, and says why
        return None
    if pixels.shape[:2] != wanted:
        return None
    return Image.fromarray(pixels if shape.color == "rgb" else pixels[:, :, 0])


def jpeg_header(data: bytes) -> bytes:
    """A JPEG's segments before its first scan, where its extras are, walked marker by
    marker: a large photo's scan is megabytes not worth searching. All of `data` when
    the segments cannot be walked."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return data
        marker = data[at + 1]
        if marker == 0xDA:  # start of scan
            return data[:at]
        if marker == 0xFF:  # a fill byte
            at += 1
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            at += 2
        else:
            at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return data


def draft_scale(width: int, height: int, side: int) -> int:
    """The reduction Pillow's JPEG draft mode picks to still cover side x side."""
    fits = min(width // side, height // side)
    return next(scale for scale in (8, 4, 2, 1) if fits >= scale or scale == 1)


def upright(data: bytes, mode: str, max_pixels: int,
            draft: tuple[int, int] | None = None) -> Image.Image:
    """The first frame of an image file's bytes, upright, in `mode` ("RGB" or "L").

    Transparency is flattened onto white. A JPEG decodes at the smallest
    scale that still covers `draft`, a HEIC its smallest thumbnail that does
    (if any). Raises UnreadableImage saying why not.
    """
    try:
        with warnings.catch_warnings():
            # Our own limit (max_pixels) decides, below; Pillow's warning fires at
            # 89.5 Mpx, under the configured default, and would refuse a 100 Mpx photo.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise UnreadableImage(
                        "too_many_pixels",
                        f"{width}x{height} pixels is more than the limit of {max_pixels:,}")
                if image.format in DRAFTED and draft is not None:
                    image.draft(mode if image.mode != "CMYK" else None, draft)
                image.seek(0)  # the first frame of an animation
                image.load()
                turned = ImageOps.exif_transpose(image)
                # The picture's own size, upright: a draft decodes it smaller.
                full = (height, width) if turned.size[::-1] == image.size[:2] and \
                    turned.size != image.size else (width, height)
                converted = to_mode(turned, mode)
                converted.info["upright_size"] = full
                return converted
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not_an_image", "not an image file that can be decoded") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow refuses at open time past twice its own limit; its message has the count.
        declared = re.search(r"\((\d+) pixels\)", str(error))
        count = f"{int(declared.group(1)):,} pixels" if declared else "too many pixels"
        raise UnreadableImage("too_many_pixels", f"{count} is more than the limit of "
                              f"{max_pixels:,} (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        code = "truncated" if "truncated" in str(error) else "corrupt"
        raise UnreadableImage(code, f"the image data is damaged: {error}") from None


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` in `mode` ("RGB" or "L"), transparency flattened onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = to_8bit(image)
    # A palette entry or (in RGB and L) a colour key may mark transparency too.
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


def to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16-bit or 32-bit grey image into 0..255 (convert() would clip it)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.max() <= 1.0 else float(values.max())
    else:  # "I;16*" or "I" (how Pillow opens 16-bit PNG and TIFF)
        top = 65535.0 if values.max() <= 65535 else float(values.max())
    return Image.fromarray((values / top * 255.0).clip(0, 255).astype(np.uint8), "L")
