#!/usr/bin/env python3
"""Give a saved `lookalike` encoder the current palette graph, keeping every weight.

    python scripts/upgrade_encoder.py OLD.keras NEW.keras

Encoders saved before the palette levels became a lookup table bucket each
channel with a Discretization layer, two thirds of their encoding time. This
rebuilds the graph with the table (`model.channel_levels`), copies every
weight by layer name, checks that both give the very same vectors on random
images, and saves the new file with its card (the old card, a new model id:
a library re-encodes what the old file made). Retraining is not needed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def upgraded(old: Any) -> Any:
    import keras

    from lookalike.core import model

    size, channels = int(old.input_shape[1]), int(old.input_shape[3])
    levels = 16 if channels == 3 else 256
    seen: dict[str, Any] = {}

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer.name == "unit_range":
            seen["image"] = args[0]  # the new graph's input: whole channel values
        if layer.name == "quantise":
            table = keras.layers.Embedding(256, 1, trainable=False, name="channel_level")
            levelled = keras.layers.Reshape((size, size, channels),
                                            name="channel_levels")(table(seen["image"]))
            table.set_weights([model.channel_levels(levels)])
            return levelled
        if layer.name == "as_float":
            return args[0]
        return layer(*args, **kwargs)

    new = keras.models.clone_model(old, call_function=call)
    for layer in new.layers:
        if layer.name != "channel_level" and layer.weights:
            layer.set_weights(old.get_layer(layer.name).get_weights())
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    from lookalike.core import card, model

    encoder = model.load(args.old)
    if "quantise" not in [layer.name for layer in encoder.model.layers]:
        raise SystemExit(f"{args.old}: has no Discretization layer: nothing to upgrade")
    new = upgraded(encoder.model)
    pixels = np.random.default_rng(0).integers(0, 256, (256, encoder.shape.size,
                                                        encoder.shape.size,
                                                        encoder.shape.channels), np.uint8)
    pixels[0] = np.arange(256).repeat(-(-pixels[0].size // 256))[:pixels[0].size].reshape(
        pixels[0].shape)  # every channel value once at least
    new.save(args.new)
    reloaded = model.load(args.new)  # as the service loads it: safe mode
    difference = float(np.abs(reloaded.encode(pixels) - encoder.encode(pixels)).max())
    if difference != 0.0:
        args.new.unlink()
        raise SystemExit(f"the upgraded encoder differs by {difference}: not saved")
    old_card = card.read(args.old)
    card.write(args.new, {**old_card, "model_id": card.model_id(args.new),
                          "upgraded_from": old_card.get("model_id", card.model_id(args.old))})
    print(json.dumps({"old": str(args.old), "new": str(args.new), "max_difference": difference,
                      "model_id": card.model_id(args.new)}))


if __name__ == "__main__":
    main()
