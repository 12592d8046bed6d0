#!/usr/bin/env python3
"""`lookalike train` on images its starting encoder never saw: for choosing its defaults.

    python scripts/build_suite.py /tmp/suite --cache /tmp/suite-cache
    python bench/own_images.py /tmp/suite [--domains digits,glyphs]
        [--settings "epochs=10;epochs=5;epochs=10,learning_rate=0.0003"]
        [--models bench/results/own-images-models]

The shipped encoder was trained on every development part of the
evaluation suite, so `lookalike train` on one of them shows it nothing
new: a default of `train` chosen that way is chosen on images the start
already knows, where a user's images are new to it. Here, for each domain,
an encoder trained from scratch as the shipped one was (its recipe and
epochs) on the development parts of the *other* domains stands in for the
shipped encoder; `train` then goes on from it on this domain's development
part, once per setting (options of the recipe, `epochs` and
`learning_rate`), as `lookalike train --start` does, and the start and
each outcome are scored on that part, exactly as `bench/suite.py` scores
(precision@12, or first neighbour / recall@12 for copies). Development
parts only: choosing is what this is for. Encoders are kept in --models
and reused.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from suite import PIXELS, measure, vectors_of

from lookalike.core import images
from lookalike.daemon.training import read_folder

DOMAINS = ("digits", "icons", "glyphs", "photos", "textures")
SHAPE = images.Shape(56, "rgb")


def setting(spec: str) -> dict[str, float]:
    """`epochs=10,learning_rate=0.001` -> {"epochs": 10.0, "learning_rate": 0.001}."""
    return {key: float(value) for key, _, value in
            (part.partition("=") for part in spec.split(",") if part)}


def pixels_of(suite: Path, domains: list[str]) -> np.ndarray:
    return np.concatenate([read_folder(suite / domain / "dev", SHAPE)[1] for domain in domains])


def trained(path: Path, pixels: np.ndarray, start: Path | None, epochs: int,
            learning_rate: float | None = None) -> Path:
    """The default recipe trained on `pixels` from `start` (None: scratch), kept at `path`."""
    from lookalike.core import training

    if path.is_file():
        return path
    recipe = training.PRESETS[training.DEFAULT_PRESET]
    if learning_rate is not None:
        recipe = replace(recipe, learning_rate=learning_rate)
    outcome = training.train(pixels, SHAPE, preset=recipe, epochs=epochs, verbose=2,
                             start=start)
    training.save(outcome, path, {"own_images": str(path.name)})
    return path


def scored(path: Path, suite: Path, domain: str, models: Path) -> dict[str, object]:
    """The encoder at `path` scored on `domain`'s development part, as bench/suite.py does."""
    part = suite / domain / "dev"
    paths, _, _ = read_folder(part, PIXELS)
    vectors, metric = vectors_of(str(path), suite, part, paths, models, domain, None)
    return measure((suite / domain / "kind").read_text().strip(), vectors, paths, metric)


def main() -> int:
    from lookalike.core import training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--domains", default=",".join(DOMAINS))
    parser.add_argument("--settings", default="epochs=10",
                        help="';'-separated settings of the training that goes on")
    parser.add_argument("--models", type=Path, default=Path("bench/results/own-images-models"))
    args = parser.parse_args()
    if not args.suite.is_dir():
        parser.error(f"{args.suite}: no such folder (make it with scripts/build_suite.py)")
    args.models.mkdir(parents=True, exist_ok=True)
    for domain in args.domains.split(","):
        others = [d for d in DOMAINS if d != domain]
        start = trained(args.models / f"without-{domain}.keras",
                        pixels_of(args.suite, others), None, training.EPOCHS["scratch"])
        row: dict[str, object] = {"domain": domain,
                                  "start": scored(start, args.suite, domain, args.models)}
        own = pixels_of(args.suite, [domain])
        for spec in args.settings.split(";"):
            chosen = setting(spec)
            epochs = int(chosen.get("epochs", training.EPOCHS["going on"]))
            name = f"{domain}-{spec.replace(',', '-').replace('=', '')}.keras"
            outcome = trained(args.models / name, own, start, epochs,
                              chosen.get("learning_rate"))
            row[spec] = scored(outcome, args.suite, domain, args.models)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
