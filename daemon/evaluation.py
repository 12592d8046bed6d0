"""`lookalike eval`: retrieval quality of an encoder on a labelled folder.

DIR holds one sub-folder per label. Every image is encoded and searched
among all the others, exactly and through an Annoy index built with the
configured settings; `--baseline pixels` measures raw grayscale pixels
instead, the floor any encoder must beat.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.core import config as configuration
from lookalike.core import evaluate, images
from lookalike.core.config import DEFAULT_MODEL
from lookalike.core.errors import LookalikeError
from lookalike.daemon.training import read_folder

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        raise LookalikeError(f"{args.data}: no such folder")
    settings = index_settings(args.config)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    if args.baseline == "pixels":
        shape, name = images.Shape(56, "grayscale"), "raw grayscale pixels 56x56"
    else:
        from lookalike.core import model  # TensorFlow loads here
        encoder = model.load(args.model or settings["model"])
        shape, name = encoder.shape, f"{Path(encoder.path).name} ({encoder.model_id[:19]}…)"
    seconds["load"] = time.monotonic() - started

    started = time.monotonic()
    paths, pixels, _ = read_folder(args.data, shape)
    labelled = [(i, path.split("/")[0]) for i, path in enumerate(paths) if "/" in path]
    if len({label for _, label in labelled}) < 2:
        raise LookalikeError(f"{args.data}: needs two or more sub-folders of images, "
                             "one per label")
    keep = np.array([i for i, _ in labelled])
    labels = np.array([label for _, label in labelled])
    seconds["read"] = time.monotonic() - started

    started = time.monotonic()
    if args.baseline == "pixels":
        vectors = pixels[keep].reshape(len(keep), -1).astype(np.float32)
    else:
        vectors = encoder.encode(pixels[keep])
    seconds["encode"] = time.monotonic() - started

    started = time.monotonic()
    exact, annoy = evaluate.quality(vectors, labels, args.k, settings["metric"],
                                    settings["trees"], settings["search_k"])
    seconds["search"] = time.monotonic() - started
    assert annoy is not None
    report = {"data": str(args.data), "images": len(labels), "labels": len(set(labels)),
              "encoder": name, "k": args.k, "metric": settings["metric"],
              "trees": settings["trees"], "search_k": settings["search_k"],
              "exact": {"precision": exact.precision, "map": exact.mean_ap},
              "annoy": {"precision": annoy.precision, "recall": annoy.recall},
              "seconds": {stage: round(s, 2) for stage, s in seconds.items()}}
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


def index_settings(config: Path) -> dict[str, Any]:
    """The configured index settings, or the defaults when there is no config file."""
    if config.is_file():
        loaded = configuration.load(config)
        return {"metric": loaded.index.metric, "trees": loaded.index.trees,
                "search_k": loaded.index.search_k, "model": loaded.model}
    defaults = configuration.schema()["properties"]["index"]["properties"]
    return {"metric": defaults["metric"]["default"], "trees": defaults["trees"]["default"],
            "search_k": defaults["search_k"]["default"], "model": DEFAULT_MODEL}


def table(report: dict[str, Any]) -> str:
    k = report["k"]
    rows = [
        f"{report['images']} images, {report['labels']} labels in {report['data']}",
        f"encoder      {report['encoder']}",
        f"exact        precision@{k} {report['exact']['precision']:.3f}   "
        f"mAP {report['exact']['map']:.3f}",
        f"annoy        precision@{k} {report['annoy']['precision']:.3f}   "
        f"recall@{k} {report['annoy']['recall']:.3f}   "
        f"({report['trees']} trees, search_k {report['search_k']}, {report['metric']})",
        "seconds      " + ", ".join(f"{stage} {s}" for stage, s in report["seconds"].items()),
    ]
    return "\n".join(rows)
