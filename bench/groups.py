#!/usr/bin/env python3
"""`lookalike duplicates` on a large library: seconds to list every group.

    python bench/groups.py [--images 100000] [--group 13] [--runs 3]

Seeds a library of `--images` rows (random vectors, no image files), in
groups of `--group` whose results files mark each other as near-duplicates
(as the service stores what it wrote), then times the real command,
`lookalike duplicates --json` and the plain text, output to /dev/null. The
command reads only the library: no TensorFlow, no image. Prints one JSON
object a line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike.core.store import Answer, Entry, Library

LOOKALIKE = Path(sys.executable).with_name("lookalike")
MODEL = "sha256:" + "0" * 64


def seed(state: Path, count: int, group: int) -> None:
    rng = np.random.default_rng(0)
    with Library(state / "library.sqlite") as library:
        for start in range(0, count, 10_000):
            rows = range(start, min(count, start + 10_000))
            library.apply(Entry(f"{n // 1000:03d}/{n:07d}.jpg", 40_000 + n, n, f"{n:064x}",
                                MODEL, rng.standard_normal(64).astype(np.float32),
                                width=256, height=256) for n in rows)
        ids = {record.path: record.id for record in library.records().values()}
        order = [ids[f"{n // 1000:03d}/{n:07d}.jpg"] for n in range(count)]
        answers = []
        for start in range(0, count, group):
            members = order[start:start + group]
            answers += [Answer(row, f"f{row}", [m for m in members if m != row], 0.5,
                               [m for m in members if m != row]) for row in members]
        library.mark_answered(answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--group", type=int, default=13)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        root = Path(home)
        (root / "inbox").mkdir()
        (root / "state").mkdir()
        config = root / "config.yaml"
        config.write_text("inbox: inbox\nquery_dir: null\nstate_dir: state\n")
        seed(root / "state", args.images, args.group)
        for form in (["--json"], []):
            seconds = []
            for _ in range(args.runs):
                started = time.perf_counter()
                done = subprocess.run([str(LOOKALIKE), "duplicates", *form, "-c", str(config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, check=False)
                seconds.append(time.perf_counter() - started)
                if done.returncode:
                    raise SystemExit(f"lookalike duplicates failed:\n{done.stderr}")
            print(json.dumps({"images": args.images, "groups": -(-args.images // args.group),
                              "output": "json" if form else "text",
                              "best_s": round(min(seconds), 2),
                              "median_s": round(float(np.median(seconds)), 2)}), flush=True)


if __name__ == "__main__":
    main()
