#!/usr/bin/env python3
"""`lookalike import` then `run --once`, against `run --once` alone, as users run them.

    python bench/importing.py SOURCE_DIR [--count 12480] [--repeats 2] [--rows 100000]
                                         [--dir DIR] [--json FILE]

Makes `--count` distinct 256x256 JPEGs from the images under SOURCE_DIR (the
corpus of scripts/build_corpus.py, as bench/ingest.py makes them), then,
`--repeats` times, alternating, each on a fresh state directory and after a
sync of the disk:
- once: `lookalike run --once` reads, encodes and answers every image;
- import: `lookalike import` (a local Ray cluster on this machine's cores)
  writes every image's row, then `lookalike run --once` encodes nothing and
  writes every results file.
Each is the real command in a process of its own, timed from its start to
its exit (start-ups included: Ray's, TensorFlow's). Between runs the
results files are moved aside, not deleted (see bench/ingest.py: ext4 then
slows the next run's file creation). The same import on a folder of one
image gives its fixed cost (starting the cluster, loading the encoder in an
actor), so that the rest is the rate a node of this size imports at.

Then the library's write rate, the ceiling of any cluster (one process
writes every row): `--rows` rows as the cluster delivers them (batches of
256 with 456-number vectors and thumbnails) fed to the import's writer
(`daemon.importing.Writer`) in this process, into a new library on the same
disk, WAL checkpoints included; the best of three.

Prints one JSON line per run, a table row per repeat, and the projection of
hours for 10^7 images at 1, 10 and 100 nodes of this machine's size: each
node imports at the measured rate, the library takes at most the measured
write rate. --json writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingest import make_corpus  # bench/ingest.py

from lookalike import daemon  # noqa: F401  # isort: skip - first: the command sets up OpenBLAS
import numpy as np

LOOKALIKE = Path(sys.executable).with_name("lookalike")
TARGET_ROWS_S = 20_000


def timed(*args: str) -> tuple[float, str]:
    """Wall seconds of `lookalike ARGS`, and the last line it printed."""
    os.sync()
    started = time.perf_counter()
    finished = subprocess.run([str(LOOKALIKE), *args], capture_output=True, text=True,
                              check=False)
    took = time.perf_counter() - started
    if finished.returncode:
        raise SystemExit(f"lookalike {' '.join(args)} failed ({finished.returncode}):\n"
                         f"{finished.stderr[-3000:]}")
    return took, finished.stdout.strip().splitlines()[-1]


def fresh(folder: Path, spent: Path) -> Path:
    """A config over `folder` with a new state directory; results files of earlier runs
    moved aside."""
    state = Path(tempfile.mkdtemp(dir=spent))
    for results in folder.glob("*.neighbors.json"):
        results.rename(state / results.name)
    config = state / "config.yaml"
    config.write_text(f"inbox: {folder}\nquery_dir: null\nstate_dir: {state}/state\n")
    return config


def writer_rate(rows: int, folder: Path) -> tuple[float, float]:
    """Rows a second that the import's writer stores, fed ready batches: by the clock, and
    by this process's CPU time (what it takes on a core of its own: the machine's other
    work slows the first)."""
    from lookalike.core.store import Library
    from lookalike.daemon.importing import Writer
    from lookalike.daemon.progress import Tally

    rng = np.random.default_rng(0)
    batch, dims = 256, 456
    batches = []
    for start in range(0, rows, batch):
        count = min(batch, rows - start)
        paths = np.array([f"{n // 1000:04d}/{n:07d}.jpg" for n in range(start, start + count)])
        batches.append({
            "path": paths, "size": rng.integers(10_000, 40_000, count),
            "mtime_ns": rng.integers(1.7e18, 1.8e18, count),
            "sha256": np.array([f"{n:064x}" for n in range(start, start + count)]),
            "model_id": np.full(count, "sha256:" + "0" * 64),
            "latent": rng.standard_normal((count, dims)).astype(np.float32),
            "thumb": rng.integers(0, 256, (count, 1024), dtype=np.uint8),
            "width": np.full(count, 256), "height": np.full(count, 256),
            "error_code": np.full(count, ""), "error_message": np.full(count, "")})
    from lookalike.core.scan import Candidate

    wanted = [Candidate(str(path), 0, 0) for b in batches for path in b["path"]]
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        with Library(Path(scratch) / "library.sqlite") as library:
            writer = Writer(library, {}, wanted, Tally(), progress=False)
            started, cpu = time.perf_counter(), time.process_time()
            for one in batches:
                writer.add(one)
            writer.flush()
            library.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return (rows / (time.perf_counter() - started),
                    rows / (time.process_time() - cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--count", type=int, default=12_480)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=100_000, help="rows for the write rate")
    parser.add_argument("--dir", type=Path, default=None, help="where the images and states go")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sources = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as home:
        corpus, one, spent = Path(home) / "corpus", Path(home) / "one", Path(home) / "spent"
        spent.mkdir()
        make_corpus(sources, corpus, args.count, (256, 256))
        make_corpus(sources, one, 1, (256, 256))
        for repeat in range(args.repeats):
            once, once_line = timed("run", "--once", "-c", str(fresh(corpus, spent)))
            config = fresh(corpus, spent)
            imported, import_line = timed("import", "-c", str(config))
            after, after_line = timed("run", "--once", "-c", str(config))
            start_up, _ = timed("import", "-c", str(fresh(one, spent)))
            row = {"repeat": repeat, "images": args.count, "once_s": round(once, 1),
                   "import_s": round(imported, 1), "once_after_s": round(after, 1),
                   "ratio": round((imported + after) / once, 2),
                   "import_start_s": round(start_up, 1),
                   "node_images_s": round(args.count / max(imported - start_up, 1e-9)),
                   "once_line": once_line, "import_line": import_line,
                   "once_after_line": after_line}
            rows.append(row)
            print(json.dumps(row), flush=True)
        measured = [writer_rate(args.rows, Path(home)) for _ in range(3)]
    rates, cpu_rates = [wall for wall, _ in measured], [cpu for _, cpu in measured]
    write_rate = max(cpu_rates)  # (the writer's process has a core of its own on a head node)
    print(json.dumps({"writer_rows_s": [round(rate) for rate in rates],
                      "writer_rows_cpu_s": [round(rate) for rate in cpu_rates]}), flush=True)
    print("\n| repeat | run --once alone, s | import, s | then run --once, s | "
          "(import + run --once) ÷ run --once | import's fixed cost, s | a node's import "
          "rate, images/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['repeat']} | {r['once_s']} | {r['import_s']} | {r['once_after_s']} | "
              f"{r['ratio']} | {r['import_start_s']} | {r['node_images_s']:,} |")
    node = statistics.median(float(r["node_images_s"]) for r in rows)  # type: ignore[arg-type]
    met = "met" if write_rate >= TARGET_ROWS_S else "not met"
    print(f"\nthe library's write rate: {write_rate:,.0f} rows a CPU second (of "
          f"{', '.join(f'{rate:,.0f}' for rate in cpu_rates)}; by the clock, sharing the "
          f"machine: {', '.join(f'{rate:,.0f}' for rate in rates)} rows/s); target "
          f"{TARGET_ROWS_S:,}: {met}")
    print("\n| nodes | import rate, images/s | hours for 10^7 images |")
    print("| --- | --- | --- |")
    for nodes in (1, 10, 100):
        rate = min(nodes * node, write_rate)
        print(f"| {nodes} | {rate:,.0f}{' (the write rate)' if rate == write_rate else ''} | "
              f"{1e7 / rate / 3600:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "writer_rows_s": rates,
                                         "writer_rows_cpu_s": cpu_rates}, indent=2))


if __name__ == "__main__":
    main()
