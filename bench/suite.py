#!/usr/bin/env python3
"""Search quality across kinds of images: one table of domains x encoders.

    python scripts/build_suite.py /tmp/suite --cache /tmp/suite-cache
    python bench/suite.py /tmp/suite --part heldout [--domains digits,glyphs]
        [--encoders pixels,phash,seed,shipped,default] [--epochs N]
        [--models DIR] [--results bench/results/suite.jsonl]

Each domain of the suite (`scripts/build_suite.py`) has a development part
and a held-out part that share no label. Every recipe and setting is
chosen on the development part (`--part dev`); the held-out part is
scored to report (`--part heldout`), never to choose.

Encoders (columns):
- `pixels`: raw grayscale pixels at 56x56 (`lookalike eval --baseline pixels`);
- `phash`: imagehash's 64-bit perceptual hash, ranked by Hamming distance;
- `seed`: the article's recipe (`lookalike train --preset seed --color grayscale`)
  trained on the domain's development part;
- `shipped`: the encoder shipped with lookalike;
- `default`: `lookalike train` with every default, on the development part
  (so going on from the shipped encoder's training state);
- `NAME|option=value,...`: a variant of a preset, for choosing on dev (going
  on from the shipped encoder where `lookalike train` would; `start=scratch`
  from random weights);
- `FILE.keras`: an encoder file (an earlier shipped encoder, say);
- `COLUMN@own`: a trained column trained on the part it is scored on instead,
  as a user trains on the collection they search (no labels are read in
  training; the shipped encoder was trained on the development parts, so
  only held-out images are new to it).

Labelled domains report precision@12 (exact search); copy domains report the
share of images whose first neighbour is a copy of the same picture (all
kinds, and the worst kind) and the share of each image's other copies among
its 12 neighbours. lookalike's encoders' neighbours are ranked as results
files rank them (`core.ranking`); the pixels' and pHash's, nearest first, as
a plain search ranks them (`--nearest-first`: every column's, to see what
the ranking adds). Items are searched in a seeded random order, so that
ties (frequent among hashes) are not broken by file order. Trained encoders
are kept in --models and reused when asked again.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.core import evaluate, images
from lookalike.daemon.training import read_folder, shipped_start

K = 12
PIXELS = images.Shape(56, "grayscale")
BASELINES = ("pixels", "phash")  # columns that are not lookalike's encoders


def parsed(spec: str) -> Any:
    """The training Recipe of a column: `seed`, `default` or `PRESET|option=value,...`."""
    from lookalike.core import training

    if spec == "seed":
        return replace(training.PRESETS["seed"], color="grayscale")
    if spec == "default":
        return training.PRESETS[training.DEFAULT_PRESET]
    name, _, options = spec.partition("|")
    recipe = training.PRESETS[name]
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "width":  # the deeper encoder's first width (then twice, four times)
            width = int(value)
            recipe = replace(recipe, build=functools.partial(
                training.conv_autoencoder, filters=(width, 2 * width, 4 * width)))
            continue
        if key in ("pooled", "layout"):  # the deeper encoder's latent reads these or not
            recipe = replace(recipe, build=functools.partial(recipe.build, **{key: value == "1"}))
            continue
        kind = type(getattr(recipe, key))
        recipe = replace(recipe, **{key: value if kind is str else kind(float(value))})
    return recipe


def trained(spec: str, data: Path, models: Path, name: str, epochs: int | None) -> Path:
    """The encoder of column `spec` trained on the images in `data`, kept in `models` under
    `name` and the column (and reused)."""
    from lookalike.core import training

    scratch = "start=scratch" in spec
    recipe = parsed(spec.replace("start=scratch", ""))
    shape = images.Shape(56, recipe.color)
    preset = training.DEFAULT_PRESET if spec == "default" else spec.partition("|")[0]
    # As `lookalike train` does (or `--start scratch`), at its epochs unless told.
    start = None if scratch else shipped_start(preset, shape, 128)
    epochs = epochs or training.EPOCHS["scratch" if start is None else "going on"]
    path = models / f"{name}-{spec.replace('|', '-').replace(',', '-')}-e{epochs}.keras"
    if path.is_file():
        return path
    _, pixels, fingerprint = read_folder(data, shape)
    outcome = training.train(pixels, shape, preset=recipe, epochs=epochs, verbose=2,
                             start=start)
    training.save(outcome, path, {"data": str(data), "data_fingerprint": fingerprint,
                                  "suite_column": spec})
    return path


def vectors_of(column: str, root: Path, part: Path, paths: list[str], models: Path,
               domain: str, epochs: int | None) -> tuple[np.ndarray, str]:
    """(vectors of the images at `paths` under `part`, the metric to rank them by)."""
    if column == "pixels":
        _, pixels, _ = read_folder(part, PIXELS)
        return pixels.reshape(len(pixels), -1).astype(np.float32), "angular"
    if column == "phash":
        import imagehash
        from PIL import Image

        bits = []
        for path in paths:
            with Image.open(part / path) as image:
                bits.append(imagehash.phash(image).hash.ravel())
        # The squared distance of 0/1 vectors is their Hamming distance.
        return np.array(bits, np.float32), "euclidean"
    from lookalike.core import encoder as encoders
    from lookalike.core.config import DEFAULT_MODEL

    if column == "shipped":
        path = DEFAULT_MODEL
    elif column.endswith(".keras"):
        path = Path(column)
    elif column.endswith("@own"):
        path = trained(column.removesuffix("@own"), part, models, f"{domain}-{part.name}-own",
                       epochs)
    else:
        path = trained(column, root / domain / "dev", models, domain, epochs)
    encoder = encoders.load(path)
    _, pixels, _ = read_folder(part, encoder.shape)
    return encoder.encode(pixels), "angular"


def measure(kind: str, vectors: np.ndarray, paths: list[str], metric: str,
            ranked: bool = True) -> dict[str, Any]:
    order = np.random.default_rng(0).permutation(len(paths))  # ties not by file order
    vectors = vectors[order]
    labels = np.array([paths[i].split("/")[0] for i in order])
    if kind == "labels":
        exact, _ = evaluate.quality(vectors, labels, K, metric, ranked=ranked)
        return {"precision": round(exact.precision, 4)}
    stems = np.array([Path(paths[i]).stem for i in order])
    found = evaluate.copies(vectors, labels, stems, K, metric, ranked)
    worst = min(found.first_by_kind, key=lambda kind: found.first_by_kind[kind])
    return {"first": round(found.first, 4), "recall": round(found.recall, 4),
            "worst_kind": worst, "worst_first": round(found.first_by_kind[worst], 4),
            "first_by_kind": {k: round(v, 4) for k, v in found.first_by_kind.items()}}


def cell(row: dict[str, Any]) -> str:
    if "precision" in row:
        return f"{row['precision']:.3f}"
    return (f"{row['first']:.3f} / {row['recall']:.3f} "
            f"({row['worst_kind']} {row['worst_first']:.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, help="the folder scripts/build_suite.py wrote")
    parser.add_argument("--part", choices=("dev", "heldout"), default="dev")
    parser.add_argument("--domains", default=None, help="comma-separated (default: all)")
    parser.add_argument("--encoders", default="pixels,phash,seed,shipped,default",
                        help="comma-separated columns; ';' separates columns with options")
    parser.add_argument("--epochs", type=int, default=None,
                        help="of the trained columns (default: as `lookalike train`)")
    parser.add_argument("--models", type=Path, default=Path("bench/results/suite-models"))
    parser.add_argument("--nearest-first", action="store_true",
                        help="rank every column's neighbours nearest first")
    parser.add_argument("--results", type=Path, default=Path("bench/results/suite.jsonl"))
    args = parser.parse_args()
    if not args.suite.is_dir():
        parser.error(f"{args.suite}: no such folder (make it with scripts/build_suite.py)")
    domains = (args.domains.split(",") if args.domains else
               sorted(p.name for p in args.suite.iterdir() if (p / "kind").is_file()))
    columns = args.encoders.split(";") if ";" in args.encoders else args.encoders.split(",")
    args.models.mkdir(parents=True, exist_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, str]] = {}
    for domain in domains:
        kind = (args.suite / domain / "kind").read_text().strip()
        part = args.suite / domain / args.part
        paths, _, _ = read_folder(part, PIXELS)
        for column in columns:
            started = time.monotonic()
            vectors, metric = vectors_of(column, args.suite, part, paths, args.models, domain,
                                         args.epochs)
            ranked = column not in BASELINES and not args.nearest_first
            row = {"measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "domain": domain, "kind": kind, "part": args.part, "encoder": column,
                   "epochs": args.epochs, "images": len(paths), "ranked": ranked,
                   **measure(kind, vectors, paths, metric, ranked),
                   "seconds": round(time.monotonic() - started, 1)}
            with open(args.results, "a", encoding="utf-8") as out:
                out.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            table.setdefault(domain, {})[column] = cell(row)
    print(f"\n{args.part} parts: precision@{K} for labels; for copies, first neighbour / "
          f"recall@{K} (the worst kind's first neighbour)\n")
    print("| domain | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for domain, cells in table.items():
        print(f"| {domain} | " + " | ".join(cells.get(c, "-") for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
