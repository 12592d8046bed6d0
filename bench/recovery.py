"""Kill cycles of the real service, each timed from READY until its answers are right.

    python bench/soak.py kill --cycles 100 --library 10000
    python bench/soak.py kill --cycles 3 --seeded 1000000

Each cycle, while the service is down: `--new` new images are copied into
the inbox and as many existing ones deleted (so the library keeps its size),
then `lookalike run` starts and is killed (SIGKILL) 0 to 4 s after it has
loaded its encoder, wherever it is then (TensorFlow's import takes 3 to 8 s
here: a kill 3 to 7 s after the start would mostly come before any work);
then it starts again. The moment it says READY=1 (systemd's notify
socket) it is stopped (SIGSTOP) while the results files are read: how many
are missing, how many name a file that is not there. Then it goes on
(SIGCONT), and the window is the seconds until its answers are right:

- `--library N`: N images ingested by the service itself. Right means every
  results file lists the same 12 neighbours as `lookalike run --once` gives
  on a mirror of the inbox (hard links) with a state of its own, run each
  cycle (neighbours at the same distance may come in either order). Below
  `index.exact_below` both search exactly, so that is one right answer.
- `--seeded N`: a library seeded as bench/latency.py does (its results files
  are placeholders, so no file can be compared with a clean run): right
  means the service's check of the rows changed since the last check is
  done (the library's `checked_generation`), each new image's results file
  names 12 images that exist, and no results file that listed a deleted
  image names it still.
Prints one JSON line per cycle and the distribution.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from latency import LOOKALIKE, digit_images, seed

SUFFIX = ".neighbors.json"
TIE = 1e-5  # in squared angular distance (2 - 2 cos)


class ReadySocket:
    """systemd's end of NOTIFY_SOCKET: stops the service (SIGSTOP) the moment READY=1 comes."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.path = path
        self.pid = 0
        self.ready = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self) -> None:
        while not self.done.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in message.splitlines() and self.pid:
                os.kill(self.pid, signal.SIGSTOP)
                self.ready.set()

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        self.sock.close()


def start(root: Path, notify: ReadySocket | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NOTIFY_SOCKET", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
        notify.ready.clear()
    with open(root / "service.log", "ab") as log:
        process = subprocess.Popen([str(LOOKALIKE), "run", "-c", "config.yaml"], cwd=root,
                                   env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=log)
    if notify is not None:
        notify.pid = process.pid
    return process


def write_config(root: Path) -> None:
    (root / "inbox").mkdir(exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(
        {"inbox": "./inbox", "state_dir": "./state", "model": "",
         "watch": {"rescan_interval_s": 0}}))


def neighbours(inbox: Path, image: str) -> list[tuple[float, str]] | None:
    try:
        document = json.loads((inbox / (image + SUFFIX)).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return [(n["distance"], n["path"]) for n in document.get("neighbors", [])]


def close(one: float, other: float) -> bool:
    """Distances equal but for the encoder's float noise: the same bytes encoded in
    another batch differ by about 1e-7 in cosine, which the square root of the angular
    distance makes up to 1e-3 between copies (0 here, 0.0008 there)."""
    return abs(one * one - other * other) <= TIE


def same(mine: list[tuple[float, str]] | None, clean: list[tuple[float, str]] | None) -> bool:
    """The same neighbours, up to ties (`close` distances). Compared nearest first: a
    results file lists them ranked (`core.ranking`), and float noise may swap two
    whose ranks are tied."""
    if mine is None or clean is None or len(mine) != len(clean):
        return False
    mine, clean = sorted(mine), sorted(clean)
    if not all(close(a[0], b[0]) for a, b in zip(mine, clean, strict=True)):
        return False
    # Which of those tied with the last made the list is either's choice: an image that
    # only one list names must be at a distance close to either list's farthest. (Not a
    # boundary both lists are cut at: `close` is not transitive, and the encoder's noise
    # puts one list's 0.560692 and the other's 0.560691 on both sides of any line.)
    lasts = [found[-1][0] for found in (mine, clean) if found]
    named = [{path: d for d, path in found} for found in (mine, clean)]
    only = [d for one, other in (named, named[::-1]) for path, d in one.items()
            if path not in other]
    return all(any(close(d, last) for last in lasts) for d in only)


def wrong_at_ready(inbox: Path, images: list[str]) -> tuple[int, int]:
    """(results files missing, results files naming a file that is not there)."""
    missing = naming_gone = 0
    for image in images:
        found = neighbours(inbox, image)
        if found is None:
            missing += 1
        elif any(not (inbox / path).exists() for _, path in found):
            naming_gone += 1
    return missing, naming_gone


def meta(state: Path) -> dict[str, str]:
    database = sqlite3.connect(f"file:{state / 'library.sqlite'}?mode=ro", uri=True)
    try:
        return dict(database.execute("SELECT key, value FROM meta").fetchall())
    finally:
        database.close()


def listing(state: Path, paths: list[str]) -> list[str]:
    """Paths of live images whose results list any of `paths` (read from the library)."""
    database = sqlite3.connect(f"file:{state / 'library.sqlite'}?mode=ro", uri=True)
    try:
        ids = {row: path for row, path in database.execute(
            f"SELECT id, path FROM images WHERE path IN ({','.join('?' * len(paths))})", paths)}
        found = []
        for path, named in database.execute(
                "SELECT path, named FROM images WHERE named IS NOT NULL AND deleted = 0"):
            if not set(np.frombuffer(named, "<i8").tolist()).isdisjoint(ids):
                found.append(path)
        return found
    finally:
        database.close()


@dataclass
class Cycle:
    n: int
    killed_after_s: float  # after the encoder was loaded
    ready_s: float  # from the second start to READY
    missing_at_ready: int
    naming_gone_at_ready: int
    window_s: float | None  # from READY until right; None: not within the timeout


def run(cycles: int, library: int, seeded: int, new: int, timeout: float) -> list[Cycle]:
    chance = random.Random(28)
    size = seeded or library
    pictures = digit_images(size + (cycles + 1) * new if not seeded else 1797 + cycles * new)
    home = Path(tempfile.mkdtemp(prefix="lookalike-kills-"))
    root, mirror = home / "service", home / "mirror"
    root.mkdir()
    write_config(root)
    inbox = root / "inbox"
    notify = ReadySocket(Path(tempfile.mkdtemp(prefix="lk-")) / "notify")
    try:
        if seeded:
            from lookalike.core.config import DEFAULT_MODEL
            seed(root, seeded, pictures[:1797], Path(DEFAULT_MODEL))
            images = sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*.png"))
            fresh = iter(range(1797, len(pictures)))
        else:
            mirror.mkdir()
            write_config(mirror)
            for n in range(library):
                (inbox / f"{n:07d}.png").write_bytes(pictures[n])
                os.link(inbox / f"{n:07d}.png", mirror / "inbox" / f"{n:07d}.png")
            images = [f"{n:07d}.png" for n in range(library)]
            fresh = iter(range(library, len(pictures)))
            for folder in (root, mirror):
                subprocess.run([str(LOOKALIKE), "run", "--once", "-c", "config.yaml"],
                               cwd=folder, check=True, capture_output=True)
        print(f"{size:,} images ready in {home}", flush=True)
        results = []
        for n in range(cycles):
            results.append(cycle(n, root, mirror if not seeded else None, images, pictures,
                                 fresh, new, chance, notify, timeout))
            print(json.dumps(results[-1].__dict__), flush=True)
        return results
    finally:
        notify.close()
        shutil.rmtree(notify.path.parent, ignore_errors=True)
        if os.environ.get("LOOKALIKE_KEEP") is None:
            shutil.rmtree(home, ignore_errors=True)


def cycle(n: int, root: Path, mirror: Path | None, images: list[str], pictures: list[bytes],
          fresh: object, new: int, chance: random.Random, notify: ReadySocket,
          timeout: float) -> Cycle:
    inbox, state = root / "inbox", root / "state"
    gone = chance.sample(images, new)
    # (Those deleted themselves have no results file left to look at.)
    at_risk = sorted(set(listing(state, gone)) - set(gone)) if mirror is None else []
    for image in gone:
        images.remove(image)
        (inbox / image).unlink()
        if mirror is not None:
            (mirror / "inbox" / image).unlink()
    added = []
    for _ in range(new):
        number = next(fresh)  # type: ignore[call-overload]
        name = f"new/{number:07d}.png"
        (inbox / name).parent.mkdir(exist_ok=True)
        (inbox / name).write_bytes(pictures[number])
        if mirror is not None:
            (mirror / "inbox" / name).parent.mkdir(exist_ok=True)
            os.link(inbox / name, mirror / "inbox" / name)
        added.append(name)
    images += added
    # The clean answer, while the service is started and killed (it is killed anyway).
    clean = None if mirror is None else subprocess.Popen(
        [str(LOOKALIKE), "run", "--once", "-c", "config.yaml"], cwd=mirror,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_after = chance.uniform(0.0, 4.0)
    logged = (root / "service.log").stat().st_size if (root / "service.log").exists() else 0
    process = start(root)
    while b"loaded in" not in (root / "service.log").read_bytes()[logged:]:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with {process.returncode}")
        time.sleep(0.05)
    time.sleep(killed_after)
    process.kill()
    process.wait()
    if clean is not None and clean.wait() != 0:
        raise SystemExit(f"run --once on the mirror failed ({clean.returncode})")
    started = time.monotonic()
    process = start(root, notify)
    try:
        while not notify.ready.wait(0.5):
            if process.poll() is not None:
                raise SystemExit(f"the service exited with {process.returncode}; see "
                                 f"{root / 'service.log'}")
        ready_s = time.monotonic() - started
        missing, naming_gone = wrong_at_ready(inbox, at_risk + added if mirror is None
                                              else images)
        os.kill(process.pid, signal.SIGCONT)
        ready = time.monotonic()
        window = None
        while time.monotonic() - ready < timeout:
            if right(root, mirror, images, added, at_risk):
                window = time.monotonic() - ready
                break
            time.sleep(0.2)
        if window is None and mirror is not None:
            show_wrong(root / "inbox", mirror / "inbox", images)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.kill()  # the next cycle's changes come while it is down
        process.wait()
    return Cycle(n, round(killed_after, 2), round(ready_s, 2), missing, naming_gone,
                 None if window is None else round(window, 2))


def show_wrong(inbox: Path, clean: Path, images: list[str], most: int = 5) -> None:
    """Print (to stderr) the first images whose results are not the clean run's: what a
    cycle that never came right left behind, before the folder goes."""
    wrong = [image for image in images
             if not same(neighbours(inbox, image), neighbours(clean, image))]
    print(f"{len(wrong)} results files not right:", file=sys.stderr)
    for image in wrong[:most]:
        print(f"  {image}\n    service: {neighbours(inbox, image)}\n"
              f"    clean:   {neighbours(clean, image)}", file=sys.stderr)


def right(root: Path, mirror: Path | None, images: list[str], added: list[str],
          at_risk: list[str]) -> bool:
    inbox = root / "inbox"
    if mirror is not None:
        return all(same(neighbours(inbox, image), neighbours(mirror / "inbox", image))
                   for image in images)
    facts = meta(root / "state")
    if facts.get("checked_generation") != facts.get("generation"):
        return False
    for image in added:
        found = neighbours(inbox, image)
        if found is None or len(found) != 12:
            return False
    return wrong_at_ready(inbox, at_risk + added) == (0, 0)


def summary(results: list[Cycle]) -> dict[str, object]:
    windows = [c.window_s for c in results if c.window_s is not None]
    ready = [c.ready_s for c in results]
    report: dict[str, object] = {
        "cycles": len(results),
        "missing_at_ready": sum(c.missing_at_ready for c in results),
        "naming_gone_at_ready": sum(c.naming_gone_at_ready for c in results),
        "not_right_within_timeout": len(results) - len(windows),
        "start_to_ready_s_p50": round(float(np.median(ready)), 1)}
    if windows:
        for q in (50, 90, 99, 100):
            report[f"window_s_p{q}"] = round(float(np.percentile(windows, q)), 2)
    return report
