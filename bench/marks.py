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

Then the in-process limit of what marks add to the service's answer to one
arrival: on the library the first run made, each of 1,000 images judged
against its 12 neighbours as a new arrival is, none of their views kept
(each of the 13 pictures' views made), and the milliseconds each takes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
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
        judging = one_arrival(Path(home) / "marked0")
    marked, unmarked = min(costs["marked"]), min(costs["unmarked"])
    print(f"\n{args.count} images, start-up excluded, fastest of {args.repeats}: "
          f"{marked:.1f} s with near-duplicate marks, {unmarked:.1f} s without: "
          f"+{marked / unmarked - 1:.0%}; each run {json.dumps(costs)}")
    marked, unmarked = min(cpus["marked"]), min(cpus["unmarked"])
    print(f"CPU seconds of all its threads, least of {args.repeats}: {marked:.1f} with marks, "
          f"{unmarked:.1f} without: +{marked / unmarked - 1:.0%}; each run {json.dumps(cpus)}")
    print(f"Judging one arrival's 12 neighbours, in-process, none of their views kept: "
          f"p50 {judging[0]:.2f} ms, p99 {judging[1]:.2f} ms")


def one_arrival(root: Path, count: int = 1000) -> tuple[float, float]:
    """p50 and p99 milliseconds of judging an image's neighbours (`Judge.marks`) as the
    service judges a new arrival's, with no picture's views kept from before."""
    import lookalike.daemon  # noqa: F401, I001  (first, as in the command: its settings precede NumPy)
    import sqlite3

    import numpy as np

    from lookalike.core import copies

    with sqlite3.connect(root / "state" / "library.sqlite") as db:
        pictures = {path: copies.Picture(thumb, copies.shape_of(width, height))
                    for path, thumb, width, height in
                    db.execute("SELECT path, thumb, width, height FROM images")}
    judge = copies.Judge("normal")
    times = []
    for results in sorted((root / "inbox").rglob("*.neighbors.json"))[:count]:
        document = json.loads(results.read_text())
        query = (pictures[document["query"]],
                 [(n["distance"], pictures[n["path"]]) for n in document["neighbors"]])
        judge.rows.clear()
        judge.scores.clear()
        started = time.perf_counter()
        judge.marks([query])
        times.append(time.perf_counter() - started)
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    return float(p50), float(p99)


if __name__ == "__main__":
    main()
