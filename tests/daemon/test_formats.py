"""Photos as people keep them, through the real `lookalike run --once`: HEIC and AVIF beside
their JPEG exports, and a journal without TensorFlow's banners."""
from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image

from tests.daemon.service import read_results
from tests.helpers import tensorflow_lines

pytestmark = pytest.mark.slow


def photo(seed: int, digit: Path) -> Image.Image:
    """A 320x240 picture of its own: smooth colour fields, and a digit's strokes on them."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    picture = Image.fromarray(field, "RGB").resize((320, 240), Image.Resampling.BICUBIC)
    with Image.open(digit) as strokes:
        mask = Image.eval(strokes.convert("L").resize((160, 160)), lambda v: 255 - v)
    picture.paste(Image.new("RGB", (160, 160), tuple(rng.integers(0, 256, 3).tolist())),
                  (int(rng.integers(0, 160)), int(rng.integers(0, 80))), mask)
    return picture


def test_heic_and_avif_photos_are_answered_with_their_jpeg_exports_first(
        tmp_path: Path, config_in: Callable[..., Path],
        digit_files: list[tuple[Path, int]],
        lookalike: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    config = config_in(tmp_path)
    inbox = tmp_path / "inbox"
    for n in range(40):
        photo(n, digit_files[n][0]).save(inbox / f"IMG_{n:04d}.jpg", quality=85)
    iphone, other = photo(100, digit_files[100][0]), photo(101, digit_files[101][0])
    pillow_heif.from_pillow(iphone).save(inbox / "IMG_0100.HEIC", quality=80)
    iphone.save(inbox / "IMG_0100 (export).jpg", quality=85)
    other.save(inbox / "IMG_0101.avif", quality=80)
    other.save(inbox / "IMG_0101 (export).jpg", quality=85)

    finished = lookalike("run", "--once", "-c", config)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("44 images in the library: 44 added")
    # the journal: lookalike's own lines only, though TensorFlow loaded and encoded
    assert tensorflow_lines(finished.stderr) == [], finished.stderr

    for image, twin in [("IMG_0100.HEIC", "IMG_0100 (export).jpg"),
                        ("IMG_0101.avif", "IMG_0101 (export).jpg")]:
        for query, first in [(image, twin), (twin, image)]:
            document = read_results(inbox / query)
            assert document is not None and document["status"] == "ok", document
            assert document["neighbors"][0]["path"] == first, (query, document["neighbors"][:3])
