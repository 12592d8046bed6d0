"""Training an encoder: real TensorFlow, tiny images, a few epochs; the fixed layers after."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from lookalike.core import card, fitting, training
from lookalike.core import encoder as encoders
from lookalike.core.errors import ModelError
from lookalike.core.images import Shape

pytestmark = pytest.mark.slow

SMALL = Shape(16, "grayscale")


def images_of(count: int, shape: Shape, seed: int = 0) -> np.ndarray:
    """Blobs of light on dark, off centre: a little structure, and a left and a right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape.size, 0:shape.size]
    out = np.zeros((count, shape.size, shape.size, shape.channels), np.uint8)
    for n in range(count):
        cy, cx, r = rng.uniform(0, shape.size, 2).tolist() + [rng.uniform(2, shape.size / 3)]
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
        out[n] = (blob * 255).astype(np.uint8)[:, :, None]
    return out


# -- training -------------------------------------------------------------------
def test_seed_preset_shapes() -> None:
    encoder, decoder = training.seed_preset(Shape(56, "rgb"), 128)
    assert encoder.input_shape == (None, 56, 56, 3) and encoder.output_shape == (None, 128)
    assert decoder.input_shape == (None, 128) and decoder.output_shape == (None, 56, 56, 3)


def test_tiny_training_saves_and_loads(tmp_path: Path) -> None:
    pixels = images_of(20, SMALL)
    trained = training.train(pixels, SMALL, latent_dim=8, epochs=2, batch_size=8, patience=1,
                          verbose=0)
    info = trained.card
    assert info["epochs_requested"] == 2
    assert 1 <= info["epochs_run"] <= 2 and 1 <= info["best_epoch"] <= info["epochs_run"]
    assert (info["train_images"], info["held_out_images"]) == (18, 2)
    assert (info["image_size"], info["color"], info["latent_dim"]) == (16, "grayscale", 8)
    assert np.isfinite(info["held_out_loss"]) and np.isfinite(info["train_loss"])

    path = tmp_path / "sub" / "tiny.keras"
    identity = training.save(trained, path, {"data": "blobs"})
    assert identity == card.model_id(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "tiny.card.json", "tiny.keras", "tiny.training.weights.h5"]
    written = card.read(path)
    assert written["model_id"] == identity and written["data"] == "blobs"
    assert written["epochs_run"] == info["epochs_run"]

    loaded = encoders.load(path)
    assert (loaded.shape, loaded.latent_dim, loaded.model_id) == (SMALL, 8, identity)
    direct = trained.encoder(pixels[:4].astype(np.float32), training=False).numpy()
    assert np.allclose(loaded.encode(pixels[:4]), direct, atol=1e-5)  # same weights


def test_training_goes_on_from_a_saved_state(tmp_path: Path) -> None:
    pixels = images_of(40, SMALL, seed=5)
    first = training.train(pixels, SMALL, latent_dim=8, epochs=4, batch_size=8, verbose=0)
    path = tmp_path / "first.keras"
    identity = training.save(first, path)
    assert first.card["started_from"] == "scratch" and first.card["learned_latent_dim"] == 8
    assert card.made_alike(path, "seed", SMALL.size, SMALL.color, 8)
    assert not card.made_alike(path, "seed", SMALL.size, SMALL.color, 4)

    # The state holds every weight of the model trained: the decoder's too.
    encoder, decoder = training.seed_preset(SMALL, 8)
    recipe = training.PRESETS["seed"]
    trainer = training.training_model(encoder, decoder, SMALL, recipe)
    training.resume(trainer, path)
    assert first.trainer is not None
    for loaded, saved in zip(trainer.get_weights(), first.trainer.get_weights(), strict=True):
        assert np.array_equal(loaded, saved)

    fresh = training.train(pixels, SMALL, latent_dim=8, epochs=1, batch_size=8, seed=1,
                           verbose=0)
    going_on = training.train(pixels, SMALL, latent_dim=8, epochs=1, batch_size=8, seed=1,
                              verbose=0, start=path)
    assert going_on.card["started_from"] == identity
    # It starts where the first training ended, not from random weights.
    assert going_on.card["train_loss"] < fresh.card["train_loss"]

    with pytest.raises(ModelError, match="does not fit"):
        training.train(pixels, SMALL, latent_dim=4, epochs=1, verbose=0, start=path)
    (tmp_path / "first.training.weights.h5").unlink()
    with pytest.raises(ModelError, match="no training state"):
        training.train(pixels, SMALL, latent_dim=8, epochs=1, verbose=0, start=path)


def test_early_stopping_stops_and_keeps_the_best_epoch() -> None:
    # With patience 1, training ends one epoch after the best held-out loss, or at the last.
    pixels = images_of(20, SMALL, seed=3)
    trained = training.train(pixels, SMALL, latent_dim=4, epochs=8, batch_size=20, patience=1,
                          held_out=0.5, verbose=0)
    info = trained.card
    assert 1 <= info["best_epoch"] <= info["epochs_run"] <= 8
    assert info["epochs_run"] == 8 or info["epochs_run"] == info["best_epoch"] + 1


def test_training_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ModelError, match="at least 2"):
        training.train(images_of(1, SMALL), SMALL, epochs=1, verbose=0)
    with pytest.raises(ModelError, match="unknown preset"):
        training.train(images_of(4, SMALL), SMALL, preset="vae", epochs=1, verbose=0)


def test_save_refuses_a_non_keras_name(tmp_path: Path) -> None:
    encoder, _ = training.seed_preset(SMALL, 4)
    with pytest.raises(ModelError, match=r"\.keras"):
        training.save(training.Training(encoder, {}), tmp_path / "encoder.h5")
    assert list(tmp_path.iterdir()) == []




# -- the default preset -----------------------------------------------------------
COLOUR = Shape(16, "rgb")


def coloured(count: int, seed: int) -> np.ndarray:
    """Blobs in a saturated colour each (red, green or blue, a little of the others), on black."""
    rng = np.random.default_rng(seed)
    colours = (np.eye(3)[rng.integers(3, size=count)] * 0.8 + 0.1).reshape(count, 1, 1, 3)
    return (images_of(count, COLOUR, seed) * colours).astype(np.uint8)


def test_default_preset_trains_saves_and_loads_in_safe_mode(tmp_path: Path) -> None:
    recipe = training.PRESETS[training.DEFAULT_PRESET]
    assert (recipe.color, recipe.luminance) == ("rgb", True)
    pixels = coloured(40, seed=4)
    trained = training.train(pixels, COLOUR, preset=training.DEFAULT_PRESET, latent_dim=8,
                             epochs=1, batch_size=16, verbose=0)
    info = trained.card
    assert info["preset"] == training.DEFAULT_PRESET == "lookalike"
    assert info["recipe"] == recipe.describe()
    # The learned latent, 4x4 cells of 16 edge directions, the colour bins but grey's.
    colour_bins = fitting.CHROMA_BINS ** 2 - (2 * fitting.GREY_BINS + 1) ** 2
    assert info["epochs_run"] == 1 and info["latent_dim"] == 8 + 16 * 16 + colour_bins
    path = tmp_path / "lookalike.keras"
    training.save(trained, path)

    loaded = encoders.load(path)  # safe mode: built-in layers only, no code in the file
    assert (loaded.shape, loaded.latent_dim) == (COLOUR, info["latent_dim"])
    brightness = loaded.model.get_layer("encoder")  # the part that reads brightness
    names = {layer.name for layer in brightness.layers}
    assert {"whiten", "edges_whiten", "appearance"} <= names
    assert "mirror_sum" not in names  # the mirror image's latent comes from the same pass
    kinds = {type(layer).__name__ for layer in loaded.model.layers + brightness.layers}
    assert not any(kind.startswith(("Random", "GaussianNoise", "Lambda")) for kind in kinds)
    latents = loaded.encode(pixels)
    assert np.isfinite(latents).all()
    assert np.array_equal(latents, loaded.encode(pixels))  # augmentation stayed in training
    assert np.allclose(latents, trained.encoder(pixels.astype(np.float32), training=False),
                       atol=1e-4)
    # A mirror image has the same vector; the pictures themselves are told apart.
    assert np.allclose(loaded.encode(pixels[:, :, ::-1].copy()), latents, atol=1e-4)
    assert not np.allclose(latents[0], latents[1], atol=1e-2)
    # A grayscale copy: the same brightness part, and no colour at all.
    grey = np.repeat(fitting.luminance(pixels), 3, axis=-1)  # its own brightness, unrounded
    grey_latents = loaded.model(grey, training=False).numpy()
    parts = 8 + 16 * 16
    assert np.allclose(grey_latents[:, :parts], latents[:, :parts], atol=1e-4)
    assert np.array_equal(grey_latents[:, parts:], np.zeros_like(grey_latents[:, parts:]))
    assert (np.abs(latents[:, parts:]).sum(1) > 0.1).all()
    # The learned part is whitened on the training images, then put on the unit sphere:
    # its mirror sum (6 of 8 numbers), and apart from it its asymmetry at its weight,
    # each principal direction's variance v made v ** (1 - 2 power) (near enough: the
    # whitening's shrink adds a hundredth of the mean variance).
    # The learned part reads the picture without its top and bottom strips (`band`).
    assert {"band", "band_stretched"} <= names and recipe.band > 0
    [learned_part] = [layer for layer in brightness.layers if isinstance(layer, keras.Model)]
    assert "latent_and_asymmetry" in {layer.name for layer in learned_part.layers}
    assert recipe.whiten_power < 0.5
    brightness_only = fitting.luminance(pixels)
    banded = keras.Model(brightness.inputs, brightness.get_layer("band_stretched").output
                         ).predict(brightness_only, verbose=0)
    before = keras.Model(learned_part.inputs,
                         learned_part.get_layer("latent_and_asymmetry").output
                         ).predict(banded, verbose=0)
    learned = keras.Model(brightness.inputs, brightness.get_layer("whiten").output)
    whitened = learned.predict(brightness_only, verbose=0)
    assert np.allclose(whitened.mean(0), 0.0, atol=1e-3)
    for part, values, weight in ((slice(0, 6), before[:, :8], 1.0),
                                 (slice(6, 8), before[:, 8:], recipe.asymmetry)):
        covariance = np.cov(whitened[:, part], rowvar=False)
        assert np.allclose(covariance - np.diag(np.diag(covariance)), 0.0, atol=1e-2)
        variances = np.linalg.eigvalsh(np.cov(values, rowvar=False))[::-1]
        kept = variances[:covariance.shape[0]]
        expected = weight ** 2 * kept * (kept + 0.01 * variances.mean()) ** (
            -2 * recipe.whiten_power)
        assert np.allclose(np.diag(covariance), expected, rtol=0.1)
    assert np.allclose(np.linalg.norm(latents[:, :8], axis=1), 1.0, atol=1e-5)

    # Going on from an encoder whose fixed layers another recipe made is refused.
    plain = replace(recipe, asymmetry=0.0)
    training.save(training.train(pixels, COLOUR, preset=plain, latent_dim=8, epochs=1,
                                 batch_size=16, verbose=0), tmp_path / "plain.keras")
    with pytest.raises(ModelError, match="another recipe"):
        training.train(pixels, COLOUR, preset=recipe, latent_dim=8, epochs=1, batch_size=16,
                       verbose=0, start=tmp_path / "plain.keras")


def test_the_colours_are_a_histogram_of_saturated_colours() -> None:
    """Bilinear shares of the opponent colours in bins, grey's left out, square-rooted."""
    learned = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(2, name="latent")])
    encoder = fitting.with_colours(learned, 1.0)
    pixels = np.zeros((3, 16, 16, 3), np.float32)
    pixels[0] = [255, 0, 0]  # pure red: red-green 1, yellow-blue 0.5, both past the clip
    pixels[1] = [200, 190, 170]  # a warm paper tint: near grey
    pixels[2, :8] = [255, 0, 0]  # half red, half black
    colours = encoder.predict(pixels, verbose=0)[:, 2:]
    # Pure red, shifted by the clip's 0.6 to 1.2 and 1.1 in bins 0.15 apart: in bin 8 of
    # red-green, and two thirds in bin 7, one third in bin 8 of yellow-blue.
    assert np.allclose(np.sort(colours[0])[-2:], np.sqrt([1 / 3, 2 / 3]), atol=0.03)
    assert np.allclose(np.sort(colours[0])[:-2], 0.0, atol=1e-6)
    assert np.array_equal(colours[1], np.zeros_like(colours[1]))
    assert np.allclose(np.sort(colours[2])[-2:], np.sqrt([1 / 6, 1 / 3]), atol=0.03)


def test_brightness_contrast_and_tint_do_not_move_the_learned_latent() -> None:
    """The deeper encoder standardises each image first: an affine change of the
    grey levels (a brighter copy, a tinted ground) leaves its latent where it was, up to
    the standardisation's epsilon (1e-3 against a variance of 0.02 to 0.05 here)."""
    built, _ = training.conv_autoencoder(SMALL, 8)
    pixels = images_of(6, SMALL, seed=7).astype(np.float32) * 0.6 + 40
    brighter = pixels * 1.3 + 20
    assert np.allclose(built.predict(pixels, verbose=0), built.predict(brighter, verbose=0),
                       rtol=0.03, atol=1e-3)


def test_mirror_permutation_is_the_mirror_images_edges() -> None:
    """The edges of a mirror image are the image's, permuted: checked on noise."""
    learned = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(4, name="latent")])
    noise = np.random.default_rng(8).integers(0, 256, (6, 16, 16, 1)).astype(np.float32)
    built = fitting.with_edges(learned, noise.astype(np.uint8), 8, 1.0)
    cells = keras.Model(built.inputs, built.get_layer("cells_flat").output)
    plain = cells.predict(noise, verbose=0)
    flipped = cells.predict(noise[:, :, ::-1], verbose=0)
    assert np.allclose(plain @ fitting.mirror_permutation(8), flipped, atol=1e-5)


def test_square_root_layers_follow_the_square_root() -> None:
    values = keras.Input((5,))
    root = keras.Model(values, fitting.square_root(values, 5, 1e-4, "root"))
    x = np.array([[0.0, 1e-4, 0.003, 0.25, 1.0]], np.float32)
    assert np.allclose(root.predict(x, verbose=0), np.sqrt(x), rtol=0.03, atol=1e-6)


def test_seed_preset_is_the_articles() -> None:
    recipe = training.PRESETS["seed"]
    assert recipe.build is training.seed_preset and recipe.color == "rgb"
    assert (recipe.augment, recipe.jitter, recipe.flip, recipe.contrast) == (0, 0, False, 0)
    assert (recipe.mirror, recipe.whiten, recipe.edges) == (False, False, 0)


def test_plain_batches_reconstruct_the_image_as_it_is() -> None:
    pixels = images_of(8, SMALL, seed=5)
    for inputs, target in training.batches(pixels, 8, training.PRESETS["seed"], seed=0):
        assert np.array_equal(inputs.numpy(), pixels.astype(np.float32))
        assert np.allclose(target.numpy(), pixels / 255.0)


def test_augmented_views_differ_from_the_image_and_from_each_other() -> None:
    pixels = images_of(8, SMALL, seed=6)
    recipe = training.PRESETS[training.DEFAULT_PRESET]
    for (first, second), targets in training.batches(pixels, 8, recipe, seed=0):
        assert first.shape == second.shape == pixels.shape
        assert not np.allclose(first.numpy(), pixels, atol=2.0)
        assert not np.allclose(first.numpy(), second.numpy(), atol=2.0)
        assert np.allclose(targets["image"].numpy(), first.numpy() / 255.0)
