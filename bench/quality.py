#!/usr/bin/env python3
"""Retrieval quality of training recipes on labels never seen in training.

    python bench/quality.py --split corpus=/tmp/q/corpus-train:/tmp/q/corpus-eval \\
        --split digits=/tmp/q/digits-train:/tmp/q/digits-eval \\
        [--recipes seed,lookalike,... "NAME|option=value,..."] [--color grayscale,rgb] \\
        [--epochs 30] [--models DIR] [--results bench/results/quality.jsonl]

Each split is NAME=TRAIN:EVAL, two labelled folders with no label in common
(`scripts/eval_split.py CORPUS EVAL --train TRAIN` makes them). For each
recipe and colour mode an encoder is trained on TRAIN exactly as
`lookalike train` trains it (`model.train`, same held-out share, early
stopping), saved, loaded back in safe mode, and measured on EVAL exactly as
`lookalike eval` measures it (`evaluate.quality`): exact precision@12 and
mAP, Annoy precision@12 and recall@12 at the default index settings and at
the article's (10 trees, search_k -1). One training is measured at each
finishing step the recipe has (`finishing_steps`): the learned latent alone
("[learned]"), whitened ("[learned+white]"), and the whole encoder with the
palette and edges; a name ending in "+white" gives the rows NAME without
"+white" and NAME. These levers cost no second training.

Every result is appended to --results as one JSON line; a Markdown table of
this run is printed at the end. Recipes are listed in recipes() below; the
named presets of `lookalike.core.model` are there under their own names.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.core import evaluate, images
from lookalike.core import model as models
from lookalike.daemon.training import read_folder

K = 12
DEFAULT_INDEX = (32, 4000)  # core/schema.yaml: index.trees, index.search_k
ARTICLE_INDEX = (10, -1)


def recipes() -> dict[str, models.Recipe]:
    """Every recipe the benchmark knows: the presets, then the steps between them."""
    conv = models.conv_autoencoder
    Recipe = models.Recipe
    plain = functools.partial(conv, batch_norm=False, standardize=False)
    bn = functools.partial(conv, standardize=False)
    known: dict[str, models.Recipe] = dict(models.PRESETS)
    known.update({
        # One lever at a time, from the seed recipe towards the default.
        "deep": Recipe(plain),
        "deep+bn": Recipe(bn),
        "deep+bn+std": Recipe(conv),
        "deep+bn+std+aug": Recipe(conv, augment=True),
        "deep+bn+std+aug+restore": Recipe(conv, augment=True, restore=True),
        "deep+bn+std+aug+noise": Recipe(conv, augment=True, noise=0.05),
        "deep+bn+std+aug+restore+noise": Recipe(conv, augment=True, restore=True, noise=0.05),
        "deep+bn+std+aug+restore+noise+grad": Recipe(conv, augment=True, restore=True,
                                                     noise=0.05, structure=1.0),
        "deep+bn+std+aug+restore+noise+unit": Recipe(
            functools.partial(conv, unit_latent=True), augment=True, restore=True, noise=0.05),
        "deeper+bn+std+aug+restore+noise": Recipe(
            functools.partial(conv, extra=True), augment=True, restore=True, noise=0.05),
        "seed+aug+restore+noise": Recipe(models.seed_preset, augment=True, restore=True,
                                         noise=0.05),
        "deeper+bn+std": Recipe(functools.partial(conv, extra=True)),
        "pool+bn+std": Recipe(functools.partial(conv, pooled=True)),
        "pool+bn+std+unit": Recipe(functools.partial(conv, pooled=True, unit_latent=True)),
    })
    for name in list(known):
        if not known[name].whiten and not name.endswith("+white"):
            known.setdefault(f"{name}+white", replace(known[name], whiten=True))
    return known


def recipe_of(spec: str, known: dict[str, models.Recipe]) -> models.Recipe:
    """A named recipe, or NAME|option=value,... (e.g. "deep+bn+std|augment=2,contrast=0.1")."""
    name, _, options = spec.partition("|")
    recipe = known[name]
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        kind = type(getattr(recipe, key))
        recipe = replace(recipe, **{key: kind(float(value))})
    return recipe


def finishing_steps(name: str, recipe: models.Recipe) -> list[tuple[str, models.Recipe]]:
    """(label, recipe) to measure from one training: the learned latent alone, whitened, and
    beside the palette and edges, as far as `recipe` goes; the first is the one to train."""
    bare = replace(recipe, whiten=False, palette=0, edges=0)
    if bare == recipe:
        return [(name, recipe)]
    base, _, options = name.partition("|")
    if base.endswith("+white") and not (recipe.palette or recipe.edges):  # "X+white": X too
        plain = base.removesuffix("+white") + (f"|{options}" if options else "")
        return [(plain, bare), (name, recipe)]
    steps = [(f"{name} [learned]", bare)]
    if recipe.whiten:
        steps.append((f"{name} [learned+white]", replace(bare, whiten=True)))
    return steps + [(name, recipe)]


def measure(vectors: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    exact, annoy = evaluate.quality(vectors, labels, K, "angular", *DEFAULT_INDEX)
    _, article = evaluate.quality(vectors, labels, K, "angular", *ARTICLE_INDEX)
    assert annoy is not None and article is not None
    return {"precision": round(exact.precision, 4), "map": round(exact.mean_ap or 0.0, 4),
            "annoy_precision": round(annoy.precision, 4), "recall": round(annoy.recall or 0.0, 4),
            "article_annoy_precision": round(article.precision, 4),
            "article_recall": round(article.recall or 0.0, 4)}


def labelled(folder: Path, shape: images.Shape) -> tuple[np.ndarray, np.ndarray]:
    paths, pixels, _ = read_folder(folder, shape)
    return pixels, np.array([path.split("/")[0] for path in paths])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", action="append", required=True, metavar="NAME=TRAIN:EVAL")
    parser.add_argument("--recipes", nargs="+", default=["pixels,seed,lookalike"],
                        help="names (see recipes()), comma-separated or one per argument, or "
                             "NAME|option=value,... for one changed recipe; 'pixels' is the "
                             "raw floor")
    parser.add_argument("--color", default="grayscale", help="grayscale, rgb or both (a,b)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--latent", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=None,
                        help="keep the trained encoders here (default: a temporary folder)")
    parser.add_argument("--results", type=Path, default=Path("bench/results/quality.jsonl"))
    args = parser.parse_args()
    known = recipes()
    wanted = [name for spec in args.recipes
              for name in ([spec] if "|" in spec else spec.split(","))]
    unknown = [name for name in wanted if name != "pixels" and name.partition("|")[0] not in known]
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: pixels, {', '.join(known)}")
    keep = args.models or Path(tempfile.mkdtemp(prefix="quality-"))
    keep.mkdir(parents=True, exist_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        row = {"measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **row}
        rows.append(row)
        with open(args.results, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    for split in args.split:
        corpus, _, folders = split.partition("=")
        train_dir, _, eval_dir = (Path(part) for part in folders.partition(":"))
        for color in args.color.split(","):
            shape = images.Shape(56, color)
            train_x, _ = labelled(train_dir, shape)
            eval_x, eval_labels = labelled(eval_dir, shape)
            for name in wanted:
                if name == "pixels":
                    if color == "grayscale":
                        flat = eval_x.reshape(len(eval_x), -1).astype(np.float32)
                        record({"corpus": corpus, "recipe": "raw pixels", "color": color,
                                **measure(flat, eval_labels)})
                    continue
                recipe = recipe_of(name, known)
                steps = finishing_steps(name, recipe)
                trained = models.train(train_x, shape, preset=steps[0][1],
                                       latent_dim=args.latent, epochs=args.epochs,
                                       patience=args.patience, batch_size=args.batch_size,
                                       seed=args.seed, verbose=2)
                card = trained.card
                common = {"corpus": corpus, "color": color, "epochs": args.epochs,
                          "batch_size": args.batch_size,
                          "epochs_run": card["epochs_run"], "best_epoch": card["best_epoch"],
                          "train_images": len(train_x),
                          "held_out_loss": card["held_out_loss"]}
                for label, step in steps:
                    started = time.monotonic()
                    encoder = models.finish(trained.encoder, train_x, step, args.seed)
                    seconds = card["seconds"] + time.monotonic() - started
                    path = keep / f"{corpus}-{color}-{label.replace('|', '-')}.keras"
                    path = path.with_name(path.name.replace(" ", "").replace("[", "").replace(
                        "]", ""))
                    models.save(models.Training(encoder, card), path)
                    loaded = models.load(path)  # as the service loads it: safe mode
                    started = time.monotonic()
                    vectors = loaded.encode(eval_x)
                    record({**common, "recipe": label, "seconds": round(seconds, 1),
                            "encode_seconds": round(time.monotonic() - started, 2),
                            "latent_dim": loaded.latent_dim, "model": str(path),
                            **measure(vectors, eval_labels)})

    print()
    print("| corpus | recipe | colour | epochs run | P@12 | mAP | Annoy P@12 | recall@12 "
          "| article-index recall@12 | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['corpus']} | {row['recipe']} | {row['color']} "
              f"| {row.get('epochs_run', '-')} | {row['precision']:.3f} | {row['map']:.3f} "
              f"| {row['annoy_precision']:.3f} | {row['recall']:.3f} "
              f"| {row['article_recall']:.3f} | {row.get('seconds', '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
