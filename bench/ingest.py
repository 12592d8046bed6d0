#!/usr/bin/env python3
"""Bulk ingest: lookalike against the seed article's pipeline, same images, encoder, run.

    python bench/ingest.py SOURCE_DIR [--count 2000] [--large 40]

Makes two corpora from the images under SOURCE_DIR (e.g. the corpus of
scripts/build_corpus.py): (a) `--count` 256x256 JPEGs, as the article's
KaoKore faces; (b) `--large` 4000x3000 JPEGs (12 megapixels, upscaled).
For each, in this one process and with the same default encoder:
- article: per image tf.io.read_file -> tf.image.decode_jpeg -> tf.image.resize
  to 56x56, stack, encoder.predict, Annoy build (10 trees): it writes nothing;
- lookalike: the `run --once` pipeline on a fresh state (scan, decode in
  threads with JPEG draft mode, encode in batches, SQLite, Annoy, a results
  file per image).
Prints images per second for each and the ratio.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_corpus(sources: list[Path], out: Path, count: int, size: tuple[int, int]) -> None:
    out.mkdir(parents=True)
    for n in range(count):
        with Image.open(sources[n % len(sources)]) as image:
            image.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(
                out / f"{n:06d}.jpg", quality=90)


def article(folder: Path, encoder: object) -> float:
    import tensorflow as tf
    from annoy import AnnoyIndex

    started = time.perf_counter()
    tensors = []
    for path in sorted(folder.glob("*.jpg")):
        data = tf.io.read_file(str(path))
        tensors.append(tf.image.resize(tf.image.decode_jpeg(data, channels=3), (56, 56)))
    latents = encoder.model.predict(tf.stack(tensors), verbose=0)  # type: ignore[attr-defined]
    index = AnnoyIndex(latents.shape[1], "angular")
    for item, vector in enumerate(latents):
        index.add_item(item, vector)
    index.build(10)
    return time.perf_counter() - started


def lookalike(folder: Path, encoder: object) -> float:
    from lookalike.core import config as configuration
    from lookalike.core.store import Library
    from lookalike.daemon.worker import Tally, Worker

    with tempfile.TemporaryDirectory() as state:
        config_file = Path(state) / "config.yaml"
        config_file.write_text(f"inbox: {folder}\nstate_dir: {state}/state\n")
        config = configuration.load(config_file)
        started = time.perf_counter()
        with Library(config.state_dir / "library.sqlite") as library:
            worker = Worker(config, library, encoder)  # type: ignore[arg-type]
            worker.take_scratch()
            tally = Tally()
            worker.reconcile(tally)
            worker.answer_library(worker.searcher(worker.rebuild_if_stale()), tally)
            worker.close()
        elapsed = time.perf_counter() - started
    for results in folder.glob("*.neighbors.json"):
        results.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--large", type=int, default=40)
    args = parser.parse_args()
    from lookalike.core import model
    from lookalike.core.config import DEFAULT_MODEL

    encoder = model.load(DEFAULT_MODEL)
    encoder.encode(np.zeros((1, 56, 56, 3), np.uint8))  # trace once, outside the timings
    sources = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    rows = []
    with tempfile.TemporaryDirectory() as home:
        for name, count, size in (("256x256 JPEG", args.count, (256, 256)),
                                  ("12 MP JPEG", args.large, (4000, 3000))):
            folder = Path(home) / name.split()[0]
            make_corpus(sources, folder, count, size)
            theirs = article(folder, encoder)
            ours = lookalike(folder, encoder)
            rows.append((name, count, count / theirs, count / ours, theirs / ours))
            print(f"{name}: article {count / theirs:.0f}/s, lookalike {count / ours:.0f}/s",
                  flush=True)
    print("\n| corpus | images | article images/s | lookalike images/s | lookalike ÷ article |")
    print("| --- | --- | --- | --- | --- |")
    for name, count, theirs, ours, ratio in rows:
        print(f"| {name} | {count} | {theirs:.0f} | {ours:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
