#!/usr/bin/env python3
"""Near-duplicates: the `near_duplicate` flag and the groups, beside perceptual hashes.

    python scripts/build_suite.py /tmp/suite --cache /tmp/suite-cache
    python bench/duplicates.py /tmp/suite --part heldout

Photos: each sub-folder holds an original and its 12 copies
(scripts/build_suite.py), so two images are a copy pair when they share a
sub-folder; the kind of copy is the file's name, and the flag's recall is
also given for the pairs that each kind is in. Every image is encoded by
the shipped encoder and its 12 look-alikes among the part's photos found
exactly and ranked as a results file ranks them (`core.ranking`); the flag is measured at each
strictness, as the service decides it (`core.copies`). Recall counts
every ordered copy pair (13 x 12 a picture): a pair is found when one
lists the other and marks it. Groups are the connected sets of marked
pairs (as `lookalike duplicates` makes them), scored on unordered pairs.
Beside them, imagehash's pHash (64 bits, Hamming <= 10: imagededup's
default) and dHash (256 bits, <= 15, the kind czkawka uses), over every
pair.

Glyphs and digits are distinct renderings (fonts, hands), never copies:
the share of their neighbour pairs that each marks.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from lookalike.core import copies, evaluate, images
from lookalike.core.config import DEFAULT_MODEL

K = 12
HASHES = {"pHash 64 bit, Hamming <= 10 (imagededup)": (imagehash.phash, 8, 10),
          "dHash 256 bit, Hamming <= 15 (czkawka)": (imagehash.dhash, 16, 15)}


def load(folder: Path) -> tuple[list[Path], np.ndarray, list[copies.Picture], np.ndarray]:
    """Files, latent vectors, pictures (`copies.Picture`) and labels (sub-folder names) of
    a folder."""
    from lookalike.core.encoder import load as load_encoder

    encoder = load_encoder(DEFAULT_MODEL)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    decoded = [images.load(p, encoder.shape) for p in files]
    vectors = encoder.encode(np.stack([one.pixels for one in decoded]))
    return (files, vectors, [copies.Picture(copies.thumbnail(one.pixels),
                                            copies.shape_of(*one.size)) for one in decoded],
            np.array([p.parent.name for p in files]))


def nearest(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's K look-alikes, as a results file lists them, and their angular
    distances (sqrt(2 - 2 cos))."""
    order, _, _ = evaluate.exact_search(vectors, np.zeros(len(vectors)), K, "angular")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = np.einsum("nd,nkd->nk", unit, unit[order])
    return order, np.sqrt(np.clip(2 - 2 * cosines, 0, None))


def flags(order: np.ndarray, distances: np.ndarray, pictures: list[copies.Picture],
          strictness: str) -> np.ndarray:
    return np.array(copies.Judge(strictness).marks(
        [(pictures[i], [(float(d), pictures[j]) for j, d in zip(row, row_d, strict=True)])
         for i, (row, row_d) in enumerate(zip(order, distances, strict=True))]))


def scores(found: set[tuple[int, int]], true: set[tuple[int, int]]) -> dict[str, float]:
    hit = len(found & true)
    precision = hit / len(found) if found else 1.0
    recall = hit / len(true)
    f1 = 2 * precision * recall / (precision + recall) if hit else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def photos(folder: Path) -> dict[str, dict[str, float]]:
    files, vectors, pictures, labels = load(folder)
    order, distances = nearest(vectors)
    n = len(files)
    ordered = {(i, j) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]}
    unordered = {(i, j) for i, j in ordered if i < j}
    kinds = np.array([f.stem for f in files])  # original, jpeg30, crop60, ...
    table = {}
    for strictness in copies.LEVELS:
        marked = flags(order, distances, pictures, strictness)
        pairs = {(i, int(j)) for i in range(n) for j, m in zip(order[i], marked[i], strict=True)
                 if m}
        table[f"flag, {strictness}"] = scores(pairs, ordered)
        # Of each kind's copy pairs (it lists, or is listed by, one of its 12 copies).
        table[f"flag, {strictness}, recall by kind"] = {
            kind: round(sum(1 for i, j in pairs & ordered if kinds[i] == kind or kinds[j] == kind)
                        / sum(1 for i, j in ordered if kinds[i] == kind or kinds[j] == kind), 3)
            for kind in sorted(set(kinds))}
        grouped = {(a, b) for group in copies.groups(pairs)
                   for a, b in itertools.combinations(group, 2)}
        table[f"groups, {strictness}"] = scores(grouped, unordered)
    for name, (kind, size, limit) in HASHES.items():
        hashes = [kind(Image.open(f), hash_size=size) for f in files]
        bits = np.array([h.hash.ravel() for h in hashes])
        within = {(i, j) for i in range(n) for j in range(i + 1, n)
                  if np.count_nonzero(bits[i] != bits[j]) <= limit}
        table[name] = scores(within, unordered)
    return table


def renderings(folder: Path) -> dict[str, float]:
    """The share of neighbour pairs marked, at each strictness and by each hash."""
    files, vectors, pictures, _ = load(folder)
    order, distances = nearest(vectors)
    shares = {f"flag, {s}": round(float(flags(order, distances, pictures, s).mean()), 4)
              for s in copies.LEVELS}
    for name, (kind, size, limit) in HASHES.items():
        bits = np.array([kind(Image.open(f), hash_size=size).hash.ravel() for f in files])
        differ = (bits[order] != bits[:, None, :]).sum(axis=2)
        shares[name] = round(float((differ <= limit).mean()), 4)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--part", choices=("dev", "heldout"), default="heldout")
    args = parser.parse_args()
    report = {"photos": photos(args.suite / "photos" / args.part)}
    for domain in ("glyphs", "digits"):
        report[domain] = renderings(args.suite / domain / args.part)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
