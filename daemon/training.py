"""`lookalike train`: read a folder of images and train an encoder on them."""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lookalike.core import card, images, scan
from lookalike.core.config import DEFAULT_MODEL
from lookalike.core.errors import LookalikeError, UnreadableImage
from lookalike.daemon import tensorflow_log

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        raise LookalikeError(f"{args.data}: no such folder")
    if args.out.suffix != ".keras":
        raise LookalikeError(f"{args.out}: the encoder file must end in .keras")
    if args.size % 8:
        raise LookalikeError(f"--size {args.size}: must be a multiple of 8")
    if next(iter(scan.walk(args.data)), None) is None:  # said before TensorFlow loads
        raise LookalikeError(f"{args.data}: 0 usable images; training needs at least 10")
    tensorflow_log.quiet()
    from lookalike.core import training  # TensorFlow loads here

    _, recipe = training.recipe_of(args.preset)
    shape = images.Shape(args.size, args.color or recipe.color)
    start = starting_point(args, shape)
    _, pixels, fingerprint = read_folder(args.data, shape)
    if len(pixels) < 10:
        raise LookalikeError(f"{args.data}: {len(pixels)} usable images; "
                             "training needs at least 10")

    epochs = args.epochs or training.EPOCHS["scratch" if start is None else "going on"]
    log.info("training preset %s on %d images (%dx%d %s, latent %d), at most %d epochs, "
             "from %s", args.preset, len(pixels), shape.size, shape.size, shape.color,
             args.latent, epochs, "scratch" if start is None else start)
    outcome = training.train(pixels, shape, preset=args.preset, latent_dim=args.latent,
                             epochs=epochs, batch_size=args.batch_size,
                             patience=args.patience, seed=args.seed,
                             verbose=1 if sys.stderr.isatty() else 2, start=start)
    identity = training.save(outcome, args.out, {"data": args.data.name,
                                                 "data_fingerprint": fingerprint})
    made = outcome.card
    print(f"{args.out}: {made['epochs_run']} epochs in {made['seconds']} s, held-out loss "
          f"{made['held_out_loss']} (train {made['train_loss']}), model {identity[:19]}…")
    return 0


def starting_point(args: argparse.Namespace, shape: images.Shape) -> Path | None:
    """The encoder file whose training state `train` goes on from, or None for scratch:
    `--start`, else the shipped encoder when it can be (`shipped_start`)."""
    if args.start == "scratch":
        return None
    if args.start is None:
        start = shipped_start(args.preset, shape, args.latent)
        if start is None:
            log.info("training from scratch: the shipped encoder has another recipe, image "
                     "size or latent size")
        return start
    start = Path(args.start)
    if not start.is_file():
        raise LookalikeError(f"--start {start}: no such file")
    if not card.state_path(start).is_file():
        raise LookalikeError(f"--start {start}: no training state beside it "
                             f"({card.state_path(start).name})")
    if not card.made_alike(start, args.preset, shape.size, shape.color, args.latent):
        raise LookalikeError(f"--start {start}: made with another recipe, image size or "
                             "latent size than this training asks for")
    return start


def shipped_start(preset: str, shape: images.Shape, latent_dim: int) -> Path | None:
    """The shipped encoder, when a training with these settings can go on from its state.

    Fine-tuning it to a user's images keeps what it learnt from a broad mix
    of pictures, which a few thousand of one kind cannot teach from scratch.
    """
    if (card.made_alike(DEFAULT_MODEL, preset, shape.size, shape.color, latent_dim)
            and card.state_path(DEFAULT_MODEL).is_file()):
        return DEFAULT_MODEL
    return None


def read_folder(root: Path, shape: images.Shape) -> tuple[list[str], np.ndarray, str]:
    """Every usable image under `root`: relative paths, one uint8 array, a fingerprint."""
    candidates = list(scan.walk(root))
    log.info("reading %d images from %s", len(candidates), root)

    def load(candidate: scan.Candidate) -> tuple[str, images.Decoded | None]:
        try:
            return candidate.path, images.load(root / candidate.path, shape)
        except UnreadableImage as problem:
            log.warning("%s: skipped: %s", candidate.path, problem.message)
            return candidate.path, None

    with ThreadPoolExecutor(2) as pool:
        loaded = [(path, decoded) for path, decoded in pool.map(load, candidates)
                  if decoded is not None]
    digest = hashlib.sha256()
    for path, decoded in loaded:  # walk order is sorted: the fingerprint is stable
        digest.update(f"{path}\0{decoded.sha256}\n".encode())
    if not loaded:
        return [], np.zeros((0, shape.size, shape.size, shape.channels), np.uint8), ""
    return ([path for path, _ in loaded], np.stack([decoded.pixels for _, decoded in loaded]),
            "sha256:" + digest.hexdigest())
