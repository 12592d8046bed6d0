#!/usr/bin/env python3
"""What searching a new image costs the service, by library size: the step in a burst's cost.

    python bench/search_cost.py LATENTS.npy [--sizes 1000,10000,100000,1000000]

A burst searches its new images a batch at a time (`ingest.batch_size`),
each for its nearest `search.neighbors` x REVERSE_CANDIDATES (its own
results and the results it may enter), with the index the service builds
at that size (the shipped config.yaml): below `index.exact_below` vectors
the matrix, searched exactly; above, the two-stage index, whose Annoy
searches run in a pool of `ingest.decode_threads` threads as in the service.
Vectors are the real latents of `bench/latents.py`; a size beyond the file
repeats them with a little noise, as the seeded libraries of
`bench/latency.py` do. Each size runs in a fresh process (`--one N`): the
index is built into a temporary folder, then batches of library vectors
plus a little noise (look-alike new images) are searched three times;
the fastest round counts. Prints one JSON line per size: wall and CPU
milliseconds (all threads) per query, and the full vectors read per batch.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BATCHES, ROUNDS = 12, 3


class Vectors:
    """What `index.build` reads of a library: its vectors, all at one generation."""

    generation = 1

    def __init__(self, vectors: np.ndarray) -> None:
        self.matrix = vectors

    def vectors(self, up_to: int | None = None,
                model_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(1, len(self.matrix) + 1, dtype=np.int64), self.matrix


def library_of(latents: np.ndarray, count: int) -> np.ndarray:
    """`count` vectors: the latents, then noisy copies of them."""
    rng = np.random.default_rng(0)
    copies, noise = [], 0.05 * float(latents.std())
    for start in range(0, count, len(latents)):
        part = latents[:min(len(latents), count - start)]
        copies.append(part if not start else
                      part + rng.normal(0, noise, part.shape).astype(np.float32))
    return np.concatenate(copies)


def measure(latents: Path, count: int) -> dict[str, object]:
    from lookalike.core import config as configuration
    from lookalike.core import index
    from lookalike.core.search import Searcher
    from lookalike.daemon.freshness import REVERSE_CANDIDATES

    config = configuration.load(REPO / "config.yaml")
    settings, batch = config.index, config.batch_size
    data = library_of(np.load(latents).astype(np.float32), count)
    width = config.neighbors * REVERSE_CANDIDATES
    rng = np.random.default_rng(1)
    queries = [data[rng.choice(count, batch, replace=False)]
               + rng.normal(0, 0.01, (batch, data.shape[1])).astype(np.float32)
               for _ in range(BATCHES)]
    with tempfile.TemporaryDirectory() as state, \
            ThreadPoolExecutor(config.decode_threads) as pool:
        info = index.build(Vectors(data), Path(state), metric=settings.metric,  # type: ignore[arg-type]
                           trees=settings.trees, model_id="m", exact_below=settings.exact_below,
                           dims=settings.dims)
        built = index.load(Path(state))
        searcher = Searcher(built, np.zeros(0, np.int64), data[:0], set(), settings.metric,
                            settings.search_k, settings.candidates, pool,
                            settings.rescore)
        rows = counting_reads(built)
        best = (np.inf, np.inf)
        for _ in range(ROUNDS):
            wall, cpu = time.perf_counter(), time.process_time()
            for vectors in queries:
                searcher.neighbors_many(vectors, width, [None] * batch)
            best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    searched = BATCHES * batch
    return {"vectors": count, "index": info.kind + (" two-stage" if info.reduced else ""),
            "width": width, "batch": batch, "wall_ms": round(best[0] / searched * 1e3, 3),
            "cpu_ms": round(best[1] / searched * 1e3, 3),
            "rows_read_per_batch": round(rows[0] / (ROUNDS * BATCHES)) if rows else 0}


def counting_reads(built: object) -> list[int]:
    """Count the full vectors the searches read (none for an exact index)."""
    full_vectors = getattr(built, "full_vectors", None)  # (a two-stage index's)
    if full_vectors is None:
        return []
    count = [0]
    read = full_vectors.read

    def counted(items: np.ndarray) -> np.ndarray:
        count[0] += len(items)
        return read(items)
    full_vectors.read = counted
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("latents", type=Path, help="real latents (bench/latents.py)")
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.latents, args.one)), flush=True)
        return
    import lookalike.daemon  # noqa: F401 - its OpenBLAS settings, in the environment of
    # each size's process before NumPy loads there: the search runs as in the service
    for size in (int(s) for s in args.sizes.split(",")):
        subprocess.run([sys.executable, __file__, str(args.latents), "--one", str(size)],
                       check=True)


if __name__ == "__main__":
    main()
