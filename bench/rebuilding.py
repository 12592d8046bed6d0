#!/usr/bin/env python3
"""Latency while the index is rebuilt: the real service, rebuilding back to back.

    python bench/rebuilding.py [--seeded 100000] [--seconds 60]

Seeds a library of `--seeded` images as bench/latency.py does, starts the
real `lookalike run` with `index.rebuild_interval_s` 1, so that each change
starts a build as soon as the last one ends, and drops one new image every
0.1 s for `--seconds`, timing each from its close to its results file.
Prints one JSON line: p50 / p95 / p99 / max of those latencies and the
builds done meanwhile (from the service's log).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from latency import Service, digit_images, drop, seed, wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeded", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    pictures = digit_images(1797 + int(args.seconds * 10) + 100)
    with tempfile.TemporaryDirectory() as home:
        root = Path(home)
        inbox, outside = root / "inbox", root / "outside"
        inbox.mkdir()
        outside.mkdir()
        (root / "config.yaml").write_text(yaml.safe_dump({
            "inbox": "./inbox", "state_dir": "./state",
            "watch": {"settle_s": 2.0, "rescan_interval_s": 0},
            "index": {"rebuild_interval_s": 1}}))
        from lookalike.core.config import DEFAULT_MODEL
        seed(root, args.seeded, pictures[:1797], Path(DEFAULT_MODEL))
        service = Service(root)
        latencies = []
        try:
            started = time.perf_counter()
            for n in range(1797, len(pictures)):
                if time.perf_counter() - started >= args.seconds:
                    break
                name = f"{n:07d}.png"
                at = drop(pictures[n], name, outside, inbox)
                latencies.append(wait_for(inbox / (name + ".neighbors.json"), timeout=600) - at)
                time.sleep(0.1)
        finally:
            service.stop()
        builds = (root / "log.txt").read_text().count("index built")
    ms = np.array(latencies) * 1000
    print(json.dumps({"seeded": args.seeded, "seconds": args.seconds, "drops": len(ms),
                      **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
                      "max_ms": round(float(ms.max()), 1), "builds": builds}))


if __name__ == "__main__":
    main()
