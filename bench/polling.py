#!/usr/bin/env python3
"""What one poll of a polled inbox costs: lookalike's poller against watchdog's own.

    python bench/polling.py [--files 100000] [--folders 1000] [--repeats 5]

Makes `--files` empty files in `--folders` folders (as a photo library
keeps them: a folder per day or event), then times, the fastest of
`--repeats` each, with the page cache warm:
- lookalike: a poll of the unchanged tree by daemon/polling.py (a stat of
  every folder, no listing), then one with a file added to one folder;
- watchdog: the snapshot its PollingEmitter takes at every poll (a stat of
  every file and folder).
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from watchdog.observers.api import EventQueue, ObservedWatch
from watchdog.utils.dirsnapshot import DirectorySnapshot

from lookalike.daemon.polling import FolderPoller


def fastest(repeats: int, work: object) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--folders", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        root = Path(home)
        for n in range(args.files):
            folder = root / f"{n % args.folders:05d}"
            folder.mkdir(exist_ok=True)
            (folder / f"{n:07d}.jpg").touch()
        poller = FolderPoller(EventQueue(), ObservedWatch(str(root), recursive=True), timeout=30)
        unchanged = fastest(args.repeats, poller.poll)
        added = []

        def one_new() -> None:
            (root / "00007" / f"new{len(added)}.jpg").touch()
            added.append(1)
            poller.poll()
            poller.poll()  # (the changed folder is listed once more at the next poll)

        changed = fastest(args.repeats, one_new) / 2
        snapshot = fastest(args.repeats, lambda: DirectorySnapshot(str(root), recursive=True))
    print(json.dumps({"files": args.files, "folders": args.folders,
                      "lookalike_poll_ms": round(unchanged * 1e3, 1),
                      "lookalike_poll_one_new_ms": round(changed * 1e3, 1),
                      "watchdog_snapshot_ms": round(snapshot * 1e3, 1)}))


if __name__ == "__main__":
    main()
