#!/usr/bin/env python3
"""Annoy index at 10^4..10^6 vectors: build seconds, peak memory, query time, recall@12.

    python bench/index_scale.py [--sizes 10000,100000,1000000] [--trees 32] [--search-k 4000]
        [--latents FILE.npy --dims 128 --candidates 640 --rescore 192]

Vectors are 128-d, drawn around 1,000 random centres (clustered), or with
`--latents` the first N real latents of a file from `bench/latents.py`. Each
size is built in a fresh process through the service's own `index.build` (a
real library in SQLite, Annoy built on disk; `--dims` below the vectors'
length builds the two-stage index), so the peak resident memory is that of
a build. Query time is per query through the service's `Searcher` (index
only, nothing pending), full vectors read from disk as the service reads
them; recall@12 is against exact cosine search over 200 queries. Prints a
table and appends it to bench/results/index_scale.md.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

DIM, K, QUERIES = 128, 12, 200


def vectors(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    return (centres[rng.integers(0, 1000, count)]
            + 0.6 * rng.normal(size=(count, DIM)).astype(np.float32))


def measure(count: int, trees: int, search_k: int, latents: Path | None = None,
            dims: int = 0, candidates: int = 640, rescore: int = 192) -> dict[str, float]:
    """In this process: fill a library, build, query. Returns the figures."""
    from lookalike.core import evaluate, index
    from lookalike.core.search import Searcher
    from lookalike.core.store import Entry, Library

    data = vectors(count) if latents is None else np.load(latents, mmap_mode="r")[:count]
    if len(data) < count:
        raise SystemExit(f"{latents} holds {len(data):,} latents, fewer than {count:,}")
    with tempfile.TemporaryDirectory() as state:
        library = Library(Path(state) / "library.sqlite")
        for start in range(0, count, 50_000):
            library.apply(Entry(f"{i}.jpg", 1, 1, None, "m", data[i])
                          for i in range(start, min(count, start + 50_000)))
        started = time.perf_counter()
        info = index.build(library, Path(state), metric="angular", trees=trees, model_id="m",
                           dims=dims)
        build_s = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ann_mb = (index.folder(Path(state)) / f"{info.generation}.ann").stat().st_size / 2**20
        searcher = Searcher.open(library, index.load(Path(state)), "angular", search_k,
                                 candidates, rescore=rescore)
        queries = np.random.default_rng(1).choice(count, QUERIES, replace=False)
        started = time.perf_counter()
        found = [[n.row_id - 1 for n in searcher.neighbors(data[q], K, exclude=int(q) + 1)]
                 for q in queries]
        query_us = (time.perf_counter() - started) / QUERIES * 1e6
        exact = []
        for q in queries:
            d = evaluate.distances(data[q:q + 1], data, "angular")[0]
            d[q] = np.inf
            exact.append(np.argsort(d)[:K])
        recall = float(np.mean([len(set(f) & set(e)) / K
                                for f, e in zip(found, exact, strict=True)]))
        library.close()
    return {"vectors": count, "dim": int(data.shape[1]), "annoy_dim": info.reduced or info.dim,
            "build_s": round(build_s, 1), "peak_mb": round(peak_mb), "ann_mb": round(ann_mb),
            "query_us": round(query_us), "recall": round(recall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--trees", type=int, default=32)
    parser.add_argument("--search-k", type=int, default=4000)
    parser.add_argument("--latents", type=Path, help="real latents (bench/latents.py)")
    parser.add_argument("--dims", type=int, default=0, help="index.dims (0: Annoy on the whole)")
    parser.add_argument("--candidates", type=int, default=640)
    parser.add_argument("--rescore", type=int, default=192,
                        help="candidates read in full, picked by their signs")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.trees, args.search_k, args.latents, args.dims,
                                 args.candidates, args.rescore)))
        return
    rows = []
    passed = sys.argv[1:]
    for size in map(int, args.sizes.split(",")):
        child = subprocess.run([sys.executable, __file__, *passed, "--one", str(size)],
                               capture_output=True, text=True, check=True)
        rows.append(json.loads(child.stdout.splitlines()[-1]))
        print(rows[-1], flush=True)
    table = [f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
             f"`python bench/index_scale.py {' '.join(passed)}`", "",
             "| vectors | dims (in Annoy) | build s | peak MB | Annoy file MB | query µs | "
             "recall@12 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    table += [f"| {r['vectors']:,} | {r['dim']} ({r['annoy_dim']}) | {r['build_s']} | "
              f"{r['peak_mb']} | {r['ann_mb']} | {r['query_us']} | {r['recall']} |"
              for r in rows]
    text = "\n".join(table) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "index_scale.md"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as log:
        log.write(text + "\n")


if __name__ == "__main__":
    main()
