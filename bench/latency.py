#!/usr/bin/env python3
"""Latency of the running service: from a file's close to its results file on disk.

    python bench/latency.py [--library 1000] [--drops 100] [--model FILE]

Starts the real `lookalike run` on a fresh inbox holding `--library` images
(digits, drawn at 56x56, renamed copies), waits until they are answered, then
drops one new image at a time (written beside the inbox and renamed in, as
rsync and cameras do) and times each until its results file appears.
Prints p50 / p95 / p99 and the first-run ingest rate.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

LOOKALIKE = Path(sys.executable).with_name("lookalike")


def digit_images(count: int) -> list[bytes]:
    """`count` PNGs: the 1,797 digits, shifted by a pixel or two once they run out."""
    from io import BytesIO

    from sklearn.datasets import load_digits

    digits = load_digits().images
    out = []
    for n in range(count):
        gray = (255 - digits[n % len(digits)] / 16.0 * 255).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(np.roll(gray, n // len(digits), axis=1), "L").resize((56, 56))
        buffer = BytesIO()
        image.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def wait_for(path: Path, timeout: float = 60.0) -> float:
    started = time.perf_counter()
    while not path.exists():
        if time.perf_counter() - started > timeout:
            raise TimeoutError(path)
        time.sleep(0.0005)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=int, default=1000)
    parser.add_argument("--drops", type=int, default=100)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    pictures = digit_images(args.library + args.drops)
    with tempfile.TemporaryDirectory() as home:
        root = Path(home)
        inbox, outside = root / "inbox", root / "outside"
        inbox.mkdir()
        outside.mkdir()
        for n, data in enumerate(pictures[:args.library]):
            (inbox / f"{n:07d}.png").write_bytes(data)
        (root / "config.yaml").write_text(yaml.safe_dump({
            "inbox": "./inbox", "state_dir": "./state", "model": args.model,
            "watch": {"settle_s": 2.0, "rescan_interval_s": 0}}))
        started = time.perf_counter()
        service = subprocess.Popen([str(LOOKALIKE), "run", "-c", "config.yaml"], cwd=root,
                                   stderr=open(root / "log.txt", "w"))
        try:
            wait_for(root / "state" / "service.json", timeout=3600)
            ready_s = time.perf_counter() - started
            latencies = []
            for n, data in enumerate(pictures[args.library:], start=args.library):
                name = f"{n:07d}.png"
                (outside / name).write_bytes(data)
                os.rename(outside / name, inbox / name)  # complete on arrival
                dropped = time.perf_counter()
                latencies.append(wait_for(inbox / (name + ".neighbors.json")) - dropped)
            ms = np.array(latencies) * 1000
            report = {"library": args.library, "drops": args.drops,
                      "start_to_ready_s": round(ready_s, 1),
                      "p50_ms": round(float(np.percentile(ms, 50)), 1),
                      "p95_ms": round(float(np.percentile(ms, 95)), 1),
                      "p99_ms": round(float(np.percentile(ms, 99)), 1)}
            print(json.dumps(report))
        finally:
            service.terminate()
            service.wait(30)
            if service.returncode:
                shutil.copy(root / "log.txt", Path.cwd() / "latency-service.log")


if __name__ == "__main__":
    main()
