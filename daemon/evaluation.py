"""`lookalike eval`: retrieval quality of an encoder on a labelled folder.

DIR holds one sub-folder per label. Every image is encoded and searched
among all the others, exactly and through an Annoy index built with the
configured settings. With `--copies` each sub-folder holds copies of one
picture, and copy detection is measured instead: the share of images whose
first neighbour is a copy of the same picture (by kind of copy, the file
name without its extension, where names repeat across sub-folders), and the
share of each image's other copies among its k look-alikes. Look-alikes are
ranked as results files rank them (`core.ranking`). `--baseline pixels`
measures raw grayscale pixels instead, nearest first: the floor any encoder
must beat. `--sheet FILE.png` also draws a few random queries (the same each
run) with their look-alikes, each framed by whether it shares the query's
label.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.core import config as configuration
from lookalike.core import evaluate, images, sheet
from lookalike.core.config import DEFAULT_MODEL
from lookalike.core.errors import LookalikeError
from lookalike.daemon import sheets, tensorflow_log
from lookalike.daemon.training import read_folder

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        raise LookalikeError(f"{args.data}: no such folder")
    sheet_path = sheets.target(args.data, args.sheet) if args.sheet is not None else None
    settings = index_settings(args.config)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    if args.baseline == "pixels":
        shape, name = images.Shape(56, "grayscale"), "raw grayscale pixels 56x56"
    else:
        tensorflow_log.quiet()
        from lookalike.core.encoder import load as load_encoder  # TensorFlow loads here
        encoder = load_encoder(args.model or settings["model"])
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
    ranked = args.baseline != "pixels"
    if not ranked:
        vectors = pixels[keep].reshape(len(keep), -1).astype(np.float32)
    else:
        vectors = encoder.encode(pixels[keep])
    seconds["encode"] = time.monotonic() - started

    started = time.monotonic()
    report: dict[str, Any] = {"data": str(args.data), "images": len(labels),
                              "labels": len(set(labels)), "encoder": name, "k": args.k,
                              "metric": settings["metric"]}
    if args.copies:
        kinds = np.array([Path(paths[i]).stem for i in keep])
        found = evaluate.copies(vectors, labels, kinds, args.k, settings["metric"], ranked)
        repeated = {kind: share for kind, share in found.first_by_kind.items()
                    if (kinds == kind).sum() > 1}
        report["copies"] = {"first": found.first, "recall": found.recall,
                            "first_by_kind": repeated}
    else:
        exact, annoy = evaluate.quality(vectors, labels, args.k, settings["metric"],
                                        settings["trees"], settings["search_k"], ranked)
        assert annoy is not None
        report.update({"trees": settings["trees"], "search_k": settings["search_k"],
                       "exact": {"precision": exact.precision, "map": exact.mean_ap},
                       "annoy": {"precision": annoy.precision, "recall": annoy.recall}})
    seconds["search"] = time.monotonic() - started
    report["seconds"] = {stage: round(s, 2) for stage, s in seconds.items()}
    print(json.dumps(report, indent=2) if args.json else table(report))
    if sheet_path is not None:
        originals = [args.data / paths[i] for i in keep]
        queries = sample(labels, args.sheet_rows)
        score = (f"first neighbour a copy {report['copies']['first']:.3f}" if args.copies
                 else f"precision@{args.k} {report['exact']['precision']:.3f}")
        title = [f"{args.data}: {name}, exact search, {score} over {len(labels):,} images",
                 f"{len(queries)} random queries, each with its {args.k} look-alikes; frame: "
                 "green = the query's label, red = another label"]
        sheets.save(draw(originals, labels, vectors, queries, args.k, settings["metric"],
                         ranked, title), sheet_path)
        log.info("sheet of %d queries written to %s", len(queries), sheet_path)
    return 0


def sample(labels: np.ndarray, count: int, seed: int = 0) -> list[int]:
    """`count` random queries (the same each run), from as many labels as there are."""
    order = np.random.default_rng(seed).permutation(len(labels))
    chosen: list[int] = []
    for i in order:  # one query per label first
        if len(chosen) < count and labels[i] not in labels[chosen]:
            chosen.append(int(i))
    chosen += [int(i) for i in order if i not in chosen][:count - len(chosen)]
    return chosen


def draw(originals: list[Path], labels: np.ndarray, vectors: np.ndarray, queries: list[int],
         k: int, metric: str, ranked: bool, title: list[str]) -> Image.Image:
    """A sheet row per query: its k look-alikes, framed green (same label) or red."""
    vectors = vectors.astype(np.float32)  # as evaluate.quality searches them
    max_pixels = images.Shape.max_pixels
    rows = []
    for q in queries:
        # The ranking of evaluate.exact_search, for one query.
        far = evaluate.distances(vectors[q:q + 1], vectors, metric)[0]
        far[q] = np.inf  # never the query itself
        nearest = np.argsort(far, kind="stable")[:min(evaluate.width(k, ranked), len(far) - 1)]
        if ranked:
            nearest = evaluate.rank(vectors, np.array([q]), nearest[None], metric)[0]
        nearest = nearest[:k]
        same = labels[nearest] == labels[q]
        query = sheet.Tile(sheets.thumbnail_or_none(originals[q], max_pixels),
                           (str(labels[q]), f"{same.sum()} of {len(nearest)} alike"), sheet.QUERY)
        tiles = [sheet.Tile(sheets.thumbnail_or_none(originals[n], max_pixels),
                            (f"{rank}.  {sheets.distance(float(far[n]))}", str(labels[n])),
                            sheet.SAME if alike else sheet.OTHER)
                 for rank, (n, alike) in enumerate(zip(nearest, same, strict=True), 1)]
        rows.append(sheet.Row(query, tiles))
    return sheet.render(rows, title)


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
    rows = [f"{report['images']} images, {report['labels']} labels in {report['data']}",
            f"encoder      {report['encoder']}"]
    if "copies" in report:
        copies = report["copies"]
        rows.append(f"copies       first neighbour a copy {copies['first']:.3f}   "
                    f"recall@{k} {copies['recall']:.3f}   (exact, {report['metric']})")
        rows += [f"  {kind:<12}first neighbour a copy {share:.3f}"
                 for kind, share in copies["first_by_kind"].items()]
    else:
        rows += [f"exact        precision@{k} {report['exact']['precision']:.3f}   "
                 f"mAP {report['exact']['map']:.3f}",
                 f"annoy        precision@{k} {report['annoy']['precision']:.3f}   "
                 f"recall@{k} {report['annoy']['recall']:.3f}   "
                 f"({report['trees']} trees, search_k {report['search_k']}, "
                 f"{report['metric']})"]
    rows.append("seconds      " + ", ".join(f"{stage} {s}"
                                           for stage, s in report["seconds"].items()))
    return "\n".join(rows)
