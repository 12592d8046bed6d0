#!/usr/bin/env python3
"""Encoding alone: images per second of an encoder on noise and on a folder's images.

    python bench/encode.py [--model FILE.keras ...] [--images /tmp/corpus] [--count 4096]

Noise (uniform random pixels) stands for photographs, whose channel values
spread over the whole range; a folder of icons is mostly flat colours. Each
model is timed twice, alternating, in batches of 64 as the service encodes,
and its faster pass counts. Prints a table; --json FILE writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BATCH = 64


def rate(encode: Callable[[np.ndarray], object], pixels: np.ndarray) -> float:
    started = time.perf_counter()
    for start in range(0, len(pixels), BATCH):
        encode(pixels[start:start + BATCH])
    return len(pixels) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, nargs="*", default=[])
    parser.add_argument("--images", type=Path, default=Path("/tmp/corpus"))
    parser.add_argument("--count", type=int, default=4096)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from lookalike.core.config import DEFAULT_MODEL
    from lookalike.core.encoder import load as load_encoder
    from lookalike.daemon.training import read_folder

    encoders = [load_encoder(path) for path in args.model or [DEFAULT_MODEL]]
    shape = encoders[0].shape
    noise = np.random.default_rng(0).integers(
        0, 256, (args.count, shape.size, shape.size, shape.channels), np.uint8)
    folder = read_folder(args.images, shape)[1][:args.count]
    best = [{"noise": 0.0, "folder": 0.0} for _ in encoders]
    for encoder in encoders:
        encoder.encode(noise[:BATCH])  # traced once, outside the timings
    for _ in range(2):
        for n, encoder in enumerate(encoders):
            best[n]["noise"] = max(best[n]["noise"], rate(encoder.encode, noise))
            best[n]["folder"] = max(best[n]["folder"], rate(encoder.encode, folder))
    rows = [{"model": str(encoder.path.name), "id": encoder.model_id[:19],
             "noise": round(best[n]["noise"]), "folder": round(best[n]["folder"])}
            for n, encoder in enumerate(encoders)]
    print(f"| model | images/s on noise | images/s on {args.images} |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['model']} ({row['id']}…) | {row['noise']:,} | {row['folder']:,} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
