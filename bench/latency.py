#!/usr/bin/env python3
"""The running service: latency, a burst, start-up and memory, with N images in the library.

    python bench/latency.py [--library 1000] [--drops 100] [--burst 1000] [--model FILE]

Starts the real `lookalike run` on a fresh inbox holding `--library` images
(digits, drawn at 56x56, renamed copies) and times it to READY (that
includes ingesting them). Then:
- latency: drops one new image at a time (written beside the inbox and
  renamed in, as rsync and cameras do) and times each until its results
  file appears: p50 / p95 / p99;
- burst: drops `--burst` images at once and times until the last results
  file appears: images per second (its cost per image against the library
  size is the scaling figure);
- memory: resident memory of the idle service, 5 s after the burst;
- restart: SIGTERM, start again on the full library: seconds to READY and
  the idle resident memory after it.
Prints one JSON line.
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
LOG = Path(__file__).parent / "results" / "latency-service.log"  # the last run's service log


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


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Service:
    """The real `lookalike run` in `root`, started and timed to READY (its status file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        status = root / "state" / "service.json"
        status.unlink(missing_ok=True)
        started = time.perf_counter()
        self.process = subprocess.Popen([str(LOOKALIKE), "run", "-c", "config.yaml"], cwd=root,
                                        stderr=open(root / "log.txt", "a"))
        wait_for(status, timeout=7200)
        self.ready_s = time.perf_counter() - started

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(120)
        shutil.copy(self.root / "log.txt", LOG)
        if self.process.returncode:
            raise RuntimeError(f"the service exited {self.process.returncode}; log in {LOG}")


def drop(data: bytes, name: str, outside: Path, inbox: Path) -> float:
    """Write an image beside the inbox and rename it in (whole on arrival); the time of it."""
    (outside / name).write_bytes(data)
    os.rename(outside / name, inbox / name)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=int, default=1000)
    parser.add_argument("--drops", type=int, default=100)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    pictures = digit_images(args.library + args.drops + args.burst)
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
        service = Service(root)
        try:
            report = {"library": args.library, "start_to_ready_s": round(service.ready_s, 1)}
            latencies = []
            dropped = args.library + args.drops
            for n, data in enumerate(pictures[args.library:dropped], start=args.library):
                name = f"{n:07d}.png"
                at = drop(data, name, outside, inbox)
                latencies.append(wait_for(inbox / (name + ".neighbors.json")) - at)
            ms = np.array(latencies) * 1000
            report.update({f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)})
            names = [f"{n:07d}.png" for n in range(dropped, dropped + args.burst)]
            started = time.perf_counter()
            for name, data in zip(names, pictures[dropped:], strict=True):
                drop(data, name, outside, inbox)
            for name in names:
                finished = wait_for(inbox / (name + ".neighbors.json"), timeout=3600)
            report["burst_per_s"] = round(args.burst / (finished - started))
            time.sleep(5)
            report["idle_rss_mb"] = round(rss_mb(service.process.pid))
            service.stop()
            service = Service(root)  # a restart with the whole library in place
            report["restart_to_ready_s"] = round(service.ready_s, 1)
            time.sleep(5)
            report["restarted_idle_rss_mb"] = round(rss_mb(service.process.pid))
            print(json.dumps(report))
        finally:
            service.stop()


if __name__ == "__main__":
    main()
