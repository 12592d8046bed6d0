#!/usr/bin/env python3
"""Load and soak runs of the real service: a burst, a steady stream, a long mixed soak.

    python bench/soak.py burst  [--count 10000]
    python bench/soak.py stream [--minutes 3] [--interval 0.02] [--library 1000]
    python bench/soak.py soak   [--minutes 15] [--interval 0.05] [--library 1000] [--steady]
    python bench/soak.py kill   [--cycles 25]

Each mode starts the real `lookalike run` (the shipped encoder unless
`--model`) on a fresh folder, drives it, and prints one table row: images
answered, errors (valid images without a correct answer, plus ERROR lines in
the service's log), peak RSS, RSS just after start-up against RSS at the end,
and p50/p99 latency from a new file's arrival (renamed into place, or closed
after writing) to its results file, timed by an inotify watch on the inbox.
The row is appended to bench/results/soak.md.

- burst: `--count` images renamed into the inbox at once.
- stream: one new image every `--interval` seconds for `--minutes`.
- soak: every `--interval` seconds one of: a new image (65 %), an image
  edited in place (15 %), one deleted (12 %), a file that is no image (5 %),
  a new image written slowly over a second (3 %); RSS is sampled all along;
  at the end every image must have a correct results file and no deleted one
  any.
- kill: the SIGKILL test of tests/daemon/test_faults.py with `--cycles`
  cycles instead of CI's few; with `--library N` or `--seeded N`, kill
  cycles timed from READY until the answers are right (bench/recovery.py):
  `kill --cycles 100 --library 10000`, `kill --cycles 3 --seeded 1000000`.

The images are the 1,797 digits, shifted a pixel at a time once used up
(`bench/latency.py`'s `digit_images`). Run it pinned as the tests are
(`taskset -c 0`): the service and this driver then share one core.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from watchdog.events import (
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import LOOKALIKE, digit_images  # noqa: E402  (the benchmark beside this one)

SUFFIX = ".neighbors.json"
RESULTS = Path(__file__).resolve().parent / "results" / "soak.md"
REPO = Path(__file__).resolve().parents[1]


# -- timing results files -----------------------------------------------------------------
class Appearances(FileSystemEventHandler):
    """When each results file appeared (renamed into place: the service's atomic write)."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = str(inbox)
        self.times: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):  # renamed from a temporary beside it
            target = os.fsdecode(event.dest_path)
        elif isinstance(event, FileCreatedEvent):  # renamed in from the state directory
            target = os.fsdecode(event.src_path)
        else:
            return
        target = os.path.relpath(target, self.inbox)
        if target.endswith(SUFFIX):
            now = time.monotonic()
            with self.lock:
                self.times.setdefault(target[:-len(SUFFIX)], []).append(now)

    def first_after(self, image: str, since: float) -> float | None:
        with self.lock:
            return next((t for t in self.times.get(image, []) if t >= since), None)


# -- memory ---------------------------------------------------------------------------------
class Memory:
    """Samples the service's RSS every half second (VmRSS; VmHWM for the peak)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []  # (monotonic, MB)
        self.peak_mb = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, name="rss", daemon=True)
        self.thread.start()

    def read(self) -> dict[str, float]:
        found = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) / 1024
        except OSError:
            pass
        return found

    def sample(self) -> None:
        while not self.done.wait(0.5):
            now = self.read()
            if "VmRSS" in now:
                self.samples.append((time.monotonic(), now["VmRSS"]))
                self.peak_mb = max(self.peak_mb, now.get("VmHWM", 0.0))

    def now_mb(self) -> float:
        return self.read().get("VmRSS", 0.0)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


# -- the service ------------------------------------------------------------------------------
@dataclass
class Service:
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def ready(self, timeout: float = 3600) -> None:
        deadline = time.monotonic() + timeout
        status = self.root / "state" / "service.json"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"lookalike exited with {self.process.returncode}; see {self.log}")
            try:
                report = json.loads(status.read_text())
                if report.get("pid") == self.process.pid and report.get("state") == "running":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise SystemExit("lookalike did not become ready")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -9

    def log_counts(self) -> tuple[int, int]:
        text = self.log.read_text(errors="replace")
        return (sum(" ERROR " in line for line in text.splitlines()),
                text.count("Traceback"))


def start(root: Path, model: str) -> Service:
    (root / "inbox").mkdir(exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump({
        "inbox": "./inbox", "state_dir": "./state", "model": model}))
    log = root / "service.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NOTIFY_SOCKET", None)
    with open(log, "wb") as stderr:
        process = subprocess.Popen([str(LOOKALIKE), "run", "-c", "config.yaml"], cwd=root,
                                   env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    return Service(root, process, log)


# -- driving the inbox -----------------------------------------------------------------------------
@dataclass
class Driver:
    """Puts files into the inbox and remembers what should be answered, and when it came."""

    inbox: Path
    staging: Path
    pictures: list[bytes]
    arrived: dict[str, float] = field(default_factory=dict)  # new image -> arrival time
    present: set[str] = field(default_factory=set)  # images that should have ok results
    bad: set[str] = field(default_factory=set)  # files that should have error results
    used: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # slow writers are threads

    def next_picture(self) -> bytes:
        with self.lock:
            data = self.pictures[self.used % len(self.pictures)]
            self.used += 1
        return data

    def images(self) -> list[str]:
        with self.lock:
            return sorted(self.present)

    def create(self, name: str) -> None:
        """A new image renamed into place (as rsync and cameras do): complete on arrival."""
        (self.staging / name).write_bytes(self.next_picture())
        os.rename(self.staging / name, self.inbox / name)
        with self.lock:
            self.arrived[name] = time.monotonic()
            self.present.add(name)

    def write_slowly(self, name: str, seconds: float = 1.0) -> None:
        """A new image written in place in a few pieces; it arrives when closed."""
        data = self.next_picture()
        with open(self.inbox / name, "wb") as out:
            for start in range(0, len(data), max(1, len(data) // 4)):
                out.write(data[start:start + max(1, len(data) // 4)])
                out.flush()
                time.sleep(seconds / 4)
        with self.lock:
            self.arrived[name] = time.monotonic()
            self.present.add(name)

    def edit(self, name: str) -> None:
        (self.inbox / name).write_bytes(self.next_picture())

    def delete(self, name: str) -> None:
        (self.inbox / name).unlink()
        with self.lock:
            self.present.discard(name)
            self.arrived.pop(name, None)

    def garbage(self, name: str) -> None:
        (self.inbox / name).write_text("this is not a picture\n")
        self.bad.add(name)


def answered(inbox: Path, present: set[str], bad: set[str]) -> tuple[set[str], list[str]]:
    """(images still without the right results, problems that will not go away by waiting)."""
    waiting, problems = set(), []
    for name in present | bad:
        try:
            document = json.loads((inbox / (name + SUFFIX)).read_text("utf-8"))
        except FileNotFoundError:
            waiting.add(name)
            continue
        except ValueError:
            problems.append(f"{name}: results do not parse")
            continue
        status = "error" if name in bad else "ok"
        if document.get("status") != status:
            waiting.add(name)  # an edit may still be on its way
    return waiting, problems


def orphans(inbox: Path) -> list[str]:
    return [p.name for p in inbox.glob("*" + SUFFIX)
            if not p.with_name(p.name[:-len(SUFFIX)]).exists()]


def settle(driver: Driver, service: Service, timeout: float) -> tuple[set[str], list[str]]:
    """Wait until everything is answered (or `timeout`); what is still wrong then."""
    deadline = time.monotonic() + timeout
    while True:
        waiting, problems = answered(driver.inbox, driver.present, driver.bad)
        gone = orphans(driver.inbox)
        if (not waiting and not gone) or time.monotonic() > deadline:
            return waiting, problems + [f"{name}: results of a deleted image" for name in gone]
        if service.process.poll() is not None:
            return waiting, problems + [f"the service exited with {service.process.returncode}"]
        time.sleep(0.5)


# -- one run --------------------------------------------------------------------------------
@dataclass
class Row:
    mode: str
    command: str
    answered: int = 0
    errors: int = 0
    peak_mb: float = 0.0
    start_mb: float = 0.0
    end_mb: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        if self.mode == "kill":  # a test run: no images or timings of its own
            return (f"| {datetime.now(UTC):%Y-%m-%d %H:%M} | kill | `{self.command}` | — | "
                    f"{self.errors} | — | — | — | — | {'; '.join(self.notes)} |")
        return (f"| {datetime.now(UTC):%Y-%m-%d %H:%M} | {self.mode} | `{self.command}` | "
                f"{self.answered:,} | {self.errors} | {self.peak_mb:.0f} | "
                f"{self.start_mb:.0f} → {self.end_mb:.0f} | {self.p50_ms:.0f} | "
                f"{self.p99_ms:.0f} | {'; '.join(self.notes)} |")


HEADER = ("| when (UTC) | mode | command | images answered | errors | peak RSS MB | "
          "RSS start → end MB | p50 ms | p99 ms | notes |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def drive(mode: str, args: argparse.Namespace) -> Row:
    command = "python bench/soak.py " + " ".join(sys.argv[1:])
    row = Row(mode, command)
    total = args.library + (args.count if mode == "burst" else
                            int(args.minutes * 60 / args.interval) + 10)
    print(f"drawing {total:,} images…", flush=True)
    pictures = digit_images(total)
    with tempfile.TemporaryDirectory(prefix="lookalike-soak-") as home:
        root = Path(home)
        staging = root / "staging"
        staging.mkdir()
        (root / "inbox").mkdir()
        driver = Driver(root / "inbox", staging, pictures)
        for n in range(args.library):  # there before the start: answered by the start-up scan
            (driver.inbox / f"lib{n:06d}.png").write_bytes(driver.next_picture())
            driver.present.add(f"lib{n:06d}.png")
        started = time.monotonic()
        service = start(root, args.model)
        memory = Memory(service.process.pid)
        appearances = Appearances(driver.inbox)
        observer = Observer()
        observer.schedule(appearances, str(driver.inbox), recursive=False,
                          event_filter=[FileMovedEvent, FileCreatedEvent])
        observer.start()
        try:
            service.ready()
            ready_s = time.monotonic() - started
            row.notes.append(f"library {args.library:,}, ready in {ready_s:.0f} s")
            row.start_mb = memory.now_mb()
            began = time.monotonic()
            if mode == "burst":
                for n in range(args.count):
                    driver.create(f"new{n:06d}.png")
                row.notes.append(f"{args.count:,} renamed in over "
                                 f"{time.monotonic() - began:.1f} s")
            else:
                act(mode, driver, args, memory)
            waiting, problems = settle(driver, service, args.settle_timeout)
            took = time.monotonic() - began
            time.sleep(5)  # idle a moment: what memory stays
            row.end_mb = memory.now_mb()
            row.peak_mb = memory.peak_mb
            log_errors, tracebacks = service.log_counts()
            exit_code = service.stop()
        finally:
            observer.stop()
            observer.join()
            memory.stop()
            if service.process.poll() is None:
                service.process.kill()
        latencies = []
        for name, at in driver.arrived.items():
            seen = appearances.first_after(name, at)
            if seen is not None:
                latencies.append((seen - at) * 1000)
        unseen = len(driver.arrived) - len(latencies)
        if latencies:
            row.p50_ms = float(np.percentile(latencies, 50))
            row.p99_ms = float(np.percentile(latencies, 99))
        row.answered = len(driver.present | driver.bad) - len(waiting)
        row.errors = len(waiting) + len(problems) + log_errors + tracebacks
        row.notes.append(f"all settled {took:.0f} s after the first arrival")
        if driver.bad:
            row.notes.append(f"{len(driver.bad)} non-images refused as expected")
        if unseen:
            row.notes.append(f"{unseen} arrivals not timed (no results rename seen after)")
        if exit_code:
            row.notes.append(f"exit {exit_code}")
            row.errors += 1
        if waiting or problems:
            row.notes.append(f"unanswered {sorted(waiting)[:5]}; {problems[:5]}")
            shutil.copy(service.log, Path.cwd() / f"soak-{mode}-service.log")
        if tracebacks:
            row.notes.append(f"{tracebacks} tracebacks in the log")
        if len(memory.samples) > 8:  # memory over the run: the last quarter against the second
            values = [mb for _, mb in memory.samples]
            quarter = len(values) // 4
            row.notes.append(f"RSS median 2nd quarter {np.median(values[quarter:2 * quarter]):.0f}"
                             f" MB, last quarter {np.median(values[3 * quarter:]):.0f} MB")
    return row


def act(mode: str, driver: Driver, args: argparse.Namespace, memory: Memory) -> None:
    """The stream or the soak: one action every `interval` seconds for `minutes`."""
    chance = random.Random(15)
    end = time.monotonic() + args.minutes * 60
    tick = time.monotonic()
    n = 0
    next_report = time.monotonic() + 60
    while time.monotonic() < end:
        n += 1
        roll = chance.random() if mode == "soak" else 0.0
        candidates = driver.images()
        if args.steady and roll < 0.80 and len(candidates) >= args.library:
            driver.delete(chance.choice(candidates))  # as many go as come: a library of one size
        elif roll < 0.65 or not candidates:
            driver.create(f"new{n:06d}.png")
        elif roll < 0.80:
            driver.edit(chance.choice(candidates))
        elif roll < 0.92:
            driver.delete(chance.choice(candidates))
        elif roll < 0.97:
            driver.garbage(f"bad{n:06d}.jpg")
        else:
            threading.Thread(target=driver.write_slowly, args=(f"slow{n:06d}.png",),
                             daemon=True).start()
        if time.monotonic() >= next_report:
            next_report += 60
            print(f"  {n:,} actions, {len(driver.present):,} images, "
                  f"RSS {memory.now_mb():.0f} MB", flush=True)
        tick += args.interval
        time.sleep(max(0.0, tick - time.monotonic()))
    time.sleep(1.5)  # the slow writers finish


def kill_cycles(args: argparse.Namespace) -> Row:
    """The SIGKILL fault test with more cycles (see tests/daemon/test_faults.py)."""
    command = f"python bench/soak.py kill --cycles {args.cycles}"
    row = Row("kill", command)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/daemon/test_faults.py", "-k", "sigkill", "-q",
         "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, check=False,
        env={**os.environ, "LOOKALIKE_KILL_CYCLES": str(args.cycles)})
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "no output"
    row.errors = int(done.returncode != 0)
    row.notes.append(f"{args.cycles} SIGKILL cycles, then a restart: {summary} "
                     f"({time.monotonic() - started:.0f} s)")
    if done.returncode:
        Path.cwd().joinpath("soak-kill.log").write_text(done.stdout + done.stderr)
    return row


def recovery_cycles(args: argparse.Namespace) -> None:
    """Kill cycles timed from READY until the answers are right (bench/recovery.py)."""
    import recovery

    results = recovery.run(args.cycles, args.library, args.seeded, args.new,
                           args.settle_timeout)
    report = {"command": "python bench/soak.py " + " ".join(sys.argv[1:]),
              **recovery.summary(results)}
    print(json.dumps(report), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS.with_name("recovery.jsonl"), "a") as out:
        out.write(json.dumps({**report, "cycles_each": [c.__dict__ for c in results]}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["burst", "stream", "soak", "kill"])
    parser.add_argument("--count", type=int, default=10_000, help="burst: images at once")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--interval", type=float, default=None, help="seconds between actions")
    parser.add_argument("--library", type=int, default=None, help="images there at start-up")
    parser.add_argument("--cycles", type=int, default=25, help="kill: SIGKILL cycles")
    parser.add_argument("--seeded", type=int, default=0,
                        help="kill: a seeded library of this many images (bench/recovery.py)")
    parser.add_argument("--new", type=int, default=150,
                        help="kill: images added and deleted while down, each cycle")
    parser.add_argument("--model", default="", help="encoder .keras (default: the shipped one)")
    parser.add_argument("--settle-timeout", type=float, default=1800.0)
    parser.add_argument("--steady", action="store_true",
                        help="soak: delete an image for each new one past --library, so that "
                             "memory is compared at one library size")
    args = parser.parse_args()
    defaults = {"burst": (0, 0, 0.0), "stream": (1000, 3, 0.02), "soak": (1000, 15, 0.05),
                "kill": (0, 0, 0.0)}[args.mode]
    args.library = defaults[0] if args.library is None else args.library
    args.minutes = defaults[1] if args.minutes is None else args.minutes
    args.interval = defaults[2] if args.interval is None else args.interval
    if args.mode == "kill" and (args.library or args.seeded):
        recovery_cycles(args)
        return
    row = kill_cycles(args) if args.mode == "kill" else drive(args.mode, args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    row.notes.append(f"commit {commit or '?'}")
    print(HEADER)
    print(row.markdown())
    RESULTS.parent.mkdir(exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text("# Load and soak runs (bench/soak.py)\n\n" + HEADER + "\n")
    with open(RESULTS, "a") as out:
        out.write(row.markdown() + "\n")


if __name__ == "__main__":
    main()
