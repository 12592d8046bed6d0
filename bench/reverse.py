#!/usr/bin/env python3
"""How much of a new image's effect on other results the update on arrival finds.

    python bench/reverse.py [--latents bench/results/latents-100000.npy] [--sizes 2000,20000]

A new image enters the results of every library image that it is nearer to
than their last candidate (`core.ranking`: each results file is ranked from
the 2k nearest). The service finds those among the new image's own nearest
(`REVERSE_CANDIDATES` x k of them); nearness is not symmetric,
so some escape until the results check. For libraries of real latents (the
shipped encoder's, from bench/latents.py), exact cosine search, 300 library
images taken as the new ones: the share of the images they enter that each
width finds. Prints a table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lookalike.core import ranking

K, NEW = 12, 300
WIDE = ranking.candidates(K)  # the candidates whose last a new image must be nearer than
WIDTHS = (24, 48, 96, 192, 384)


def shares(vectors: np.ndarray, seed: int = 0) -> dict[int, float]:
    """Share of the (new image, library image it enters) pairs found at each width."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    last = np.empty(len(unit), np.float32)  # each image's WIDE-th highest cosine
    for start in range(0, len(unit), 2000):
        cosines = unit[start:start + 2000] @ unit.T
        cosines[np.arange(len(cosines)), np.arange(start, start + len(cosines))] = -np.inf
        last[start:start + len(cosines)] = -np.partition(-cosines, WIDE - 1, axis=1)[:, WIDE - 1]
    new = np.random.default_rng(seed).choice(len(unit), NEW, replace=False)
    cosines = unit[new] @ unit.T
    cosines[np.arange(NEW), new] = -np.inf
    enters = [np.flatnonzero(row > last) for row in cosines]
    total = sum(len(e) for e in enters)
    found = {}
    for width in WIDTHS:
        nearest = np.argpartition(-cosines, width, axis=1)[:, :width]
        hits = sum(len(np.intersect1d(e, near)) for e, near in zip(enters, nearest, strict=True))
        found[width] = hits / total
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=Path,
                        default=Path(__file__).parent / "results" / "latents-100000.npy")
    parser.add_argument("--sizes", default="2000,20000")
    args = parser.parse_args()
    data = np.load(args.latents, mmap_mode="r")
    print("| library images | " + " | ".join(f"found at width {w}" for w in WIDTHS) + " |")
    print("| --- " * (len(WIDTHS) + 1) + "|")
    for size in map(int, args.sizes.split(",")):
        rows = np.random.default_rng(size).choice(len(data), size, replace=False)
        found = shares(np.asarray(data[np.sort(rows)], np.float32))
        print(f"| {size:,} | " + " | ".join(f"{found[w]:.3f}" for w in WIDTHS) + " |")


if __name__ == "__main__":
    main()
