#!/usr/bin/env python3
"""What near-duplicate marks cost a bulk import: `lookalike run --once` with and without.

    python bench/marks.py SOURCE_DIR [--count 12480] [--repeats 3] [--dir DIR]

Makes `--count` distinct 256x256 JPEGs from the images under SOURCE_DIR, as
bench/moves.py does, and runs the `lookalike run --once` command on them,
each time on a fresh inbox (hard links to the same files) and state,
alternating: as shipped, and with the near-duplicate judgement switched off
(a `sitecustomize` module put on PYTHONPATH that makes `Judge.marks` mark
nothing; identical bytes are still marked). A run's cost is the seconds of
its summary line less the encoder's loading (bench/moves.py). Nothing is
deleted until the end: on ext4 without a journal, files deleted just before
a run slow its file creation. Prints each run, the fastest of each kind and
what the marks add to it; and the CPU seconds of all the command's threads,
the work the marks add however it overlaps (steadier than the clock on a
shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from moves import make_corpus, run_once

UNMARKED = """\
# Written by bench/marks.py: the run without near-duplicate judgements.
import lookalike.daemon  # first, as in the command: its settings for NumPy precede NumPy
from lookalike.core import copies

copies.Judge.marks = lambda self, queries: [[False] * len(near) for _, near in queries]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--count", type=int, default=12480)
    parser.add_argument("--repeats", type=int, default=3, help="the fastest of each counts")
    parser.add_argument("--dir", type=Path, default=None, help="where the images go")
    args = parser.parse_args()
    sources = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    costs: dict[str, list[float]] = {"marked": [], "unmarked": []}
    cpus: dict[str, list[float]] = {"marked": [], "unmarked": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as home:
        corpus = Path(home) / "corpus"
        make_corpus(sources, corpus, args.count)
        shim = Path(home) / "unmarked"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(UNMARKED)
        for repeat in range(args.repeats):
            kinds = ("marked", "unmarked") if repeat % 2 == 0 else ("unmarked", "marked")
            for kind in kinds:
                root = Path(home) / f"{kind}{repeat}"
                inbox = root / "inbox"
                inbox.mkdir(parents=True)
                shutil.copytree(corpus, inbox / "photos", copy_function=os.link)
                config = root / "config.yaml"
                config.write_text("inbox: ./inbox\nstate_dir: ./state\n")
                if kind == "unmarked":
                    os.environ["PYTHONPATH"] = str(shim)
                else:
                    os.environ.pop("PYTHONPATH", None)
                counts = run_once(config)
                costs[kind].append(round(counts["cost"], 2))
                cpus[kind].append(round(counts["cpu"], 1))
                print(json.dumps({"images": args.count, "run": kind, "repeat": repeat,
                                  "cost_s": round(counts["cost"], 2),
                                  "cpu_s": round(counts["cpu"], 1)}), flush=True)
        os.environ.pop("PYTHONPATH", None)
    marked, unmarked = min(costs["marked"]), min(costs["unmarked"])
    print(f"\n{args.count} images, start-up excluded, fastest of {args.repeats}: "
          f"{marked:.1f} s with near-duplicate marks, {unmarked:.1f} s without: "
          f"+{marked / unmarked - 1:.0%}; each run {json.dumps(costs)}")
    marked, unmarked = min(cpus["marked"]), min(cpus["unmarked"])
    print(f"CPU seconds of all its threads, least of {args.repeats}: {marked:.1f} with marks, "
          f"{unmarked:.1f} without: +{marked / unmarked - 1:.0%}; each run {json.dumps(cpus)}")


if __name__ == "__main__":
    main()
