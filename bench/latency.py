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
  size is the scaling figure), and the service's CPU seconds (all its
  threads) per image meanwhile: the work an image costs, however parallel;
- memory: resident memory of the service once idle after the burst (its
  background rebuild and results check done);
- restart: SIGTERM, start again on the full library: seconds to READY and
  the idle resident memory after it.
With `--seeded N` the library and index start with N images (hard links,
see `seed`), so 10^5 and 10^6 take minutes, not hours: the first start is
then the start-up with N images in the library, and there is no restart.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import hashlib
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


def wait_for(path: Path, timeout: float = 60.0, poll: float = 0.0005) -> float:
    started = time.perf_counter()
    while not path.exists():
        if time.perf_counter() - started > timeout:
            raise TimeoutError(path)
        time.sleep(poll)
    return time.perf_counter()


def seed(root: Path, count: int, pictures: list[bytes], model: Path) -> None:
    """A state as if the service had ingested `count` images: fast, for 10^5 and 10^6.

    The inbox gets `count` hard links to the distinct pictures (spread over
    folders of 1,000), each with a results file (a hard link too); the
    library gets a row per link, its vector the picture's own (from the
    encoder) plus a little noise and its near-duplicate thumbnail, marked
    answered with its true candidates (`seeded_neighbors`) as the service
    would have; the index is built as
    the service builds it, the last results check marked done, and the results
    noted as made by the service's rules (`answers.rules`).
    """
    from lookalike.core import card, copies, index, ranking, results
    from lookalike.core import config as configuration
    from lookalike.core.encoder import load as load_encoder
    from lookalike.core.store import Answer, Entry, Library
    from lookalike.daemon.answers import MADE_WITH, rules

    sources, documents = root / "sources", root / "documents"
    sources.mkdir()
    documents.mkdir()
    encoder = load_encoder(model)
    shape = encoder.shape
    pixels = np.stack([models_pixels(data, shape) for data in pictures])
    latents = encoder.encode(pixels)
    thumbs = [copies.thumbnail(one) for one in pixels]  # as ingest keeps them, for the marks
    rng = np.random.default_rng(0)
    noise = 0.05 * float(latents.std())
    config = configuration.load(root / "config.yaml")
    model_id = card.model_id(model)
    facts = []
    for n, data in enumerate(pictures):
        (sources / f"{n}.png").write_bytes(data)
        document = results.ok(f"{n}.png", model_id, "angular", [], 0, count, 0)
        (documents / f"{n}.json").write_text(results.render(document))
        status = (sources / f"{n}.png").stat()
        facts.append((status.st_size, status.st_mtime_ns, hashlib.sha256(data).hexdigest(),
                      results.fingerprint(document)))
    with Library(config.state_dir / "library.sqlite") as library:
        for start in range(0, count, 50_000):
            entries = []
            for n in range(start, min(count, start + 50_000)):
                picture = n % len(pictures)
                relative = f"s{n // 1000:04d}/{n:07d}.png"
                (config.inbox / relative).parent.mkdir(exist_ok=True)
                os.link(sources / f"{picture}.png", config.inbox / relative)
                os.link(documents / f"{picture}.json",
                        results.results_path(config.inbox / relative))
                size, mtime_ns, sha256, _ = facts[picture]
                vector = latents[picture] + noise * rng.standard_normal(latents.shape[1])
                entries.append(Entry(relative, size, mtime_ns, sha256, model_id, vector,
                                     thumb=thumbs[picture]))
            library.apply(entries)
            print(f"seeded {min(count, start + 50_000)}/{count}", flush=True)
        records = library.records()
        picture_of = {record.id: int(path[6:13]) % len(pictures)
                      for path, record in records.items()}
        ids, vectors = library.vectors()
        wide = ranking.candidates(config.neighbors)
        near = seeded_neighbors(ids, vectors, np.array([picture_of[row] for row in ids]),
                                wide)
        library.mark_answered(
            Answer(row, facts[picture_of[row]][3], [n.row_id for n in found],
                   found[-1].distance if len(found) == wide else None)
            for row, found in zip(ids.tolist(), near, strict=True))
        index.build(library, config.state_dir, metric="angular", trees=config.index.trees,
                    model_id=model_id, exact_below=config.index.exact_below,
                    dims=config.index.dims)  # the index the service itself would build
        library.set_meta("checked_generation", str(library.generation))
        # (Else the service's start queues every results file to be checked, as after a
        # change of `duplicates.strictness`.)
        library.set_meta(MADE_WITH, rules(config.strictness))


def seeded_neighbors(ids: np.ndarray, vectors: np.ndarray, pictures: np.ndarray,
                     k: int) -> list[list]:
    """The k nearest rows to each row, as its results file would list them.

    Once a picture has more than k copies, its copies' nearest are each
    other (the noise is small beside the distance between two digits), so
    they are searched among themselves: 10^6 rows take 40 s, not hours. Of
    the true 12 nearest of 300 rows searched among all, this finds all at
    10^4 and 10^5, 99.7% at 10^6.
    """
    from lookalike.core.exact import ExactScan

    everything = None  # (only for a library with few copies of each picture)
    near: list[list] = [[] for _ in ids]
    for picture in np.unique(pictures):
        copies = np.flatnonzero(pictures == picture)
        if len(copies) > k:
            among = ExactScan(ids[copies], vectors[copies], "angular")
        else:
            if everything is None:
                everything = ExactScan(ids, vectors, "angular")
            among = everything
        for at, found in zip(copies, among.nearest(vectors[copies], k, list(ids[copies])),
                             strict=True):
            near[at] = found
    return near


def models_pixels(data: bytes, shape: object) -> np.ndarray:
    from lookalike.core import images
    return images.decode(data, shape)  # type: ignore[arg-type]


def cpu_s(pid: int) -> float:
    """User and system CPU seconds a process used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout: float = 1800.0) -> None:
    """Wait until a process used under 2% of a core over two seconds."""
    started, last = time.perf_counter(), cpu_s(pid)
    while time.perf_counter() - started < timeout:
        time.sleep(2.0)
        now = cpu_s(pid)
        if now - last < 0.04:
            return
        last = now
    raise TimeoutError(f"process {pid} never went idle")


def rss_mb(pid: int, kind: str = "VmRSS") -> float:
    """Resident memory of a process, from /proc: all of it (VmRSS), or RssAnon / RssFile.

    RssFile is mapped files (the index): the kernel may drop those pages
    under memory pressure and read them again; RssAnon it cannot.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {kind} for {pid}")


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
        LOG.parent.mkdir(exist_ok=True)  # (git keeps no bench/results: a new clone has none)
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
    parser.add_argument("--library", type=int, default=1000,
                        help="images the service ingests from scratch before the figures")
    parser.add_argument("--seeded", type=int, default=0,
                        help="images already in the library and the index (hard links)")
    parser.add_argument("--drops", type=int, default=100)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    base = max(1797, args.library)  # the first 1,797 are the distinct digits, for seeding
    pictures = digit_images(base + args.drops + args.burst)
    with tempfile.TemporaryDirectory() as home:
        root = Path(home)
        inbox, outside = root / "inbox", root / "outside"
        inbox.mkdir()
        outside.mkdir()
        for n, data in enumerate(pictures[:args.library]):
            (inbox / f"{n:07d}.png").write_bytes(data)
        # A seeded run rebuilds no index in the background: its results check would
        # redo every placeholder results file.
        (root / "config.yaml").write_text(yaml.safe_dump({
            "inbox": "./inbox", "state_dir": "./state", "model": args.model,
            "watch": {"settle_s": 2.0, "rescan_interval_s": 0},
            "index": {"rebuild_interval_s": 86400 if args.seeded else 60}}))
        if args.seeded:
            from lookalike.core.config import DEFAULT_MODEL
            seed(root, args.seeded, pictures[:1797], Path(args.model or DEFAULT_MODEL))
        service = Service(root)
        try:
            report = {"library": args.library, "seeded": args.seeded,
                      "start_to_ready_s": round(service.ready_s, 1)}
            latencies = []
            dropped = base + args.drops
            for n in range(base, dropped):
                name = f"{n:07d}.png"
                at = drop(pictures[n], name, outside, inbox)
                latencies.append(wait_for(inbox / (name + ".neighbors.json")) - at)
            ms = np.array(latencies) * 1000
            report.update({f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)})
            names = [f"{n:07d}.png" for n in range(dropped, dropped + args.burst)]
            started, cpu_before = time.perf_counter(), cpu_s(service.process.pid)
            for name, data in zip(names, pictures[dropped:dropped + args.burst], strict=True):
                drop(data, name, outside, inbox)
            for name in names:
                # polled coarsely: a busy poll would take CPU from the service
                finished = wait_for(inbox / (name + ".neighbors.json"), timeout=3600, poll=0.01)
            report["burst_per_s"] = round(args.burst / (finished - started))
            # CPU of every thread of the service: what the burst costs whatever runs in parallel
            report["burst_cpu_ms"] = round(
                (cpu_s(service.process.pid) - cpu_before) * 1000 / args.burst, 2)
            wait_idle(service.process.pid)  # after the rebuild and the results check
            report["idle_rss_mb"] = round(rss_mb(service.process.pid))
            report["idle_anon_mb"] = round(rss_mb(service.process.pid, "RssAnon"))
            if not args.seeded:  # (seeded results files are placeholders: all would be redone)
                service.stop()
                service = Service(root)  # a restart with the whole library in place
                report["restart_to_ready_s"] = round(service.ready_s, 1)
                wait_idle(service.process.pid)
                report["restarted_idle_rss_mb"] = round(rss_mb(service.process.pid))
            print(json.dumps(report))
        finally:
            service.stop()


if __name__ == "__main__":
    main()
