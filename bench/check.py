#!/usr/bin/env python3
"""The check of every results file: measuring what changed, against searching all again.

    python bench/check.py [--seeded 1000000] [--entering 1 1000] [--json FILE]

Seeds a library of `--seeded` images as bench/latency.py does (hard links,
vectors, every results file marked, the index built as the service builds
it), then times in this process, on that library and index:
- a full check, searching every image again: 1,024 images in chunks of 64
  (the service's FULL_CHECK_CHUNK), each a two-stage search for its 12 nearest;
  the time per image, times the library's size, is what a full check costs;
- the check by measuring (`daemon.check.MeasuringCheck`) with the first M
  rows taken as changed since the last check, for each M of `--entering`:
  every answered image is read and measured against them, block by block,
  as the service's idle turns do. Its whole time, and its slowest step
  (what an arrival may wait behind).
Prints one JSON line per figure; --json writes them all.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lookalike.daemon  # noqa: F401  # isort: skip - first: the command sets up OpenBLAS
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
SEARCH_SAMPLE = 1024
CHUNK = 64


def full_check(library: object, built: object, config: object) -> dict[str, object]:
    from lookalike.core import ranking
    from lookalike.core.search import Searcher

    settings = config.index  # type: ignore[attr-defined]
    with ThreadPoolExecutor(2) as pool:
        searcher = Searcher.open(library, built, settings.metric,  # type: ignore[arg-type]
                                 settings.search_k, settings.candidates, pool,
                                 settings.rescore)
        ids, _, _, _ = library.answered_rows(0, SEARCH_SAMPLE)  # type: ignore[attr-defined]
        rows = ids.tolist()
        started = time.perf_counter()
        for start in range(0, len(rows), CHUNK):
            chunk = library.vectors_of(rows[start:start + CHUNK])  # type: ignore[attr-defined]
            searcher.neighbors_of(chunk, ranking.candidates(  # type: ignore[attr-defined]
                config.neighbors))  # type: ignore[attr-defined]
        per_image = (time.perf_counter() - started) / len(rows)
    images = library.counts()["vectors"]  # type: ignore[attr-defined]
    return {"kind": "search every image again", "entering": None,
            "ms_per_image": round(per_image * 1000, 2), "seconds": round(per_image * images, 1),
            "slowest_step_ms": None}


def measured_check(library: object, entering: int) -> dict[str, object]:
    from lookalike.core.exact import ExactScan
    from lookalike.daemon.check import MeasuringCheck

    ids, vectors, _, _ = library.answered_rows(0, entering)  # type: ignore[attr-defined]
    check = MeasuringCheck(ExactScan(ids, vectors, "angular"))
    started, slowest, touched = time.perf_counter(), 0.0, 0
    while True:
        step = time.perf_counter()
        found = check.step(library)  # type: ignore[arg-type]
        slowest = max(slowest, time.perf_counter() - step)
        if found is None:
            break
        touched += len(found)
    return {"kind": "measure the changed images", "entering": entering, "ms_per_image": None,
            "seconds": round(time.perf_counter() - started, 1),
            "slowest_step_ms": round(slowest * 1000), "touched": touched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeded", type=int, default=1_000_000)
    parser.add_argument("--entering", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import latency

    from lookalike.core import config as configuration
    from lookalike.core import index
    from lookalike.core.config import DEFAULT_MODEL
    from lookalike.core.store import Library

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as home:
        root = Path(home)
        (root / "inbox").mkdir()
        (root / "config.yaml").write_text(yaml.safe_dump(
            {"inbox": "./inbox", "state_dir": "./state", "model": ""}))
        latency.seed(root, args.seeded, latency.digit_images(1797), DEFAULT_MODEL)
        config = configuration.load(root / "config.yaml")
        with Library(config.state_dir / "library.sqlite") as library:
            rows.append(full_check(library, index.load(config.state_dir), config))
            rows += [measured_check(library, m) for m in args.entering]
    for row in rows:
        row["images"] = args.seeded
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| images | check | changed images | seconds | ms per image | slowest step ms |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['images']:,} | {r['kind']} | {r['entering'] or 'all'} | {r['seconds']} | "
              f"{r['ms_per_image'] or '-'} | {r['slowest_step_ms'] or '-'} |")


if __name__ == "__main__":
    main()
