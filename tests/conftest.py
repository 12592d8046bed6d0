"""Shared fixtures: real labelled digit images, a small real encoder, configs.

The digits are scikit-learn's 1,797 real 8x8 scans (10 labels), drawn as
56x56 PNGs here from scikit-learn's data (`write_digits`). The encoder is the
seed preset trained for a few epochs on them: real TensorFlow, small enough
to train once per run of the tests, in seconds.
"""
from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_config


def write_digits(out: Path, count: int | None = None, flat: bool = False) -> dict[str, int]:
    """Write digit images; return {relative path: label}."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels: dict[str, int] = {}
    for n, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if count is not None and n >= count:
            break
        gray = (255 - pixels / 16.0 * 255).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(gray, "L").resize((56, 56), Image.BILINEAR)
        relative = f"{n:04d}.png" if flat else f"{int(label)}/{n:04d}.png"
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(out / relative)
        labels[relative] = int(label)
    return labels


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 1,797 digits as <label>/<n>.png (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


@pytest.fixture(scope="session")
def encoder_path(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Path:
    """A real encoder (seed preset, grayscale 56x56, latent 32) trained 3 epochs on the digits."""
    from lookalike.core import images, training
    from lookalike.daemon.training import read_folder

    shape = images.Shape(56, "grayscale")
    _, pixels, fingerprint = read_folder(digits_root, shape)
    trained = training.train(pixels, shape, latent_dim=32, epochs=3, verbose=0)
    path = tmp_path_factory.mktemp("model") / "digits.keras"
    training.save(trained, path, {"data": "digits", "data_fingerprint": fingerprint})
    return path


@pytest.fixture
def make_config(tmp_path: Path, encoder_path: Path) -> Callable[..., Path]:
    """Write a config.yaml under tmp_path (inbox/, queries/, state/ beside it); return its path.

    Keyword arguments override top-level keys; nested ones as dicts, e.g.
    make_config(index={"trees": 5}).
    """
    def make(**overrides: object) -> Path:
        return write_config(tmp_path, encoder_path, **overrides)

    return make


@pytest.fixture
def inbox_of(digits_root: Path) -> Callable[[Path, int], list[str]]:
    """Copy the first `count` digits (flat names) into a folder; return their names."""
    def fill(folder: Path, count: int) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        sources = sorted(digits_root.glob("*/*.png"), key=lambda p: p.name)[:count]
        for source in sources:
            shutil.copy(source, folder / source.name)
        return [source.name for source in sources]

    return fill


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running (as watchdog's tests do)."""
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()
                and not t.daemon]
    assert not leftover, f"threads left running: {leftover}"
