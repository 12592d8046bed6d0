"""Build, train, save and load the encoder; the model id.

The encoder maps a (size, size, channels) uint8 image to its latent vector.
Its first layer rescales 0..255 to 0..1, so the model and its preprocessing
travel together in one `.keras` file. Beside it, `<name>.card.json` records
how it was made. The model id is the SHA-256 of the `.keras` file: any new
file (a retrained model) gets a new id and makes the library re-encode.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Keep TensorFlow's C++ chatter out of the journal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from . import card as model_card  # noqa: E402
from .errors import ModelError  # noqa: E402
from .images import Shape  # noqa: E402

Builder = Callable[[Shape, int], tuple[keras.Model, keras.Model]]


def seed_preset(shape: Shape, latent_dim: int) -> tuple[keras.Model, keras.Model]:
    """The seed article's autoencoder: two strided convolutions and a dense latent."""
    layers = keras.layers
    encoder = keras.Sequential([
        keras.Input(shape=(shape.size, shape.size, shape.channels), name="image"),
        layers.Rescaling(1.0 / 255),
        layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        layers.Flatten(),
        layers.Dense(latent_dim, name="latent"),
    ], name="encoder")
    side = shape.size // 8
    decoder = keras.Sequential([
        keras.Input(shape=(latent_dim,), name="latent"),
        layers.Dense(side * side * 64, activation="relu"),
        layers.Reshape((side, side, 64)),
        layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
        layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
        layers.Conv2DTranspose(shape.channels, 3, strides=2, padding="same", activation="sigmoid"),
    ], name="decoder")
    return encoder, decoder


PRESETS: dict[str, Builder] = {"seed": seed_preset}


@dataclass
class Training:
    """The outcome of `train`: the encoder and what the model card records."""

    encoder: keras.Model
    card: dict[str, Any] = field(default_factory=dict)


def train(pixels: np.ndarray, shape: Shape, *, preset: str = "seed", latent_dim: int = 128,
          epochs: int = 30, batch_size: int = 64, held_out: float = 0.1, patience: int = 5,
          seed: int = 0, verbose: int = 1) -> Training:
    """Train an autoencoder on `pixels` (n, size, size, channels) uint8 and return its encoder.

    A seeded `held_out` share is kept apart for the validation loss; training
    stops early when that loss stops improving and keeps the best weights.
    """
    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    if len(pixels) < 2:
        raise ModelError("training needs at least 2 images")
    keras.utils.set_random_seed(seed)
    order = np.random.default_rng(seed).permutation(len(pixels))
    n_held = max(1, int(round(len(pixels) * held_out)))
    train_x, held_x = pixels[order[n_held:]], pixels[order[:n_held]]

    encoder, decoder = PRESETS[preset](shape, latent_dim)
    image = keras.Input(shape=(shape.size, shape.size, shape.channels))
    autoencoder = keras.Model(image, decoder(encoder(image)), name="autoencoder")
    autoencoder.compile(optimizer="adam", loss="mse")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                         restore_best_weights=True)
    started = time.monotonic()
    history = autoencoder.fit(
        train_x.astype(np.float32), train_x.astype(np.float32) / 255.0,
        validation_data=(held_x.astype(np.float32), held_x.astype(np.float32) / 255.0),
        epochs=epochs, batch_size=batch_size, shuffle=True, callbacks=[stop], verbose=verbose)
    losses, held_losses = history.history["loss"], history.history["val_loss"]
    best = int(np.argmin(held_losses))
    return Training(encoder, {
        "schema": model_card.SCHEMA,
        "preset": preset,
        "image_size": shape.size,
        "color": shape.color,
        "latent_dim": latent_dim,
        "epochs_requested": epochs,
        "epochs_run": len(losses),
        "best_epoch": best + 1,
        "train_loss": round(float(losses[best]), 6),
        "held_out_loss": round(float(held_losses[best]), 6),
        "train_images": int(len(train_x)),
        "held_out_images": int(n_held),
        "batch_size": batch_size,
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    })


def save(training: Training, path: Path, extra: dict[str, Any] | None = None) -> str:
    """Write the encoder to `path` (.keras) and its card beside it; return the model id."""
    if path.suffix != ".keras":
        raise ModelError(f"{path}: the encoder is saved in the native format: "
                         "the name must end in .keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.keras")
    training.encoder.save(partial)
    os.replace(partial, path)
    identity = model_card.model_id(path)
    model_card.write(path, {**training.card, **(extra or {}), "model_id": identity,
                            "saved_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    return identity


class Encoder:
    """A loaded encoder: what it reads (`shape`), its latent size and id."""

    def __init__(self, model: keras.Model, shape: Shape, model_id: str, path: Path) -> None:
        self.model = model
        self.shape = shape
        self.model_id = model_id
        self.path = path
        self.latent_dim = int(model.output_shape[-1])
        signature = tf.TensorSpec([None, shape.size, shape.size, shape.channels], tf.uint8)
        self._encode = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False),
                                   input_signature=[signature])

    def encode(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Latent vectors (n, latent_dim) float32 for images (n, size, size, channels) uint8."""
        if len(pixels) == 0:
            return np.zeros((0, self.latent_dim), np.float32)
        parts = [self._encode(pixels[start:start + batch_size]).numpy()
                 for start in range(0, len(pixels), batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)


def load(path: Path, max_pixels: int = 150_000_000) -> Encoder:
    """Load a `.keras` encoder without running any code it carries (Keras safe mode)."""
    if path.suffix != ".keras":
        raise ModelError(f"{path}: the encoder must be a .keras file")
    if not path.is_file():
        raise ModelError(f"{path}: no such encoder file")
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
    return Encoder(model, shape, model_card.model_id(path), path)
