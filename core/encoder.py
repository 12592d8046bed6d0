"""Load a `.keras` encoder and encode pixels: all that the service needs of a model.

The encoder maps a (size, size, channels) uint8 image to its latent vector.
Its first layer rescales 0..255 to 0..1, so the model and its preprocessing
travel together in one `.keras` file. The model id is the SHA-256 of that
file (`card.model_id`): a new file makes the library re-encode. Training
lives in `training`, which the service never imports. (What TensorFlow
prints as it loads is the command's to quiet: `daemon.tensorflow_log`.)

Encoding runs the model's TensorFlow Lite form (`core.lite`) where it can be
made and agrees with TensorFlow, else TensorFlow's traced function.
"""
from __future__ import annotations

import logging
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from . import card as model_card
from . import lite
from .errors import ModelError
from .framework import keras, tf
from .images import Shape

log = logging.getLogger(__name__)


class Encoder:
    """A loaded encoder: what it reads (`shape`), its latent size and id."""

    def __init__(self, model: keras.Model, shape: Shape, model_id: str, path: Path,
                 lite_folder: Path | None = None) -> None:
        self.model = model
        self.shape = shape
        self.model_id = model_id
        self.path = path
        self.latent_dim = int(model.output_shape[-1])
        self.lite_folder = lite_folder  # where the Lite form is kept between starts, if at all
        self.runner: lite.Runner | None = None  # the Lite form, once `warm` made or read it
        self.warmed = False  # `warm`
        self.warming = threading.Lock()
        signature = [tf.TensorSpec([None, shape.size, shape.size, shape.channels], tf.uint8)]

        def encode(pixels: tf.Tensor) -> tf.Tensor:
            return model(tf.cast(pixels, tf.float32), training=False)
        self._encode = tf.function(encode, input_signature=signature)

    def warm(self) -> None:
        """Make encoding ready now, once, rather than at the first image (a service started
        with nothing new to read would make the first image dropped wait for it): read the
        Lite form kept for this model, or trace the model and convert it (about 0.2 s for
        a small encoder, seconds for a large one)."""
        with self.warming:
            if self.warmed:
                return
            flat = None if self.lite_folder is None else lite.kept(self.lite_folder,
                                                                    self.model_id)
            if flat is not None:
                try:
                    self.runner = lite.Runner(flat, lite.threads())
                except (ValueError, RuntimeError) as error:  # a damaged file: made again
                    log.debug("%s: the kept Lite form is unusable (%s)", self.path, error)
            if self.runner is None:
                started = time.monotonic()
                self.runner = self.made_lite()
                if self.runner is not None:
                    log.info("%s: its TensorFlow Lite form made in %.1f s", self.path.name,
                             time.monotonic() - started)
                    if self.lite_folder is not None:
                        lite.keep(self.lite_folder, self.model_id, self.runner.flat)
            self.warmed = True

    def made_lite(self) -> lite.Runner | None:
        """The Lite form made from the traced model, if it agrees with it; else None, and
        TensorFlow encodes."""
        try:
            runner = lite.Runner(lite.convert(self._encode), lite.threads())
        except Exception as error:  # noqa: BLE001  (the converter raises many kinds)
            log.warning("%s: encoding with TensorFlow, which is slower: no Lite form (%s)",
                        self.path, error)
            return None
        probe = np.random.default_rng(0).integers(
            0, 256, (8, self.shape.size, self.shape.size, self.shape.channels), np.uint8)
        if not lite.agrees(runner, self._encode, probe):
            log.warning("%s: encoding with TensorFlow, which is slower: its Lite form "
                        "gives other vectors", self.path)
            return None
        return runner

    def encode(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Latent vectors (n, latent_dim) float32 for images (n, size, size, channels) uint8."""
        if len(pixels) == 0:
            return np.zeros((0, self.latent_dim), np.float32)
        self.warm()
        run = self.runner.run if self.runner is not None else (
            lambda batch: self._encode(batch).numpy())
        parts = [run(pixels[start:start + batch_size])
                 for start in range(0, len(pixels), batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)


def load(path: Path, max_pixels: int = 150_000_000, lite_folder: Path | None = None) -> Encoder:
    """Load a `.keras` encoder without running any code it carries (Keras safe mode); its
    Lite form is kept in `lite_folder`, if given, between starts."""
    if path.suffix != ".keras":
        raise ModelError(f"{path}: the encoder must be a .keras file")
    if not path.is_file():
        raise ModelError(f"{path}: no such encoder file")
    if not zipfile.is_zipfile(path):  # else Keras says "File not found" of a file that is there
        raise ModelError(f"{path}: not a .keras file, or a damaged one")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many kinds for a bad file
        raise ModelError(f"{path}: cannot load the encoder: {error}") from None
    dims = tuple(model.input_shape)
    square = len(dims) == 4 and dims[1] == dims[2] and dims[3] in (1, 3)
    if not square or len(model.output_shape) != 2:
        raise ModelError(f"{path}: expected an encoder from (size, size, 1 or 3) images "
                         "to vectors, "
                         f"got {dims} -> {model.output_shape}")
    shape = Shape(int(dims[1]), "rgb" if dims[3] == 3 else "grayscale", max_pixels)
    return Encoder(model, shape, model_card.model_id(path), path, lite_folder)
