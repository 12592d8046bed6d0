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
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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


def conv_autoencoder(shape: Shape, latent_dim: int, *, filters: tuple[int, ...] = (32, 64, 128),
                     extra: bool = False, batch_norm: bool = True, standardize: bool = True,
                     pooled: bool = False,
                     unit_latent: bool = False) -> tuple[keras.Model, keras.Model]:
    """A deeper convolutional autoencoder: a strided 3x3 convolution per width in `filters`.

    `extra` adds a 3x3 convolution after each strided one (at the reduced
    resolution); `standardize` makes the encoder see each image at zero mean
    and unit variance (brightness and contrast do not move the latent);
    `batch_norm` normalises every convolution; `unit_latent` puts the latent
    on the unit sphere, where the angular metric measures it. The decoder
    reconstructs the image in 0..1 whatever the encoder sees.
    """
    layers = keras.layers
    stages = len(filters)
    if shape.size % (1 << stages):
        raise ModelError(f"image size {shape.size} is not a multiple of {1 << stages}")
    encoder = keras.Sequential([keras.Input(shape=(shape.size, shape.size, shape.channels),
                                            name="image"), layers.Rescaling(1.0 / 255)],
                               name="encoder")
    if standardize:
        # Per-image standardisation, with a built-in layer (safe-mode loadable).
        encoder.add(layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False,
                                              epsilon=1e-3, name="standardize"))

    def convolve(model: keras.Sequential, width: int, strides: int,
                 kind: type[keras.layers.Layer] = layers.Conv2D) -> None:
        model.add(kind(width, 3, strides=strides, padding="same", use_bias=not batch_norm))
        if batch_norm:
            model.add(layers.BatchNormalization(momentum=0.9))
        model.add(layers.ReLU())

    for width in filters:
        convolve(encoder, width, 2)
        if extra:
            convolve(encoder, width, 1)
    if pooled:
        # The latent also reads the feature maps' averages: what is there, wherever it is.
        features = encoder.outputs[0]
        joined = layers.Concatenate()([layers.Flatten()(features),
                                       layers.GlobalAveragePooling2D()(features)])
        latent = layers.Dense(latent_dim, name="latent")(joined)
        if unit_latent:
            latent = layers.UnitNormalization(name="unit")(latent)
        encoder = keras.Model(encoder.inputs[0], latent, name="encoder")
    else:
        encoder.add(layers.Flatten())
        encoder.add(layers.Dense(latent_dim, name="latent"))
        if unit_latent:
            encoder.add(layers.UnitNormalization(name="unit"))

    side = shape.size >> stages
    decoder = keras.Sequential([
        keras.Input(shape=(latent_dim,), name="latent"),
        layers.Dense(side * side * filters[-1], activation="relu"),
        layers.Reshape((side, side, filters[-1])),
    ], name="decoder")
    for width in reversed(filters[:-1]):
        if extra:
            convolve(decoder, width * 2, 1)
        convolve(decoder, width, 2, layers.Conv2DTranspose)
    decoder.add(layers.Conv2DTranspose(shape.channels, 3, strides=2, padding="same",
                                       activation="sigmoid"))
    return encoder, decoder


@dataclass(frozen=True)
class Recipe:
    """How an encoder is made: an architecture and how it is trained.

    `augment` shifts, scales and brightens each training image a little, at
    random (1.0: up to 8% shift, 10% zoom and brightness; 2.0 twice that);
    `noise` is the standard deviation (0..1 scale) of Gaussian noise added to
    the input (a denoising autoencoder). The target is the image after
    augmentation but before noise, or with `restore` the image before either,
    so the latent learns to ignore both. All of it happens in the input
    pipeline: the saved encoder stays deterministic. `structure` weighs the
    error of the image gradients beside the pixel error. `contrast` weighs a
    contrastive loss (NT-Xent, as SimCLR) that pulls together the latents of
    two augmentations of one image and pushes apart those of other images,
    at `temperature`. `whiten` appends a fixed PCA-whitening layer fitted on
    the training images' latents.

    Two fixed branches, fitted on the training images but not trained, can
    stand beside the learned latent (see `with_appearance`): `palette`
    colours (a k-means palette of the training pixels) counted per image, and
    `edges` directions of the brightness gradient summed over a 4x4 grid of
    cells. Each part is weighed (`palette_weight`, `edges_weight`, the
    learned latent 1) and concatenated. `jitter` adds colour jitter (hue,
    saturation, grayscale) and contrast to the augmentation.
    """

    build: Builder
    augment: float = 0.0
    noise: float = 0.0
    restore: bool = False
    structure: float = 0.0
    contrast: float = 0.0
    temperature: float = 0.2
    whiten: bool = False
    learning_rate: float = 1e-3
    palette: int = 0
    palette_weight: float = 2.0
    edges: int = 0
    edges_weight: float = 1.0
    jitter: float = 0.0

    def describe(self) -> dict[str, Any]:
        """The training options, for the model card."""
        return {"augment": self.augment, "noise": self.noise, "restore": self.restore,
                "structure": self.structure, "contrast": self.contrast,
                "temperature": self.temperature, "whiten": self.whiten,
                "learning_rate": self.learning_rate, "palette": self.palette,
                "palette_weight": self.palette_weight, "edges": self.edges,
                "edges_weight": self.edges_weight, "jitter": self.jitter}


PRESETS: dict[str, Recipe] = {
    # The seed article's recipe, as the article runs it.
    "seed": Recipe(seed_preset),
    # The default, measured against `seed` on labels never seen in training in
    # BENCHMARKS.md ("Retrieval quality"): each lever there has its figures.
    "lookalike": Recipe(conv_autoencoder, augment=2.0, contrast=1.0, jitter=1.0, whiten=True,
                        palette=512, edges=16),
}
DEFAULT_PRESET = "lookalike"


@dataclass
class Training:
    """The outcome of `train`: the encoder and what the model card records."""

    encoder: keras.Model
    card: dict[str, Any] = field(default_factory=dict)


def train(pixels: np.ndarray, shape: Shape, *, preset: str | Recipe = "seed",
          latent_dim: int = 128, epochs: int = 30, batch_size: int = 64, held_out: float = 0.1,
          patience: int = 5, seed: int = 0, verbose: int = 1) -> Training:
    """Train an autoencoder on `pixels` (n, size, size, channels) uint8 and return its encoder.

    `preset` names one of PRESETS (or is a Recipe). A seeded `held_out` share
    is kept apart for the validation loss (on clean, unaugmented images);
    training stops early when that loss stops improving and keeps the best
    weights. The fixed layers the recipe asks for (whitening, palette, edges)
    are then fitted on all of `pixels` (`finish`).
    """
    if isinstance(preset, Recipe):
        recipe, name = preset, "custom"
    elif preset in PRESETS:
        recipe, name = PRESETS[preset], preset
    else:
        raise ModelError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    if len(pixels) < 2:
        raise ModelError("training needs at least 2 images")
    keras.utils.set_random_seed(seed)
    order = np.random.default_rng(seed).permutation(len(pixels))
    n_held = max(1, int(round(len(pixels) * held_out)))
    train_x, held_x = pixels[order[n_held:]], pixels[order[:n_held]]

    encoder, decoder = recipe.build(shape, latent_dim)
    trainer = training_model(encoder, decoder, shape, recipe)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                         restore_best_weights=True)
    started = time.monotonic()
    # The held-out loss is on the images as they are.
    clean = replace(recipe, augment=0.0, noise=0.0)
    history = trainer.fit(batches(train_x, batch_size, recipe, seed, shuffle=True),
                          validation_data=batches(held_x, batch_size, clean, seed),
                          epochs=epochs, callbacks=[stop], verbose=verbose,
                          shuffle=False)  # batches() shuffles, seeded
    losses, held_losses = history.history["loss"], history.history["val_loss"]
    best = int(np.argmin(held_losses))
    encoder = finish(encoder, pixels, recipe, seed)
    return Training(encoder, {
        "schema": model_card.SCHEMA,
        "preset": name,
        "recipe": recipe.describe(),
        "image_size": shape.size,
        "color": shape.color,
        "latent_dim": int(encoder.output_shape[-1]),
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


def training_model(encoder: keras.Model, decoder: keras.Model, shape: Shape,
                   recipe: Recipe) -> keras.Model:
    """The compiled model that `fit` trains: the autoencoder, with a contrastive head if asked."""
    optimizer = keras.optimizers.Adam(recipe.learning_rate)
    side = (shape.size, shape.size, shape.channels)
    view = keras.Input(shape=side, name="view")
    latent = encoder(view)
    if not recipe.contrast:
        autoencoder = keras.Model(view, decoder(latent), name="autoencoder")
        autoencoder.compile(optimizer=optimizer, loss=reconstruction_loss(recipe.structure))
        return autoencoder
    # SimCLR's projection head: the contrastive loss acts on its output, so the
    # latent before it keeps what the reconstruction needs.
    width = int(latent.shape[-1])
    head = keras.Sequential([keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(64)], name="projection")
    other = keras.Input(shape=side, name="other_view")
    pair = keras.layers.Concatenate(name="pair")([head(latent), head(encoder(other))])
    trainer = keras.Model([view, other], {"image": decoder(latent), "pair": pair},
                          name="autoencoder")
    trainer.compile(optimizer=optimizer,
                    loss={"image": reconstruction_loss(recipe.structure),
                          "pair": contrastive_loss(recipe.temperature)},
                    loss_weights={"image": 1.0, "pair": recipe.contrast})
    return trainer


def batches(pixels: np.ndarray, batch_size: int, recipe: Recipe, seed: int,
            shuffle: bool = False) -> tf.data.Dataset:
    """Batches of (input 0..255, target 0..1) float32, augmented and noised as `recipe` says.

    With `recipe.contrast`, the input is two views of each image and the
    target {"image": ..., "pair": a placeholder}, as `training_model` wants.
    """
    images = tf.data.Dataset.from_tensor_slices(pixels)
    if shuffle:
        images = images.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    images = images.batch(batch_size).map(lambda x: tf.cast(x, tf.float32))
    layers = keras.layers
    strength = float(recipe.augment)
    # Built-in Keras layers, run in the input pipeline: never part of the saved encoder.
    augment = keras.Sequential([
        layers.RandomTranslation(0.08 * strength, 0.08 * strength, fill_mode="nearest",
                                 seed=seed),
        layers.RandomZoom(0.1 * strength, fill_mode="nearest", seed=seed + 1),
        layers.RandomBrightness(0.1 * strength, value_range=(0.0, 255.0), seed=seed + 2),
    ], name="augment") if strength > 0 else None
    if augment is not None and recipe.jitter > 0:
        # Colour jitter (as SimCLR; no flips: they change digits): the palette branch
        # counts colours, so the latent may ignore them.
        if pixels.shape[-1] == 3:
            augment.add(layers.RandomHue(min(1.0, 0.2 * recipe.jitter), value_range=(0, 255),
                                         seed=seed + 4))
            augment.add(layers.RandomSaturation(min(1.0, 0.4 * recipe.jitter),
                                                value_range=(0, 255), seed=seed + 5))
            augment.add(layers.RandomGrayscale(min(1.0, 0.2 * recipe.jitter), seed=seed + 6))
        augment.add(layers.RandomContrast(min(1.0, 0.4 * recipe.jitter), value_range=(0, 255),
                                          seed=seed + 7))

    def corrupt(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(what the encoder sees, the image before noise)."""
        if augment is not None:
            x = tf.clip_by_value(augment(x, training=True), 0.0, 255.0)
        seen = x
        if recipe.noise > 0:
            seen = tf.clip_by_value(x + tf.random.normal(tf.shape(x), stddev=recipe.noise * 255),
                                    0.0, 255.0)
        return seen, x

    def pair(x: tf.Tensor) -> Any:
        seen, augmented = corrupt(x)
        target = (x if recipe.restore else augmented) / 255.0
        if not recipe.contrast:
            return seen, target
        other, _ = corrupt(x)
        return (seen, other), {"image": target, "pair": tf.zeros((tf.shape(x)[0], 1))}

    return images.map(pair, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def contrastive_loss(temperature: float) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """NT-Xent over a batch of (projection of view 1 | projection of view 2) rows.

    Each view must pick its twin out of the 2n - 1 other views of the batch;
    the loss is the cross-entropy of that choice, per image.
    """
    def loss(_: tf.Tensor, pair: tf.Tensor) -> tf.Tensor:
        first, second = tf.split(pair, 2, axis=1)
        n = tf.shape(first)[0]
        views = tf.math.l2_normalize(tf.concat([first, second], 0), axis=1)
        logits = tf.matmul(views, views, transpose_b=True) / temperature
        logits -= 1e9 * tf.eye(2 * n)  # a view is not its own twin
        twins = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], 0)
        each = tf.nn.sparse_softmax_cross_entropy_with_logits(twins, logits)
        return tf.reduce_mean(tf.reshape(each, (2, n)), axis=0)
    return loss


def reconstruction_loss(structure: float) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Per-image mean squared error, plus `structure` times that of the image gradients."""
    def loss(target: tf.Tensor, output: tf.Tensor) -> tf.Tensor:
        error = tf.reduce_mean(tf.square(target - output), axis=(1, 2, 3))
        if structure:
            target_dy, target_dx = tf.image.image_gradients(target)
            output_dy, output_dx = tf.image.image_gradients(output)
            error += structure * (
                tf.reduce_mean(tf.square(target_dy - output_dy), axis=(1, 2, 3))
                + tf.reduce_mean(tf.square(target_dx - output_dx), axis=(1, 2, 3)))
        return error
    return loss


def whitening(latents: np.ndarray, shrink: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of the affine map that PCA-whitens `latents` (n, d).

    Each principal direction is scaled by 1 / sqrt(variance + shrink * mean
    variance): directions that barely vary are not blown up into noise.
    """
    mean = latents.mean(0)
    covariance = np.cov(latents - mean, rowvar=False)
    variances, directions = np.linalg.eigh(covariance)
    variances = np.clip(variances, 0.0, None)
    order = np.argsort(variances)[::-1]
    variances, directions = variances[order], directions[:, order]
    kernel = directions / np.sqrt(variances + shrink * variances.mean() + 1e-12)
    return kernel.astype(np.float32), (-mean @ kernel).astype(np.float32)


def with_whitening(encoder: keras.Model, pixels: np.ndarray) -> keras.Model:
    """`encoder` followed by a fixed Dense layer that PCA-whitens its latents on `pixels`."""
    latents = encoder.predict(pixels.astype(np.float32), batch_size=256, verbose=0)
    kernel, bias = whitening(latents.astype(np.float64))
    layer = keras.layers.Dense(kernel.shape[1], trainable=False, name="whiten")
    whitened = keras.Model(encoder.inputs[0], layer(encoder.outputs[0]), name="encoder")
    layer.set_weights([kernel, bias])
    return whitened


def finish(encoder: keras.Model, pixels: np.ndarray, recipe: Recipe,
           seed: int = 0) -> keras.Model:
    """The trained `encoder` with the fixed layers `recipe` adds, fitted on `pixels`."""
    if recipe.whiten:
        encoder = with_whitening(encoder, pixels)
    if recipe.palette or recipe.edges:
        encoder = with_appearance(encoder, pixels, recipe, seed)
    return encoder


def with_appearance(encoder: keras.Model, pixels: np.ndarray, recipe: Recipe,
                    seed: int = 0) -> keras.Model:
    """`encoder`'s latent beside a palette histogram and a grid of edge directions.

    All three parts are fixed functions of the image once fitted on `pixels`
    (n, size, size, channels) uint8, built from Keras layers only:
    - the learned latent, scaled to unit length;
    - the palette histogram: each pixel is quantised (16 levels per channel)
      and counted under the nearest of `recipe.palette` colours, a k-means
      palette of the training pixels; the square roots of the shares (the
      Hellinger embedding: exact colours shared count, however few pixels
      they cover), less their mean on `pixels`, times `palette_weight`;
    - the edges: the gradient of the brightness in `recipe.edges` directions,
      rectified and averaged over a 4x4 grid of cells, square-rooted,
      PCA-whitened on `pixels`, scaled to unit length, times `edges_weight`.
    Images whose labels differ mostly by palette and drawing style (icons,
    emoji, photographs) are told apart by the first two; the learned latent
    keeps the shapes apart (digits).
    """
    layers = keras.layers
    size, channels = int(encoder.input_shape[1]), int(encoder.input_shape[3])
    image = encoder.inputs[0]
    parts = [layers.UnitNormalization(name="latent_unit")(encoder.outputs[0])]
    unit = layers.Rescaling(1.0 / 255, name="unit_range")(image)
    fitted: list[tuple[keras.Model, Callable[[np.ndarray], None]]] = []
    if recipe.palette:
        levels = 16 if channels == 3 else 256
        bins = levels ** channels
        colours = min(recipe.palette, bins)
        # Each channel value (0..255) to its level by a lookup table: the same
        # levels as bucketing v / 255 at i / levels (Discretization), whose
        # search took two thirds of the encoder's time on photographs
        # (bench/encode.py: 3,130 -> 5,218 images/s on noise).
        level = layers.Embedding(256, 1, trainable=False, name="channel_level")
        quantised = layers.Reshape((size, size, channels), name="channel_levels")(level(image))
        joint = layers.Conv2D(1, 1, use_bias=False, trainable=False, name="colour_bin")
        bin_of_pixel = layers.Reshape((size * size,), name="colour_bins")(joint(quantised))
        # A lookup table from the quantised colour to its palette colour.
        palette = layers.Embedding(bins, 1, trainable=False, name="palette")
        counts = layers.CategoryEncoding(colours, output_mode="count", name="palette_count")(
            layers.Reshape((size * size,), name="palette_of_pixel")(palette(bin_of_pixel)))
        shares = layers.Rescaling(1.0 / (size * size), name="palette_share")(counts)
        roots = square_root(shares, colours, 1.0 / (size * size), "palette_root")
        centre = layers.Dense(colours, trainable=False, name="palette_centre")
        parts.append(centre(roots))
        level.set_weights([channel_levels(levels)])
        joint_kernel = np.array([levels ** (channels - 1 - c) for c in range(channels)],
                                np.float32).reshape(1, 1, channels, 1)
        joint.set_weights([joint_kernel])
        seen = keras.Model(image, bin_of_pixel).predict(pixels.astype(np.float32),
                                                        batch_size=256, verbose=0)
        bin_counts = np.bincount(seen.astype(np.int64).ravel(), minlength=bins)
        centres = (np.stack(np.unravel_index(np.arange(bins), (levels,) * channels), 1)
                   + 0.5) / levels
        nearest = palette_of(centres, bin_counts, colours, seed)
        palette.set_weights([nearest.reshape(-1, 1).astype(np.float32)])

        def fit_centre(roots_seen: np.ndarray) -> None:
            weight = recipe.palette_weight
            centre.set_weights([weight * np.eye(colours, dtype=np.float32),
                                (-weight * roots_seen.mean(0)).astype(np.float32)])
        fitted.append((keras.Model(image, roots), fit_centre))
    if recipe.edges:
        directions = recipe.edges
        gradient = layers.Conv2D(directions, 3, padding="valid", use_bias=False,
                                 trainable=False, name="gradient")
        inner = size - 2
        cell = -(-inner // 4)
        stride = max(1, (inner - cell) // 3)
        pooled = layers.AveragePooling2D(cell, strides=stride, name="cells")(
            layers.ReLU(name="gradient_rectify")(gradient(unit)))
        flat = layers.Flatten(name="cells_flat")(pooled)
        width = int(flat.shape[-1])
        roots = square_root(flat, width, 1e-4, "edges_root")
        whiten = layers.Dense(width, trainable=False, name="edges_whiten")
        parts.append(layers.Rescaling(recipe.edges_weight, name="edges_weight")(
            layers.UnitNormalization(name="edges_unit")(whiten(roots))))
        kernel = np.zeros((3, 3, channels, directions), np.float32)
        for k in range(directions):
            angle = 2 * np.pi * k / directions
            # Central differences of the channels' mean, along x (columns) and y (rows).
            kernel[1, 2, :, k] += 0.5 * np.cos(angle) / channels
            kernel[1, 0, :, k] -= 0.5 * np.cos(angle) / channels
            kernel[2, 1, :, k] += 0.5 * np.sin(angle) / channels
            kernel[0, 1, :, k] -= 0.5 * np.sin(angle) / channels
        gradient.set_weights([kernel])

        def fit_whitening(roots_seen: np.ndarray) -> None:
            whiten.set_weights(list(whitening(roots_seen.astype(np.float64))))
        fitted.append((keras.Model(image, roots), fit_whitening))
    for part, fit in fitted:
        fit(part.predict(pixels.astype(np.float32), batch_size=256, verbose=0))
    joined = layers.Concatenate(name="appearance")(parts)
    return keras.Model(image, joined, name="encoder")


def channel_levels(levels: int) -> np.ndarray:
    """The level (0..levels-1) of each channel value v (0..255), as a (256, 1) table:
    floor(levels * v / 255), the top value in the top level."""
    values = np.arange(256)
    return np.minimum(values * levels // 255, levels - 1).astype(np.float32).reshape(-1, 1)


def square_root(values: Any, width: int, smallest: float, name: str) -> Any:
    """sqrt of `values` (batch, width) >= 0, piecewise linear (Keras has no sqrt layer).

    Knots at 0 and at `smallest` times powers of sqrt(2) up to 1 and beyond:
    within 3% of the square root from `smallest` up, exact at every knot.
    """
    layers = keras.layers
    knots = [0.0] + list(smallest * np.sqrt(2.0) ** np.arange(
        int(np.ceil(2 * np.log2(2.0 / smallest))) + 1))
    knots_arr = np.array(knots)
    slopes = np.diff(np.sqrt(knots_arr)) / np.diff(knots_arr)
    steps = np.diff(slopes, prepend=0.0)  # each ReLU adds its change of slope
    hinge = layers.Dense(len(steps), name=f"{name}_hinge", trainable=False)
    mix = layers.Dense(1, use_bias=False, name=f"{name}_mix", trainable=False)
    column = layers.Reshape((width, 1), name=f"{name}_column")(values)
    hinged = layers.ReLU(name=f"{name}_relu")(hinge(column))
    out = layers.Reshape((width,), name=f"{name}_row")(mix(hinged))
    hinge.set_weights([np.ones((1, len(steps)), np.float32),
                       (-knots_arr[:-1]).astype(np.float32)])
    mix.set_weights([steps.reshape(-1, 1).astype(np.float32)])
    return out


def palette_of(colours: np.ndarray, weights: np.ndarray, size: int, seed: int,
               rounds: int = 30) -> np.ndarray:
    """For each of `colours` (m, channels) the index of its nearest palette colour.

    The palette is `size` colours fitted by weighted k-means (k-means++ seeding)
    on the colours seen (`weights` > 0, e.g. how many training pixels fell on
    each); colours never seen go to the nearest palette colour too.
    """
    rng = np.random.default_rng(seed)
    seen = np.flatnonzero(weights > 0)
    points, mass = colours[seen], weights[seen].astype(np.float64)
    chosen = [int(rng.choice(len(points), p=mass / mass.sum()))]
    distance = ((points - points[chosen[0]]) ** 2).sum(1)
    while len(chosen) < min(size, len(points)):
        chance = mass * distance
        if chance.sum() <= 0:
            break
        chosen.append(int(rng.choice(len(points), p=chance / chance.sum())))
        distance = np.minimum(distance, ((points - points[chosen[-1]]) ** 2).sum(1))
    palette = points[chosen]
    for _ in range(rounds):
        owner = ((points[:, None] - palette[None]) ** 2).sum(-1).argmin(1)
        totals = np.bincount(owner, mass, len(palette))
        for axis in range(points.shape[1]):
            sums = np.bincount(owner, mass * points[:, axis], len(palette))
            palette[:, axis] = np.where(totals > 0, sums / np.maximum(totals, 1e-12),
                                        palette[:, axis])
    # Fewer colours seen than asked: the rest of the palette stays empty.
    return np.asarray(((colours[:, None] - palette[None]) ** 2).sum(-1).argmin(1))


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


class PaletteCount:
    """The palette branch's count (`with_appearance`), done by numpy's table lookups.

    TensorFlow's gathers that find each pixel's level, bin and palette colour
    cost about 0.13 ms of a core an image, a quarter of the default encoder's
    time; these lookups give the same counts in about 0.03 ms, and the rest of
    the encoder takes them as a second input: the same vectors, bit for bit.
    """

    LAYERS = ("channel_level", "colour_bin", "palette", "palette_count")

    def __init__(self, model: keras.Model) -> None:
        level, joint, palette, count = (model.get_layer(name) for name in self.LAYERS)
        levels = level.get_weights()[0][:, 0]
        # A channel's value (0..255) to its part of the pixel's bin (at most 16**3).
        self.tables = [(levels * weight).astype(np.uint16)
                       for weight in joint.get_weights()[0].reshape(-1)]
        self.palette = palette.get_weights()[0][:, 0].astype(np.uint16)
        self.colours = int(count.num_tokens)
        self.output = count.output

    @classmethod
    def of(cls, model: keras.Model) -> PaletteCount | None:
        """The count of `model`'s palette branch, if it has one as `with_appearance` builds."""
        layers = {layer.name: layer for layer in model.layers}
        kinds = (keras.layers.Embedding, keras.layers.Conv2D, keras.layers.Embedding,
                 keras.layers.CategoryEncoding)
        found = [layers.get(name) for name in cls.LAYERS]
        if not all(isinstance(layer, kind) for layer, kind in zip(found, kinds, strict=True)):
            return None
        return cls(model) if getattr(found[-1], "output_mode", None) == "count" else None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """How many pixels of each image (n, size, size, channels) uint8 fall on each
        palette colour: (n, colours) float32."""
        bins = np.take(self.tables[0], pixels[..., 0])
        for channel in range(1, len(self.tables)):
            bins += np.take(self.tables[channel], pixels[..., channel])
        owners = np.take(self.palette, bins).reshape(len(pixels), -1).astype(np.intp)
        owners += np.arange(len(pixels))[:, None] * self.colours  # one bincount for all
        counts = np.bincount(owners.ravel(), minlength=len(pixels) * self.colours)
        return counts.reshape(len(pixels), self.colours).astype(np.float32)


class Encoder:
    """A loaded encoder: what it reads (`shape`), its latent size and id."""

    def __init__(self, model: keras.Model, shape: Shape, model_id: str, path: Path) -> None:
        self.model = model
        self.shape = shape
        self.model_id = model_id
        self.path = path
        self.latent_dim = int(model.output_shape[-1])
        signature = [tf.TensorSpec([None, shape.size, shape.size, shape.channels], tf.uint8)]
        self.palette = PaletteCount.of(model)
        graph = model
        if self.palette is not None:  # the rest of the model, from the image and the count
            graph = keras.Model([model.inputs[0], self.palette.output], model.outputs[0])
            signature.append(tf.TensorSpec([None, self.palette.colours], tf.float32))

        def encode(pixels: tf.Tensor, *counts: tf.Tensor) -> tf.Tensor:
            image = tf.cast(pixels, tf.float32)
            return graph([image, *counts] if counts else image, training=False)
        self._encode = tf.function(encode, input_signature=signature)

    def warm(self) -> None:
        """Trace the encoding now (about 0.2 s) rather than on the first image: a service
        started with nothing new to read would make the first image dropped wait for it."""
        self.encode(np.zeros((1, self.shape.size, self.shape.size, self.shape.channels),
                             np.uint8))

    def encode(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Latent vectors (n, latent_dim) float32 for images (n, size, size, channels) uint8."""
        if len(pixels) == 0:
            return np.zeros((0, self.latent_dim), np.float32)
        parts = []
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start:start + batch_size]
            counts = () if self.palette is None else (self.palette(batch),)
            parts.append(self._encode(batch, *counts).numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)


def load(path: Path, max_pixels: int = 150_000_000) -> Encoder:
    """Load a `.keras` encoder without running any code it carries (Keras safe mode)."""
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
    return Encoder(model, shape, model_card.model_id(path), path)
