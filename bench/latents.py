#!/usr/bin/env python3
"""Real latent vectors for index benchmarks: the shipped encoder's, many of them.

    python bench/latents.py OUT.npy --count 100000 [--images FOLDER ...] [--model FILE]

Encodes every image of the folders, then shifted, rescaled-brightness and
colour-mixed copies of them (drawn at random, seed 0) until `count` vectors:
a library of that size as the encoder sees it, near-duplicates included,
which synthetic Gaussian clusters are not (the default's 456 numbers have
a flat spectrum: its learned and edge parts are whitened).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHIFT, BRIGHTNESS, OFFSET, MIX = 6, (0.7, 1.2), 20, 0.08
HELDOUT = [Path("/tmp/suite") / domain / "heldout"
           for domain in ("digits", "icons", "glyphs", "photos", "textures")]


def variants(pixels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` altered copies of images drawn from `pixels` (n, h, w, c) uint8."""
    # float32 pixels; the random factors, in float64, widen them (as they always have)
    picked: np.ndarray = pixels[rng.integers(0, len(pixels), count)].astype(np.float32)
    dy, dx = rng.integers(-SHIFT, SHIFT + 1, 2)
    picked = np.roll(picked, (dy, dx), axis=(1, 2))
    channels = picked.shape[-1]
    picked = picked * rng.uniform(*BRIGHTNESS, (count, 1, 1, 1)) \
        + rng.uniform(-OFFSET, OFFSET, (count, 1, 1, channels))
    if channels == 3:
        picked = picked @ (np.eye(3) + rng.normal(0, MIX, (3, 3))).T
    return np.clip(picked, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--images", type=Path, nargs="+", default=HELDOUT,
                        help="folders of images (default: the evaluation suite's held-out "
                             "parts in /tmp/suite)")
    parser.add_argument("--model", type=Path, help="an encoder file (default: the shipped one)")
    args = parser.parse_args()
    from lookalike.core.config import DEFAULT_MODEL
    from lookalike.core.encoder import load as load_encoder
    from lookalike.daemon.training import read_folder

    missing = [str(folder) for folder in args.images if not folder.is_dir()]
    if missing:  # (a missing folder would make other latents, and other figures, silently)
        raise SystemExit(f"no such folder: {', '.join(missing)}; the suite comes from "
                         "`python scripts/build_suite.py /tmp/suite`")
    encoder = load_encoder(args.model or DEFAULT_MODEL)
    pixels = np.concatenate([read_folder(folder, encoder.shape)[1] for folder in args.images])
    rng = np.random.default_rng(0)
    latents = [encoder.encode(pixels)]
    made = len(pixels)
    while made < args.count:
        batch = min(len(pixels), args.count - made)
        latents.append(encoder.encode(variants(pixels, batch, rng)))
        made += batch
        print(f"{made:,} / {args.count:,} encoded", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, np.concatenate(latents)[:args.count].astype(np.float32))
    print(f"{args.out}: {args.count:,} latents of {latents[0].shape[1]} numbers")


if __name__ == "__main__":
    main()
