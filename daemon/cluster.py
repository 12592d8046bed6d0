"""What `lookalike import` runs on a Ray cluster: listing, reading and encoding images.

Every step uses lookalike's own code, so that each decision is the
service's: `scan.survey` says which files are images, `reading.read` reads,
hashes and decodes them (links out of the inbox, the pixel limit, EXIF
orientation, the error codes), and the encoder is the configured one. A
node reads files and the encoder by their paths: every node must see them
at the same paths as this machine.

- `survey`: Ray tasks, each listing some parts of the folders to import;
- `rows`: a Ray Data pipeline from the files to read to library rows:
  reading and decoding in tasks, encoding in an actor pool whose actors
  load the encoder once each. Its rows stream back to this process, which
  writes them (`daemon.importing`).

Ray does again the work of a worker process that died: a task is retried
(up to 3 times, Ray's default `max_retries`, which the listing tasks state
as `RETRIES`), an encoder actor restarted and its batch retried (Ray Data's
defaults for an actor pool: `max_restarts=-1`, `max_task_retries=-1`). So a
killed worker costs time, not rows; `daemon.importing` writes a row that
comes again only once.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data  # (first: it sets up its logging as it loads)

from lookalike.core import scan
from lookalike.core.copies import THUMB_SIDE
from lookalike.core.errors import LookalikeError
from lookalike.core.images import Shape
from lookalike.daemon import tensorflow_log
from lookalike.daemon.logs import LiveLine
from lookalike.daemon.reading import read

BATCH = 256  # images a reading task decodes, and an actor encodes, at a time
# What an encoder actor holds, TensorFlow and the encoder (850 MB measured), reserved so
# that a node runs no more of them than its memory holds. As a resource that the reading
# tasks do not ask for, it also keeps Ray Data from fusing the reading into the actors,
# which would then decode as well, one batch after another.
ENCODER_MEMORY = 1 << 30
RETRIES = 3  # attempts after the first at a task whose worker process died
# A part of the folders to import: a folder (relative to the inbox, '' for the inbox
# itself) and whether below it too, or only its own files.
Part = tuple[str, bool]
Batch = dict[str, np.ndarray]


def connect(address: str | None, verbose: bool) -> bool:
    """Join the Ray cluster at `address`, or start one on this machine's cores; return
    whether Ray Data draws its progress bars (on a terminal).

    Quietly, unless `verbose`: no dashboard, the workers' output kept in
    Ray's log files, Ray's Python log lines at errors only (its warnings are
    about its own choices), its native ones in the debug log
    (`tensorflow_log`).
    """
    if address is not None:
        reachable(address)
    tensorflow_log.quiet()
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.INFO if verbose else logging.ERROR)
    bars = sys.stdout.isatty() and LiveLine.available()  # (Ray Data asks the first)
    ray.data.DataContext.get_current().enable_progress_bars = bars
    return bars


def reachable(address: str, timeout_s: float = 10.0) -> None:
    """Raise LookalikeError unless the head node at `address` (host:port) answers: Ray
    itself would try to connect to a wrong address for ever."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # ("auto", "ray://..."): Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise LookalikeError(f"cannot reach the Ray cluster at {address}: "
                             f"{error.strerror or error}") from None


def cpus() -> int:
    """The cluster's CPUs."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def survey(inbox: Path, exclude: tuple[str, ...], parts: Sequence[Part]) -> list[scan.Candidate]:
    """The candidate images of `parts`, listed by Ray tasks (a few parts each)."""
    tasks = min(len(parts), 4 * cpus())
    listing = ray.remote(max_retries=RETRIES)(survey_parts)
    found = ray.get([listing.remote(str(inbox), exclude, parts[n::tasks]) for n in range(tasks)])
    return [scan.Candidate(*row) for rows in found for row in rows]


def survey_parts(inbox: str, exclude: tuple[str, ...],
                 parts: Sequence[Part]) -> list[tuple[str, int, int]]:
    """The candidate images of some parts, as (path, size, mtime_ns)."""
    return [(c.path, c.size, c.mtime_ns) for under, deep in parts
            for c in scan.survey(Path(inbox), exclude, under, deep).candidates]


def rows(inbox: Path, candidates: Sequence[scan.Candidate], shape: Shape, model: Path,
         model_id: str) -> Iterator[Batch]:
    """Library rows of `candidates`, a batch at a time, in the order they are done.

    Each batch holds the columns of `read_batch`, less the pixels, with
    `latent` ((n, d) float32, zeros for an unusable file) and `model_id`.
    """
    items = [{"path": c.path, "size": c.size, "mtime_ns": c.mtime_ns} for c in candidates]
    encoders = max(1, cpus() // 2)  # an actor encodes about as fast as a task decodes
    dataset = ray.data.from_items(
        items, override_num_blocks=max(1, -(-len(items) // BATCH))
    ).map_batches(
        functools.partial(read_batch, inbox=str(inbox), shape=shape), batch_size=BATCH,
        batch_format="numpy", num_cpus=1,
    ).map_batches(
        Encoding, fn_constructor_kwargs={"model": str(model), "shape": shape,
                                         "model_id": model_id},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=encoders),
        batch_size=BATCH, batch_format="numpy", num_cpus=1, memory=ENCODER_MEMORY)
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy")


def read_batch(batch: Batch, inbox: str, shape: Shape) -> Batch:
    """Read, hash and decode a batch of files (`reading.read`): their columns, with
    `pixels` for the encoder and the near-duplicate thumbnail and picture size; for an
    unusable file, its error code and message (and zeros, and '' for the hash)."""
    count = len(batch["path"])
    pixels = np.zeros((count, shape.size, shape.size, shape.channels), np.uint8)
    thumbs = np.zeros((count, THUMB_SIDE * THUMB_SIDE), np.uint8)
    sizes = np.zeros((count, 2), np.int64)
    sha256, codes, messages = [""] * count, [""] * count, [""] * count
    for n, (path, size, mtime_ns) in enumerate(zip(batch["path"], batch["size"],
                                                  batch["mtime_ns"], strict=True)):
        done = read(Path(inbox), scan.Candidate(str(path), int(size), int(mtime_ns)), shape)
        if done.decoded is not None and done.picture is not None:
            pixels[n] = done.decoded.pixels
            sha256[n] = done.decoded.sha256
            thumb, width, height = done.picture
            thumbs[n] = np.frombuffer(thumb, np.uint8)
            sizes[n] = width, height
        elif done.problem is not None:
            codes[n], messages[n] = done.problem.code, done.problem.message
    return {"path": batch["path"], "size": batch["size"], "mtime_ns": batch["mtime_ns"],
            "sha256": np.array(sha256), "pixels": pixels, "thumb": thumbs,
            "width": sizes[:, 0], "height": sizes[:, 1],
            "error_code": np.array(codes), "error_message": np.array(messages)}


class Encoding:
    """An encoder actor: the configured encoder, loaded once, encodes batch after batch."""

    def __init__(self, model: str, shape: Shape, model_id: str) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from lookalike.core import encoder as encoders  # TensorFlow loads here
        from lookalike.core.errors import ModelError

        self.encoder = encoders.load(Path(model), shape.max_pixels)
        if (self.encoder.shape, self.encoder.model_id) != (shape, model_id):
            raise ModelError(f"{model} on {ray.util.get_node_ip_address()} is not the "
                             "encoder the import was started with")
        self.encoder.warm()

    def __call__(self, batch: Batch) -> dict[str, Any]:
        usable = batch["error_code"] == ""
        latents = np.zeros((len(usable), self.encoder.latent_dim), np.float32)
        latents[usable] = self.encoder.encode(batch["pixels"][usable])
        done: dict[str, Any] = {key: value for key, value in batch.items() if key != "pixels"}
        done["latent"] = latents
        done["model_id"] = np.full(len(usable), self.encoder.model_id)
        return done


def disconnect() -> None:
    """Leave the cluster; a cluster `connect` started on this machine stops with it."""
    ray.shutdown()
