#!/usr/bin/env python3
"""Bulk ingest: the `lookalike run --once` command against the seed article's pipeline.

    python bench/ingest.py SOURCE_DIR [--count 12480 100000] [--large 224] [--mixed N]
                                      [--json FILE]

Makes corpora of distinct images from the images under SOURCE_DIR (e.g. the
corpus of scripts/build_corpus.py; a source used again is cropped a little
differently, so no two files share their bytes, which lookalike would read
once): (a) for each `--count`, that many 256x256 JPEGs, as the article's
KaoKore faces; (b) `--large` 4096x4096 JPEGs (16.8 megapixels, upscaled);
(c) `--mixed` images (the first `--count` unless given) of 256 to 1024
pixels, a third each PNG, WebP and JPEG. A count of 0 leaves a corpus out.
For each:
- article: in this process, per image tf.io.read_file -> tf.image.decode_jpeg
  (decode_image for the mixed folder) -> tf.image.resize to 56x56, stack,
  encoder.predict, Annoy build (10 trees): it writes nothing;
- lookalike: the command a user runs, `lookalike run --once`, on a fresh
  state (scan, decode in processes with JPEG draft mode, encode in batches,
  SQLite, index, a results file per image), less the wall time of the same
  command on a folder of one image (start-up and loading the encoder; the
  median of three such runs); its peak resident memory, read from /proc as
  it runs: its own peak, or that of its processes together (its reading
  processes with it, each 0.1 s), whichever is more;
- the limits behind it: decoding alone (lookalike's decoder, in its two
  threads), encoding alone (batches of 256) and writing the results files
  alone (as lookalike writes them, one sync per batch), in this process.
Each pipeline runs `--repeats` times (3), alternating, after a sync of the
disk; the fastest run of each counts, and the ratio of each round is shown
too (none where the command on the corpus took no longer than the start-up
it is less: its images cost less than a start-up's variation). Nothing is
deleted until the end: a run's results files and state are moved aside
instead. On ext4 without a journal a new file skips every inode
freed in the last minute or more (the kernel's `recently_deleted`): after a
run's files were deleted, the next run's file creation cost up to 700 us
each instead of about 20 us, which only lookalike pays, since the article
writes nothing.
Prints images per second for each and the ratio, and the CPU time per image
(all threads) of each pipeline's fastest run with the cores it kept busy:
whether lookalike is faster by doing less or by using both cores. --json
writes the rows.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lookalike import daemon  # noqa: F401  # isort: skip - first: the command sets up OpenBLAS
import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_corpus(sources: list[Path], out: Path, count: int, size: tuple[int, int] | None,
                formats: tuple[str, ...] = ("jpg",)) -> None:
    """`count` distinct images from `sources`; size None: 256 to 1024 pixels a side, at
    random. Each pass over the sources after the first crops them a few pixels further in."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(count):
        side = size or (int(rng.integers(256, 1025)), int(rng.integers(256, 1025)))
        kind = formats[n % len(formats)]
        again = n // len(sources)  # how many times this source was used before
        with Image.open(sources[n % len(sources)]) as image:
            picture = image.convert("RGB")
            if again:
                width, height = picture.size
                left, top = again % 8 + 1, again // 8 % 8 + 1
                picture = picture.crop((left, top, max(left + 1, width - 1),
                                        max(top + 1, height - 1)))
            picture.resize(side, Image.Resampling.BILINEAR).save(out / f"{n:06d}.{kind}",
                                                                 quality=90)


class Clock:
    """Wall and CPU seconds (all of this process's threads) of one run."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def article(folder: Path, encoder: object) -> tuple[float, float]:
    """Wall and CPU seconds of the article's pipeline on `folder`."""
    import tensorflow as tf
    from annoy import AnnoyIndex

    clock = Clock()
    tensors = []
    for path in sorted(p for p in folder.iterdir() if not p.name.endswith(".json")):
        data = tf.io.read_file(str(path))
        if path.suffix == ".jpg":
            pixels = tf.image.decode_jpeg(data, channels=3)
        else:  # the article reads JPEG only; decode_image is its nearest kin
            pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
        tensors.append(tf.image.resize(pixels, (56, 56)))
    latents = encoder.model.predict(tf.stack(tensors), verbose=0)  # type: ignore[attr-defined]
    index = AnnoyIndex(latents.shape[1], "angular")
    for item, vector in enumerate(latents):
        index.add_item(item, vector)
    index.build(10)
    return clock.stop()


def limits(folder: Path, encoder: object, spent: Path) -> dict[str, float]:
    """Images per second of decoding alone, encoding alone and results writing alone."""
    from concurrent.futures import ThreadPoolExecutor

    from lookalike.core import images, results

    files = sorted(p for p in folder.iterdir() if not p.name.endswith(".json"))
    shape = encoder.shape  # type: ignore[attr-defined]
    decode = {}
    for threads in (1, 2):  # Pillow holds the GIL for much of a small image's decoding
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            pixels = list(pool.map(lambda p: images.load(p, shape).pixels, files))
        decode[threads] = time.perf_counter() - started
    batch = np.stack(pixels)
    started = time.perf_counter()
    for start in range(0, len(batch), 256):
        encoder.encode(batch[start:start + 256])  # type: ignore[attr-defined]
    encode = time.perf_counter() - started
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        found = [results.Found(f"{n:06d}.jpg", 0.5, False) for n in range(12)]
        documents = [(folder / f"{p.name}.neighbors.json",
                      results.ok(p.name, "m", "angular", found, 1, len(files), 0)) for p in files]
        started = time.perf_counter()
        for start in range(0, len(documents), 1024):
            results.write_many([(target, results.render(document))
                                for target, document in documents[start:start + 1024]],
                               results.Scratch(Path(scratch)))
        write = time.perf_counter() - started
    kept = Path(tempfile.mkdtemp(dir=spent))
    for target, _ in documents:
        target.rename(kept / target.name)
    return {"decode": len(files) / decode[2], "decode_one": len(files) / decode[1],
            "encode": len(files) / encode,
            "write": len(files) / write}


LOOKALIKE = Path(sys.executable).with_name("lookalike")


def command(folder: Path, spent: Path) -> tuple[float, float, float]:
    """Wall and CPU seconds and peak resident MB of `lookalike run --once` on `folder`,
    from a fresh state, once it wrote every image's results file with its 12
    neighbours. Its results files and state then go to a new folder in `spent`: moved,
    not deleted (see the top)."""
    state = Path(tempfile.mkdtemp(dir=spent))
    count = sum(1 for image in folder.iterdir() if not image.name.endswith(".json"))
    config_file = state / "config.yaml"
    config_file.write_text(f"inbox: {folder}\nquery_dir: null\nstate_dir: {state}/state\n")
    with open(state / "log", "w+b") as log:
        started = time.perf_counter()
        process = subprocess.Popen([str(LOOKALIKE), "run", "--once", "-c", str(config_file)],
                                   stdout=log, stderr=log)
        peak = 0.0
        while True:  # this child's own CPU time (wait4), and its peak memory as it runs
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            # The command's own peak (VmHWM: between samples too), or all its processes'
            # resident memory together, sampled: whichever is more.
            peak = max(peak, status_mb(process.pid, "VmHWM"), resident_mb(process.pid))
            time.sleep(0.1)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            log.seek(0)
            raise SystemExit(f"lookalike run --once failed ({process.returncode}):\n"
                             f"{log.read().decode(errors='replace')[-3000:]}")
    answered = 0  # a run that skipped or put off any image is no run to time
    for results in folder.glob("*.neighbors.json"):
        document = json.loads(results.read_text())
        answered += document["status"] == "ok" and len(document["neighbors"]) == min(
            12, count - 1)
        results.rename(state / results.name)
    if answered != count:
        raise SystemExit(f"lookalike run --once answered {answered} of {count} images in full")
    return wall, usage.ru_utime + usage.ru_stime, peak


def resident_mb(pid: int) -> float:
    """The resident memory now (VmRSS) of a process and of its children (lookalike's
    reading processes), in MB: each child's shared libraries counted again,
    so a little more than the memory they take together."""
    try:
        children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                    for child in (task / "children").read_text().split()]
    except OSError:
        children = []
    return sum(status_mb(one, "VmRSS") for one in [pid, *children])


def status_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM) in MB, or 0 if it is gone.

    Not getrusage's ru_maxrss for the peak: that counts the child from its fork,
    when it still shares this process's memory (the article's decoded images).
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


STARTS = 3  # runs on one image, for the start-up that each run less it subtracts


def lookalike(folder: Path, one: Path, spent: Path) -> tuple[float, float, float]:
    """`command` on `folder`, less its wall and CPU seconds on `one`, a folder of one image:
    the median of STARTS such runs, since a start-up moves by a second or more on a
    shared machine, which is most of what 224 large photos take after it."""
    starts = sorted(command(one, spent)[:2] for _ in range(STARTS))
    start_wall, start_cpu = starts[STARTS // 2]
    wall, cpu, peak = command(folder, spent)
    return wall - start_wall, cpu - start_cpu, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--count", type=int, nargs="+", default=[12_480],
                        help="sizes of the 256x256 JPEG corpora (the first: of the mixed one)")
    parser.add_argument("--large", type=int, default=224, help="16.8 MP JPEGs (0: none)")
    parser.add_argument("--mixed", type=int, default=None,
                        help="mixed PNG, WebP and JPEG images (0: none; default: the first count)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    from lookalike.core.config import DEFAULT_MODEL
    from lookalike.core.encoder import load as load_encoder

    encoder = load_encoder(DEFAULT_MODEL)
    gc.collect()
    gc.freeze()
    encoder.warm()  # traced once, outside the timings
    sources = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    corpora: list[tuple[str, int, tuple[int, int] | None, tuple[str, ...]]] = [
        *(("256x256 JPEG", count, (256, 256), ("jpg",)) for count in args.count),
        ("16.8 MP JPEG", args.large, (4096, 4096), ("jpg",)),
        ("mixed PNG, WebP, JPEG", args.count[0] if args.mixed is None else args.mixed, None,
         ("png", "webp", "jpg"))]
    corpora = [corpus for corpus in corpora if corpus[1]]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as home:
        spent = Path(home) / "spent"
        spent.mkdir()
        one = Path(home) / "one"
        make_corpus(sources, one, 1, (256, 256))
        for name, count, size, formats in corpora:
            folder = Path(home) / f"corpus{len(rows)}"
            make_corpus(sources, folder, count, size, formats)
            theirs, ours = (np.inf, np.inf), (np.inf, np.inf, 0.0)  # the fastest of each
            rounds = []
            for _ in range(args.repeats):  # alternating, so both meet the same moments
                os.sync()  # the corpus (or the last run's results) on disk, not in flight
                article_run = article(folder, encoder)
                os.sync()
                lookalike_run = lookalike(folder, one, spent)
                theirs = min(theirs, article_run)
                if lookalike_run[0] <= 0:  # done sooner than the start-up subtracted
                    rounds.append(None)
                    continue
                rounds.append(round(article_run[0] / lookalike_run[0], 2))
                ours = min(ours, lookalike_run)
            os.sync()
            row = {"corpus": name, "images": count, "article": round(count / theirs[0]),
                   "lookalike": round(count / ours[0]), "ratio": round(theirs[0] / ours[0], 2),
                   "rounds": rounds, "peak_mb": round(ours[2]),
                   # CPU per image and cores kept busy: whether a ratio comes from doing
                   # less work or from doing it on both cores
                   "article_cpu_ms": round(theirs[1] / count * 1e3, 2),
                   "article_cores": round(theirs[1] / theirs[0], 2),
                   "lookalike_cpu_ms": round(ours[1] / count * 1e3, 2),
                   "lookalike_cores": round(ours[1] / ours[0], 2),
                   **{key: round(value) for key, value in limits(folder, encoder, spent).items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| corpus | images | article images/s | lookalike images/s | lookalike ÷ article "
          "(each round) | lookalike peak MB | article CPU ms per image (cores) "
          "| lookalike CPU ms per image (cores) "
          "| decode alone | encode alone | results writing alone |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['corpus']} | {r['images']} | {r['article']} | {r['lookalike']} | "
              f"{r['ratio']:.2f} ({', '.join(map(shown, r['rounds']))}) | {r['peak_mb']} | "
              f"{r['article_cpu_ms']} ({r['article_cores']}) | "
              f"{r['lookalike_cpu_ms']} ({r['lookalike_cores']}) | "
              f"{r['decode']} | {r['encode']} | {r['write']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def shown(ratio: float | None) -> str:
    """A round's ratio; none when the command on the corpus took no longer than the
    start-up subtracted (its images cost less than a start-up's variation)."""
    return "no cost beyond the start-up" if ratio is None else str(ratio)


if __name__ == "__main__":
    main()
