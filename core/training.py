"""Make an encoder: architectures, recipes, training, and the fixed layers fitted after it.

The service never imports this module (it needs only `encoder`). `train`
fits an autoencoder on a user's images (no labels), from scratch or from an
earlier encoder's training state, `finish` adds the fixed layers a recipe
asks for, and `save` writes the `.keras` file, its model card and its
training state (the learned weights before the fixed layers, with the
decoder and projection head, which the `.keras` file does not hold).
Everything in a saved encoder is a built-in Keras layer, so it loads in
Keras's safe mode.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import card as model_card
from . import encoder as encoders
from . import fitting, mirrored
from .atomic import replacing
from .errors import ModelError
from .framework import keras, tf
from .images import Shape

# (shape, latent_dim, **options) -> (encoder, decoder)
Builder = Callable[..., tuple[keras.Model, keras.Model]]


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
                     pooled: bool = True, layout: bool = True, equivariant: bool = False
                     ) -> tuple[keras.Model, keras.Model]:
    """A deeper convolutional autoencoder: a strided 3x3 convolution per width in `filters`.

    The encoder sees each image at zero mean and unit variance, so brightness,
    contrast and the tint of the ground do not move the latent; every
    convolution is batch-normalised. The latent reads the last feature maps'
    `layout` (where things are) and, with `pooled`, their averages (what is
    there, wherever it is, which a crop does not move). With `equivariant`, the
    encoder's convolutions see a mirror image as the image flipped
    (`mirrored.convolution`), so that `mirrored.one_pass` can sum the latents
    of both in one pass. The decoder reconstructs the image in 0..1 whatever
    the encoder sees.
    """
    layers = keras.layers
    stages = len(filters)
    if shape.size % (1 << stages):
        raise ModelError(f"image size {shape.size} is not a multiple of {1 << stages}")
    image = keras.Input(shape=(shape.size, shape.size, shape.channels), name="image")
    x = layers.Rescaling(1.0 / 255)(image)
    # Per-image standardisation, with a built-in layer (safe-mode loadable).
    x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, epsilon=1e-3,
                                  name="standardize")(x)

    def convolve(x: Any, width: int, kind: type[keras.layers.Layer] = layers.Conv2D) -> Any:
        x = kind(width, 3, strides=2, padding="same", use_bias=False)(x)
        return layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))

    for n, width in enumerate(filters):
        x = mirrored.convolution(x, width, n > 0) if equivariant else convolve(x, width)
    parts = ([layers.Flatten()(x)] if layout else []) + (
        [layers.GlobalAveragePooling2D()(x)] if pooled else [])
    features = parts[0] if len(parts) == 1 else layers.Concatenate()(parts)
    encoder = keras.Model(image, layers.Dense(latent_dim, name="latent")(features),
                          name="encoder")

    side = shape.size >> stages
    latent = keras.Input(shape=(latent_dim,), name="latent")
    y = layers.Dense(side * side * filters[-1], activation="relu")(latent)
    y = layers.Reshape((side, side, filters[-1]))(y)
    for width in reversed(filters[:-1]):
        y = convolve(y, width, layers.Conv2DTranspose)
    y = layers.Conv2DTranspose(shape.channels, 3, strides=2, padding="same",
                               activation="sigmoid")(y)
    return encoder, keras.Model(latent, y, name="decoder")


@dataclass(frozen=True)
class Recipe:
    """How an encoder is made: an architecture, how it is trained and what is fixed after.

    `color` is the colour mode the encoder reads unless the user asks for
    another. With `luminance`, the learned part and the edges see only the
    brightness of an RGB image (a grayscale copy is the same picture to
    them), and `colours` weighs a histogram of its saturated colours beside
    them (`fitting.with_colours`). Training views are augmented in the input pipeline (never part
    of the saved encoder): `augment` scales the geometric changes (shift,
    zoom, rotation, a box drawn over part of the image; 1.0: up to 8% shift,
    20% zoom in and 5% out, 3 degrees), `jitter` the photometric ones (brightness,
    contrast, blur, and hue, saturation and grayscale in RGB), `flip` adds
    mirror images. `contrast` weighs a contrastive loss (NT-Xent, as SimCLR)
    that pulls together the latents of two views of one image and pushes
    apart those of other images, at `temperature`.

    Fixed layers, fitted on the training images after training (`finish`):
    `mirror` makes the latent the sum of the image's and its mirror image's,
    so a mirrored copy has the same vector: by running the learned part on
    both, or, with `equivariant` (convolutions in mirrored pairs, trained so,
    for `conv_autoencoder` only), in one pass; `asymmetry` weighs, beside
    the mirror sum of the latent and of the edges, what the sum throws away
    but its sign: the size of the difference between the image's and its
    mirror image's, as much the same for a mirror image (a handwritten 2 is
    not a mirrored one summed with itself); `whiten` PCA-whitens the latent
    (needed with `asymmetry`: it keeps the vector's size), each principal
    direction scaled by its variance to the power -`whiten_power` (0.5:
    all end equal; less: the directions that vary most across images count
    more, as they hold what most images differ by); `band` makes the learned
    part read the picture without its top and bottom `band` of the height,
    stretched back (where a copy's caption, watermark or logo bar sits: the
    learned part weighs a whole picture's look, and on a quiet picture such a
    bar outweighs it); `edges` directions of the brightness gradient, summed
    over a 4x4 grid of cells of the whole picture, stand beside it at
    `edges_weight`.
    """

    build: Builder
    color: str = "rgb"
    luminance: bool = False
    colours: float = 0.0
    augment: float = 0.0
    jitter: float = 0.0
    flip: bool = False
    contrast: float = 0.0
    temperature: float = 0.2
    learning_rate: float = 1e-3
    mirror: bool = False
    equivariant: bool = False
    asymmetry: float = 0.0
    whiten: bool = False
    whiten_power: float = 0.5
    band: float = 0.0
    edges: int = 0
    edges_weight: float = 1.0

    def describe(self) -> dict[str, Any]:
        """The training options, for the model card: every field but the architecture."""
        return {option.name: getattr(self, option.name) for option in fields(self)
                if option.name != "build"}


PRESETS: dict[str, Recipe] = {
    # The seed article's recipe, as the article runs it.
    "seed": Recipe(seed_preset),
    # The default: chosen on the development parts of the evaluation suite
    # (bench/suite.py); BENCHMARKS.md gives its held-out figures.
    "lookalike": Recipe(conv_autoencoder, luminance=True, colours=1.6, augment=2.0,
                        jitter=1.0, flip=True, contrast=1.0, mirror=True, equivariant=True,
                        asymmetry=0.25, whiten=True, whiten_power=0.4, band=0.1, edges=16,
                        edges_weight=0.7),
}
DEFAULT_PRESET = "lookalike"
# At most this many epochs by default: from random weights, or going on from an
# encoder's training state (chosen on the development parts, BENCHMARKS.md).
EPOCHS = {"scratch": 20, "going on": 10}


def recipe_of(preset: str | Recipe) -> tuple[str, Recipe]:
    """(name, recipe) for a preset's name or a Recipe ("custom")."""
    if isinstance(preset, Recipe):
        return "custom", preset
    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    return preset, PRESETS[preset]


@dataclass
class Training:
    """The outcome of `train`: the encoder, what the model card records, and the
    model trained (its weights are where a later `train` can start from)."""

    encoder: keras.Model
    card: dict[str, Any] = field(default_factory=dict)
    trainer: keras.Model | None = None


def train(pixels: np.ndarray, shape: Shape, *, preset: str | Recipe = "seed",
          latent_dim: int = 128, epochs: int = 30, batch_size: int = 64, held_out: float = 0.1,
          patience: int = 5, seed: int = 0, verbose: int = 1,
          start: Path | None = None) -> Training:
    """Train an autoencoder on `pixels` (n, size, size, channels) uint8 and return its encoder.

    `preset` names one of PRESETS (or is a Recipe). With `start`, an encoder
    file whose training state (`card.state_path`) has the same recipe, shape and
    latent size, training goes on from its weights (fewer epochs are
    needed: `EPOCHS`), and the fitted layers keep the start's statistics
    (`fitting.keep_fitted`); else it starts from random weights. A seeded `held_out` share
    is kept apart for the validation loss (on clean, unaugmented images);
    training stops early when that loss stops improving and keeps the best
    weights. The fixed layers the recipe asks for are then fitted on all of
    `pixels` (`finish`).
    """
    name, recipe = recipe_of(preset)
    if len(pixels) < 2:
        raise ModelError("training needs at least 2 images")
    keras.utils.set_random_seed(seed)
    learned_shape, seen = shape, pixels
    if recipe.luminance and shape.channels == 3:
        learned_shape, seen = replace(shape, color="grayscale"), fitting.luminance(pixels)
    order = np.random.default_rng(seed).permutation(len(seen))
    n_held = max(1, int(round(len(seen) * held_out)))
    train_x, held_x = seen[order[n_held:]], seen[order[:n_held]]

    build = (functools.partial(recipe.build, equivariant=True) if recipe.equivariant
             else recipe.build)
    encoder, decoder = build(learned_shape, latent_dim)
    trainer = training_model(encoder, decoder, learned_shape, recipe)
    if start is not None:
        resume(trainer, start)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                         restore_best_weights=True)
    started = time.monotonic()
    # The held-out loss is on the images as they are.
    clean = replace(recipe, augment=0.0, jitter=0.0, flip=False)
    history = trainer.fit(batches(train_x, batch_size, recipe, seed, shuffle=True),
                          validation_data=batches(held_x, batch_size, clean, seed),
                          epochs=epochs, callbacks=[stop], verbose=verbose,
                          shuffle=False)  # batches() shuffles, seeded
    losses, held_losses = history.history["loss"], history.history["val_loss"]
    best = int(np.argmin(held_losses))
    encoder = finish(encoder, seen, recipe, rgb=learned_shape != shape)
    if start is not None:
        try:
            fitting.keep_fitted(encoder, encoders.load(start).model)
        except ValueError as problem:
            raise ModelError(f"{start}: its fixed layers were made by another recipe "
                             f"({problem}); train with --start scratch") from None
    return Training(encoder, {
        "schema": model_card.SCHEMA,
        "preset": name,
        "recipe": recipe.describe(),
        "started_from": ("scratch" if start is None
                         else model_card.read(start).get("model_id", start.name)),
        "image_size": shape.size,
        "color": shape.color,
        "latent_dim": int(encoder.output_shape[-1]),
        "learned_latent_dim": latent_dim,
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
    }, trainer)


def resume(trainer: keras.Model, start: Path) -> None:
    """Load into `trainer` the training state saved beside the encoder file `start`."""
    state = model_card.state_path(start)
    if not state.is_file():
        raise ModelError(f"{start}: no training state beside it ({state.name}) to start from")
    try:
        weights_of(trainer).load_weights(state)
    except ValueError as problem:
        raise ModelError(f"{start}: its training state does not fit this recipe, image "
                         f"size and latent size ({problem})") from None


def weights_of(trainer: keras.Model) -> keras.Model:
    """`trainer`'s layers without its optimizer: what a training state holds, since a
    training that goes on starts a new optimizer at its own rate."""
    return keras.Model(trainer.inputs, trainer.outputs, name="state")


def training_model(encoder: keras.Model, decoder: keras.Model, shape: Shape,
                   recipe: Recipe) -> keras.Model:
    """The compiled model that `fit` trains: the autoencoder, with a contrastive head if asked."""
    optimizer = keras.optimizers.Adam(recipe.learning_rate)
    side = (shape.size, shape.size, shape.channels)
    view = keras.Input(shape=side, name="view")
    latent = encoder(view)
    if not recipe.contrast:
        autoencoder = keras.Model(view, decoder(latent), name="autoencoder")
        autoencoder.compile(optimizer=optimizer, loss=reconstruction_loss)
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
                    loss={"image": reconstruction_loss,
                          "pair": contrastive_loss(recipe.temperature)},
                    loss_weights={"image": 1.0, "pair": recipe.contrast})
    return trainer


def augmentation(recipe: Recipe, channels: int, seed: int) -> keras.Sequential | None:
    """The random changes of a training view (built-in Keras layers), or None for none."""
    layers = keras.layers
    steps: list[keras.layers.Layer] = []
    if recipe.flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if recipe.augment > 0:
        strength = recipe.augment
        steps += [
            layers.RandomTranslation(0.08 * strength, 0.08 * strength, fill_mode="nearest",
                                     seed=seed + 1),
            # Mostly zooming in: a crop of the picture, down to 60% of its side at 2.0.
            layers.RandomZoom((-0.2 * strength, 0.05 * strength), fill_mode="nearest",
                              seed=seed + 2),
            layers.RandomRotation(3.0 * strength / 360, fill_mode="nearest", seed=seed + 3),
            # A caption, a logo or a sticker over part of the picture.
            layers.RandomErasing(factor=min(1.0, 0.25 * strength), scale=(0.02, 0.12),
                                 seed=seed + 4),
        ]
    if recipe.jitter > 0:
        strength = recipe.jitter
        steps += [
            layers.RandomBrightness(min(1.0, 0.2 * strength), value_range=(0.0, 255.0),
                                    seed=seed + 5),
            layers.RandomContrast(min(1.0, 0.4 * strength), value_range=(0, 255),
                                  seed=seed + 6),
            layers.RandomGaussianBlur(factor=min(1.0, 0.3 * strength), kernel_size=5,
                                      sigma=1.0, seed=seed + 7),
        ]
        if channels == 3:
            steps += [
                layers.RandomHue(min(1.0, 0.2 * strength), value_range=(0, 255),
                                 seed=seed + 8),
                layers.RandomSaturation(min(1.0, 0.4 * strength), value_range=(0, 255),
                                        seed=seed + 9),
                layers.RandomGrayscale(min(1.0, 0.2 * strength), seed=seed + 10),
            ]
    return keras.Sequential(steps, name="augment") if steps else None


def batches(pixels: np.ndarray, batch_size: int, recipe: Recipe, seed: int,
            shuffle: bool = False) -> tf.data.Dataset:
    """Batches of (input 0..255, target 0..1) float32, augmented as `recipe` says.

    The target is the view the encoder saw. With `recipe.contrast`, the input
    is two views of each image and the target {"image": ..., "pair": a
    placeholder}, as `training_model` wants.
    """
    images = tf.data.Dataset.from_tensor_slices(pixels)
    if shuffle:
        images = images.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    images = images.batch(batch_size).map(lambda x: tf.cast(x, tf.float32))
    augment = augmentation(recipe, pixels.shape[-1], seed)

    def view(x: tf.Tensor) -> tf.Tensor:
        if augment is None:
            return x
        return tf.clip_by_value(augment(x, training=True), 0.0, 255.0)

    def pair(x: tf.Tensor) -> Any:
        seen = view(x)
        if not recipe.contrast:
            return seen, seen / 255.0
        return (seen, view(x)), {"image": seen / 255.0, "pair": tf.zeros((tf.shape(x)[0], 1))}

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


def reconstruction_loss(target: tf.Tensor, output: tf.Tensor) -> tf.Tensor:
    """Per-image mean squared error."""
    return tf.reduce_mean(tf.square(target - output), axis=(1, 2, 3))


def finish(encoder: keras.Model, pixels: np.ndarray, recipe: Recipe,
           rgb: bool = False) -> keras.Model:
    """The trained `encoder` with the fixed layers `recipe` adds, fitted on `pixels`; with
    `rgb`, made to read RGB images whose luminance it was trained on."""
    asymmetry = recipe.asymmetry if recipe.mirror else 0.0
    if asymmetry and not recipe.whiten:
        raise ModelError("a recipe with asymmetry needs whiten, which keeps the vector's size")
    if recipe.equivariant:
        encoder = mirrored.one_pass(encoder, mirror_sum=recipe.mirror, asymmetry=bool(asymmetry))
    elif recipe.mirror:
        encoder = fitting.with_mirror(encoder, asymmetry=bool(asymmetry))
    if recipe.band:
        encoder = fitting.with_band(encoder, recipe.band)
    if recipe.whiten:
        encoder = fitting.with_whitening(encoder, pixels, asymmetry, recipe.whiten_power)
    if recipe.edges:
        encoder = fitting.with_edges(encoder, pixels, recipe.edges, recipe.edges_weight,
                                     mirror=recipe.mirror, asymmetry=asymmetry)
    if rgb:
        encoder = (fitting.with_colours(encoder, recipe.colours) if recipe.colours
                   else fitting.with_luminance(encoder))
    return encoder


def save(training: Training, path: Path, extra: dict[str, Any] | None = None) -> str:
    """Write the encoder to `path` (.keras), its card and its training state beside it;
    return the model id."""
    if path.suffix != ".keras":
        raise ModelError(f"{path}: the encoder is saved in the native format: "
                         "the name must end in .keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keras saves only to a name that ends in .keras.
    with replacing(path, partial=path.with_name(f".{path.stem}.partial.keras")) as partial:
        training.encoder.save(partial)
    if training.trainer is not None:
        state = model_card.state_path(path)
        # Keras saves weights only to a name that ends in .weights.h5.
        with replacing(state, partial=state.with_name(f".{state.name[:-11]}.partial.weights.h5")
                       ) as partial:
            weights_of(training.trainer).save_weights(partial)
    identity = model_card.model_id(path)
    model_card.write(path, {**training.card, **(extra or {}), "model_id": identity,
                            "saved_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    return identity

