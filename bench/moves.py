#!/usr/bin/env python3
"""A folder moved within the inbox, against its first ingest, as users run it.

    python bench/moves.py SOURCE_DIR [--count 12480] [--repeats 2] [--dir DIR] [--json FILE]

Makes `--count` 256x256 JPEGs from the images under SOURCE_DIR (e.g. the
corpus of scripts/build_corpus.py) in `inbox/photos`, then, `--repeats`
times on a fresh state directory:
- ingest: `lookalike run --once` reads, encodes and answers every image;
- move: `mv inbox/photos inbox/archive/2026` (one rename, as `mv` does it
  on one disk), then `lookalike run --once` again: it finds every image
  gone from its old path and new at its new one, and rewrites every results
  file, since every path in them changed.
Each run is the real command in a process of its own, after a sync of the
disk. Its cost, start-up excluded, is the seconds of its summary line less
the encoder's loading (TensorFlow's import included), which its log line
"encoder ... loaded in S s" gives (a run that encodes nothing loads none).
The fastest of the repeats counts for each. Prints one JSON line per
repeat and the summary lines of the last, whose counts say how many images
were encoded and how many took the vector of their bytes from the library;
--json writes the rows. `--dir` puts the images and the state there
(default: the system's temporary folder). On ext4 without a journal (this
machine's disk) rewriting the 12,480 moved results files is slow, since
each replaced file frees an inode that the next creations skip (the
kernel's `recently_deleted`); `--dir /dev/shm` measures the same on a file
system without that.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

LOOKALIKE = Path(sys.executable).with_name("lookalike")
SUMMARY = re.compile(r"(?P<added>\d+) added, (?P<updated>\d+) updated, (?P<removed>\d+) removed, "
                     r"(?P<unusable>\d+) unusable, (?P<written>\d+) results written; "
                     r"(?P<encoded>\d+) encoded, (?P<reused>\d+) reused \(same bytes\) "
                     r"in (?P<seconds>[\d.]+) s$")
LOADED = re.compile(r"encoder \S+ \(.*\) loaded in (?P<seconds>[\d.]+) s")


def make_corpus(sources: list[Path], out: Path, count: int) -> None:
    """`count` 256x256 JPEGs, as bench/ingest.py makes them, no two with the same bytes."""
    out.mkdir(parents=True)
    for n in range(count):
        with Image.open(sources[n % len(sources)]) as image:
            picture = image.convert("RGB").resize((256, 256), Image.Resampling.BILINEAR)
        # sources repeat beyond their number: a pixel of its own keeps each file unique
        picture.putpixel((n % 256, n // 256 % 256), (n % 251, 255 - n % 251, 0))
        picture.save(out / f"{n:06d}.jpg", quality=90)


def run_once(config: Path) -> dict[str, float]:
    """`lookalike run --once`: its summary's counts, its seconds, the encoder's loading,
    and the CPU seconds of all its threads (`cpu`: the work, however parallel)."""
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([str(LOOKALIKE), "run", "--once", "-c", str(config)],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"lookalike run --once failed ({done.returncode}):\n{done.stderr}")
    summary = SUMMARY.search(done.stdout.strip().splitlines()[-1])
    if summary is None:
        raise SystemExit(f"no summary line:\n{done.stdout}\n{done.stderr}")
    counts = {key: float(value) for key, value in summary.groupdict().items()}
    loaded = LOADED.search(done.stderr)  # (none when nothing was encoded)
    counts["startup"] = float(loaded.group("seconds")) if loaded else 0.0
    counts["cost"] = counts["seconds"] - counts["startup"]
    counts["wall"] = wall
    counts["cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"  $ lookalike run --once: {done.stdout.strip().splitlines()[-1]}", file=sys.stderr)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--count", type=int, default=12480)
    parser.add_argument("--repeats", type=int, default=2, help="the fastest of each counts")
    parser.add_argument("--dir", type=Path, default=None, help="where the images go")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    sources = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as home:
        corpus = Path(home) / "corpus"
        make_corpus(sources, corpus, args.count)
        for repeat in range(args.repeats):
            root = Path(home) / f"run{repeat}"
            inbox = root / "inbox"
            inbox.mkdir(parents=True)
            shutil.copytree(corpus, inbox / "photos", copy_function=os.link)  # (same bytes)
            config = root / "config.yaml"
            config.write_text("inbox: ./inbox\nstate_dir: ./state\n")
            ingest = run_once(config)
            (inbox / "archive").mkdir()
            os.rename(inbox / "photos", inbox / "archive" / "2026")  # mv
            move = run_once(config)
            row = {"images": args.count, "ingest_s": round(ingest["cost"], 2),
                   "move_s": round(move["cost"], 2),
                   "ratio": round(move["cost"] / ingest["cost"], 3),
                   "ingest_encoded": int(ingest["encoded"]), "move_encoded": int(move["encoded"]),
                   "move_reused": int(move["reused"]), "move_removed": int(move["removed"]),
                   "move_written": int(move["written"]),
                   "startup_s": [round(ingest["startup"], 2), round(move["startup"], 2)]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    best_ingest = min(r["ingest_s"] for r in rows)
    best_move = min(r["move_s"] for r in rows)
    print(f"\nfirst ingest {best_ingest:.1f} s, move {best_move:.1f} s (start-up excluded, "
          f"fastest of {len(rows)}): {best_move / best_ingest:.0%}; the move encoded "
          f"{rows[-1]['move_encoded']} and took {rows[-1]['move_reused']} vectors by their bytes")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
