"""The encoder file on disk: its id and its model card (no TensorFlow needed).

The model id is the SHA-256 of the `.keras` file: a retrained or replaced
encoder gets a new id, and the library re-encodes what the old one made.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

from .config import Config, check_encoder
from .images import Shape

SCHEMA = "lookalike.model/1"


def model_id(model_path: Path) -> str:
    digest = hashlib.sha256()
    with open(model_path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def card_path(model_path: Path) -> Path:
    """`encoder.keras` -> `encoder.card.json`."""
    return model_path.with_suffix(".card.json")


def state_path(model_path: Path) -> Path:
    """`encoder.keras` -> `encoder.training.weights.h5`: its training state, where a
    later `lookalike train` can go on from (`training.save` writes it)."""
    return model_path.with_name(f"{model_path.stem}.training.weights.h5")


def made_alike(model_path: Path, preset: str, size: int, color: str, latent_dim: int) -> bool:
    """Whether the encoder file at `model_path` was trained with this preset, image side,
    colour mode and learned latent size (its card says), so that its training state
    fits a training with them."""
    card = read(model_path)
    return ((card.get("preset"), card.get("image_size"), card.get("color"),
             card.get("learned_latent_dim")) == (preset, size, color, latent_dim))


def read(model_path: Path) -> dict[str, Any]:
    """The model card beside `model_path`, or {} when there is none."""
    try:
        card: dict[str, Any] = json.loads(card_path(model_path).read_text(encoding="utf-8"))
        return card
    except (OSError, ValueError):
        return {}


def write(model_path: Path, card: dict[str, Any]) -> None:
    card_path(model_path).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def input_shape(model_path: Path) -> tuple[int, int] | None:
    """The side and channels (1 or 3) of the square images an encoder file reads, as its
    Keras config declares them, without loading TensorFlow; None if it declares none.

    For `lookalike import`, whose decoding tasks need the encoder's shape
    before any process has loaded it, and `run --once`, which loads it only
    when it has something to encode (`declared_shape`).
    """
    try:
        with zipfile.ZipFile(model_path) as archive:
            config = json.loads(archive.read("config.json"))
        batch_shape = next(layer["config"]["batch_shape"] for layer in config["config"]["layers"]
                           if layer["class_name"] == "InputLayer")
        _, height, width, channels = batch_shape
    except (OSError, KeyError, TypeError, ValueError, StopIteration, zipfile.BadZipFile):
        return None
    if height != width or channels not in (1, 3) or not isinstance(height, int):
        return None
    return height, channels


def declared_shape(config: Config) -> Shape | None:
    """The images the configured encoder reads, as its file declares them (`input_shape`),
    refused unless they agree with `image.size` and `image.color`, as the service checks
    (`check_encoder`); None if the file declares none."""
    declared = input_shape(config.model)
    if declared is None:
        return None
    side, channels = declared
    shape = Shape(side, "rgb" if channels == 3 else "grayscale", config.image.max_pixels)
    check_encoder(config, shape.size, shape.color)
    return shape
