"""The encoder file on disk: its id and its model card (no TensorFlow needed).

The model id is the SHA-256 of the `.keras` file: a retrained or replaced
encoder gets a new id, and the library re-encodes what the old one made.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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


def read(model_path: Path) -> dict[str, Any]:
    """The model card beside `model_path`, or {} when there is none."""
    try:
        card: dict[str, Any] = json.loads(card_path(model_path).read_text(encoding="utf-8"))
        return card
    except (OSError, ValueError):
        return {}


def write(model_path: Path, card: dict[str, Any]) -> None:
    card_path(model_path).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
