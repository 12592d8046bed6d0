"""The encoder: a real TensorFlow model, trained tiny, saved as .keras and loaded safely."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from lookalike.core import card, model
from lookalike.core.errors import ModelError
from lookalike.core.images import Shape

pytestmark = pytest.mark.slow

SMALL = Shape(16, "grayscale")


@pytest.fixture(scope="module")
def encoder(encoder_path: Path) -> model.Encoder:
    return model.load(encoder_path)


def images_of(count: int, shape: Shape, seed: int = 0) -> np.ndarray:
    """Blobs of light on dark: a little structure for an autoencoder to learn."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape.size, 0:shape.size]
    out = np.zeros((count, shape.size, shape.size, shape.channels), np.uint8)
    for n in range(count):
        cy, cx, r = rng.uniform(0, shape.size, 2).tolist() + [rng.uniform(2, shape.size / 3)]
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
        out[n] = (blob * 255).astype(np.uint8)[:, :, None]
    return out


def save_model(built: keras.Model, path: Path) -> Path:
    built.save(path)
    return path


# -- loading --------------------------------------------------------------------
def test_load_gives_shape_latent_and_id(encoder: model.Encoder, encoder_path: Path) -> None:
    assert encoder.shape == Shape(56, "grayscale")
    assert encoder.latent_dim == 32
    assert encoder.path == encoder_path
    assert encoder.model_id == "sha256:" + hashlib.sha256(encoder_path.read_bytes()).hexdigest()
    assert encoder.model_id == card.model_id(encoder_path)


def test_load_passes_the_pixel_limit_on(encoder_path: Path) -> None:
    assert model.load(encoder_path, max_pixels=1234).shape.max_pixels == 1234


def test_encode_a_batch(encoder: model.Encoder) -> None:
    pixels = images_of(10, encoder.shape)
    latents = encoder.encode(pixels)
    assert latents.shape == (10, 32) and latents.dtype == np.float32
    assert np.isfinite(latents).all()
    assert len({row.tobytes() for row in latents}) == 10  # different images, different vectors


def test_encode_is_deterministic_and_independent_of_batching(encoder: model.Encoder) -> None:
    pixels = images_of(7, encoder.shape, seed=1)
    first = encoder.encode(pixels)
    assert np.array_equal(first, encoder.encode(pixels))
    assert np.allclose(first, encoder.encode(pixels, batch_size=3), atol=1e-5)
    assert np.allclose(first[4], encoder.encode(pixels[4:5])[0], atol=1e-5)


def test_warm_traces_the_encoding_once_for_every_batch_size(encoder_path: Path) -> None:
    fresh = model.load(encoder_path)
    fresh.warm()
    traced = fresh._encode.experimental_get_tracing_count()
    fresh.encode(images_of(3, fresh.shape))
    fresh.encode(images_of(1, fresh.shape))
    assert traced == 1
    assert fresh._encode.experimental_get_tracing_count() == 1


def test_encode_nothing(encoder: model.Encoder) -> None:
    latents = encoder.encode(np.zeros((0, 56, 56, 1), np.uint8))
    assert latents.shape == (0, 32) and latents.dtype == np.float32


def test_encoder_rescales_its_input_itself(encoder: model.Encoder) -> None:
    # 0..255 go in; the model's first layer divides, so uint8 and float copies agree.
    pixels = images_of(3, encoder.shape, seed=2)
    direct = encoder.model(pixels.astype(np.float32), training=False).numpy()
    assert np.allclose(encoder.encode(pixels), direct, atol=1e-5)
    assert isinstance(encoder.model.layers[0], keras.layers.Rescaling)


def test_the_card_of_the_trained_encoder(encoder_path: Path) -> None:
    written = card.read(encoder_path)
    assert card.card_path(encoder_path) == encoder_path.with_name("digits.card.json")
    assert written["model_id"] == card.model_id(encoder_path)
    assert written["schema"] == card.SCHEMA
    assert (written["preset"], written["image_size"], written["color"], written["latent_dim"]) == (
        "seed", 56, "grayscale", 32)
    assert written["epochs_requested"] == 3
    assert 1 <= written["best_epoch"] <= written["epochs_run"] <= 3
    assert written["train_images"] + written["held_out_images"] == 1797
    assert written["held_out_images"] == round(1797 * 0.1)
    assert 0 < written["held_out_loss"] < 1 and 0 < written["train_loss"] < 1
    assert written["data"] == "digits" and written["data_fingerprint"].startswith("sha256:")
    for key in ("batch_size", "seed", "seconds", "tensorflow", "keras", "saved_at"):
        assert key in written, key


def test_card_of_a_model_without_one_is_empty(tmp_path: Path) -> None:
    assert card.read(tmp_path / "lonely.keras") == {}
    (tmp_path / "bad.card.json").write_text("{oops")
    assert card.read(tmp_path / "bad.keras") == {}


def test_a_copied_model_keeps_its_id_and_a_changed_one_does_not(encoder_path: Path,
                                                                tmp_path: Path) -> None:
    copy = shutil.copy(encoder_path, tmp_path / "copy.keras")
    assert card.model_id(Path(copy)) == card.model_id(encoder_path)
    with open(copy, "ab") as changed:
        changed.write(b"\0")
    assert card.model_id(Path(copy)) != card.model_id(encoder_path)


# -- refusing -------------------------------------------------------------------
def test_a_lambda_layer_is_refused_by_safe_mode(tmp_path: Path) -> None:
    carrying_code = keras.Sequential([
        keras.Input(shape=(16, 16, 1)),
        keras.layers.Lambda(lambda x: x * 2.0),  # Python bytecode in the file: never run it
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])
    path = save_model(carrying_code, tmp_path / "lambda.keras")
    with pytest.raises(ModelError, match="cannot load the encoder") as caught:
        model.load(path)
    assert "safe_mode" in str(caught.value)  # refused for the code it carries, not as garbage
    assert keras.saving.load_model(path, safe_mode=False).output_shape == (None, 4)


def test_not_a_keras_path(tmp_path: Path, encoder_path: Path) -> None:
    legacy = shutil.copy(encoder_path, tmp_path / "encoder.h5")
    with pytest.raises(ModelError, match=r"must be a \.keras file"):
        model.load(Path(legacy))


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such encoder file"):
        model.load(tmp_path / "missing.keras")


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04 not really a zip"])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.keras").write_bytes(content)
    with pytest.raises(ModelError, match="not a .keras file, or a damaged one"):
        model.load(tmp_path / "bad.keras")


def test_a_zip_that_is_no_keras_model(tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("notes.txt", "not a model")
    with pytest.raises(ModelError, match="cannot load the encoder"):
        model.load(tmp_path / "other.keras")


def test_wrong_output_rank_is_refused(tmp_path: Path) -> None:
    feature_map = keras.Sequential([
        keras.Input(shape=(16, 16, 1)),
        keras.layers.Conv2D(4, 3, strides=2, padding="same"),  # (8, 8, 4): not a vector
    ])
    path = save_model(feature_map, tmp_path / "map.keras")
    with pytest.raises(ModelError, match="expected an encoder"):
        model.load(path)


@pytest.mark.parametrize("input_shape", [(16, 24, 1), (16, 16, 2), (256,)])
def test_wrong_input_shape_is_refused(tmp_path: Path, input_shape: tuple[int, ...]) -> None:
    odd = keras.Sequential([keras.Input(shape=input_shape), keras.layers.Flatten(),
                            keras.layers.Dense(4)])
    path = save_model(odd, tmp_path / "odd.keras")
    with pytest.raises(ModelError, match="expected an encoder"):
        model.load(path)


def test_an_rgb_encoder_reads_rgb(tmp_path: Path) -> None:
    encoder, _ = model.seed_preset(Shape(24, "rgb"), 5)
    loaded = model.load(save_model(encoder, tmp_path / "rgb.keras"))
    assert loaded.shape == Shape(24, "rgb") and loaded.latent_dim == 5
    assert loaded.encode(np.zeros((2, 24, 24, 3), np.uint8)).shape == (2, 5)


# -- training -------------------------------------------------------------------
def test_seed_preset_shapes() -> None:
    encoder, decoder = model.seed_preset(Shape(56, "rgb"), 128)
    assert encoder.input_shape == (None, 56, 56, 3) and encoder.output_shape == (None, 128)
    assert decoder.input_shape == (None, 128) and decoder.output_shape == (None, 56, 56, 3)


def test_tiny_training_saves_and_loads(tmp_path: Path) -> None:
    pixels = images_of(20, SMALL)
    trained = model.train(pixels, SMALL, latent_dim=8, epochs=2, batch_size=8, patience=1,
                          verbose=0)
    info = trained.card
    assert info["epochs_requested"] == 2
    assert 1 <= info["epochs_run"] <= 2 and 1 <= info["best_epoch"] <= info["epochs_run"]
    assert (info["train_images"], info["held_out_images"]) == (18, 2)
    assert (info["image_size"], info["color"], info["latent_dim"]) == (16, "grayscale", 8)
    assert np.isfinite(info["held_out_loss"]) and np.isfinite(info["train_loss"])

    path = tmp_path / "sub" / "tiny.keras"
    identity = model.save(trained, path, {"data": "blobs"})
    assert identity == card.model_id(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.card.json", "tiny.keras"]
    written = card.read(path)
    assert written["model_id"] == identity and written["data"] == "blobs"
    assert written["epochs_run"] == info["epochs_run"]

    loaded = model.load(path)
    assert (loaded.shape, loaded.latent_dim, loaded.model_id) == (SMALL, 8, identity)
    direct = trained.encoder(pixels[:4].astype(np.float32), training=False).numpy()
    assert np.allclose(loaded.encode(pixels[:4]), direct, atol=1e-5)  # same weights


def test_early_stopping_stops_and_keeps_the_best_epoch() -> None:
    # With patience 1, training ends one epoch after the best held-out loss, or at the last.
    pixels = images_of(20, SMALL, seed=3)
    trained = model.train(pixels, SMALL, latent_dim=4, epochs=8, batch_size=20, patience=1,
                          held_out=0.5, verbose=0)
    info = trained.card
    assert 1 <= info["best_epoch"] <= info["epochs_run"] <= 8
    assert info["epochs_run"] == 8 or info["epochs_run"] == info["best_epoch"] + 1


def test_training_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ModelError, match="at least 2"):
        model.train(images_of(1, SMALL), SMALL, epochs=1, verbose=0)
    with pytest.raises(ModelError, match="unknown preset"):
        model.train(images_of(4, SMALL), SMALL, preset="vae", epochs=1, verbose=0)


def test_save_refuses_a_non_keras_name(tmp_path: Path) -> None:
    encoder, _ = model.seed_preset(SMALL, 4)
    with pytest.raises(ModelError, match=r"\.keras"):
        model.save(model.Training(encoder, {}), tmp_path / "encoder.h5")
    assert list(tmp_path.iterdir()) == []


# -- the default preset -----------------------------------------------------------
TINTED = Shape(16, "rgb")


def tinted(count: int, seed: int) -> np.ndarray:
    """Blobs in a random colour each: something for the palette to count."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.2, 1.0, (count, 1, 1, 3))
    return (images_of(count, TINTED, seed) * colours).astype(np.uint8)


def test_default_preset_trains_saves_and_loads_in_safe_mode(tmp_path: Path) -> None:
    pixels = tinted(40, seed=4)
    recipe = model.PRESETS[model.DEFAULT_PRESET]
    trained = model.train(pixels, TINTED, preset=model.DEFAULT_PRESET, latent_dim=8, epochs=1,
                          batch_size=16, verbose=0)
    info = trained.card
    assert info["preset"] == model.DEFAULT_PRESET == "lookalike"
    assert info["recipe"] == recipe.describe()
    # The learned latent, the palette (at most the colours seen), 4x4 cells of edges.
    assert info["epochs_run"] == 1 and 8 + 16 * 16 < info["latent_dim"] <= 8 + 512 + 16 * 16
    path = tmp_path / "lookalike.keras"
    model.save(trained, path)

    loaded = model.load(path)  # safe mode: built-in layers only, no code in the file
    assert (loaded.shape, loaded.latent_dim) == (TINTED, info["latent_dim"])
    names = {layer.name for layer in loaded.model.layers}
    assert {"whiten", "palette", "edges_whiten", "appearance"} <= names
    kinds = {type(layer).__name__ for layer in loaded.model.layers}
    assert not any(kind.startswith(("Random", "GaussianNoise", "Lambda")) for kind in kinds)
    latents = loaded.encode(pixels)
    assert np.isfinite(latents).all()
    assert np.array_equal(latents, loaded.encode(pixels))  # augmentation stayed in training
    assert np.allclose(latents, trained.encoder(pixels.astype(np.float32), training=False),
                       atol=1e-4)
    # The learned part is whitened on the training images, then put on the unit sphere.
    learned = keras.Model(loaded.model.inputs, loaded.model.get_layer("whiten").output)
    whitened = learned.predict(pixels.astype(np.float32), verbose=0)
    assert np.allclose(whitened.mean(0), 0.0, atol=1e-3)
    covariance = np.cov(whitened, rowvar=False)
    assert np.allclose(covariance - np.diag(np.diag(covariance)), 0.0, atol=1e-2)
    assert np.allclose(np.linalg.norm(latents[:, :8], axis=1), 1.0, atol=1e-5)


def test_the_palette_tells_colours_apart_and_ignores_where_they_are() -> None:
    red, blue = np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 16, 16, 3), np.uint8)
    red[0, :8, :, 0] = red[1, 8:, :, 0] = 250  # red on black, top half or bottom half
    blue[0, :8, :, 2] = blue[1, 8:, :, 2] = 250
    pixels = np.concatenate([red, blue])
    learned = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(),
                                keras.layers.Dense(4, name="latent")])
    encoder = model.with_appearance(learned, pixels, model.Recipe(model.seed_preset, palette=8))
    colour = keras.Model(encoder.inputs, encoder.get_layer("palette_centre").output)
    parts = colour.predict(pixels.astype(np.float32), verbose=0)
    assert np.allclose(parts[0], parts[1], atol=1e-5) and np.allclose(parts[2], parts[3], atol=1e-5)
    assert not np.allclose(parts[0], parts[2], atol=0.1)
    # Half red, half black: the square roots of the shares, less their mean.
    shares = keras.Model(encoder.inputs, encoder.get_layer("palette_share").output)
    assert np.allclose(np.sort(shares.predict(pixels[:1].astype(np.float32), verbose=0)[0])[-2:],
                       [0.5, 0.5])


@pytest.mark.parametrize("levels", [16, 256])
def test_channel_levels_bucket_values_as_the_discretization_did(levels: int) -> None:
    """The lookup table gives each channel value the level that bucketing v / 255 at the
    boundaries i / levels gave (the saved encoders before it did that)."""
    values = np.arange(256, dtype=np.float32) * np.float32(1 / 255)
    boundaries = np.array([i / levels for i in range(1, levels)], np.float32)
    bucketed = np.searchsorted(boundaries, values, side="right")
    assert np.array_equal(model.channel_levels(levels).ravel(), bucketed)


def test_the_palette_counts_every_channel_value_at_its_level() -> None:
    """Every value 0..255 of every channel goes through the encoder's own lookup."""
    pixels = np.zeros((1, 16, 16, 3), np.uint8)
    pixels[0].reshape(-1, 3)[:, 0] = np.arange(256)  # red runs through every value
    learned = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(),
                                keras.layers.Dense(4, name="latent")])
    encoder = model.with_appearance(learned, pixels, model.Recipe(model.seed_preset, palette=8))
    bins = keras.Model(encoder.inputs, encoder.get_layer("colour_bins").output)
    joint = bins.predict(pixels.astype(np.float32), verbose=0)[0]
    assert np.array_equal(joint, (np.arange(256) // 16) * 256)  # red's level, times 16 x 16


def whole_model(encoder: model.Encoder, pixels: np.ndarray) -> np.ndarray:
    """The vectors of the saved Keras model itself, with TensorFlow doing every step."""
    return encoder.model(pixels.astype(np.float32), training=False).numpy()


def test_the_shipped_encoder_counts_its_palette_in_numpy_bit_for_bit() -> None:
    """The default encoder's palette count runs outside TensorFlow (`PaletteCount`): the
    vectors must be exactly the whole model's, over noise and every channel value."""
    from lookalike.core.config import DEFAULT_MODEL

    encoder = model.load(DEFAULT_MODEL)
    assert encoder.palette is not None and encoder.palette.colours == 512
    pixels = np.random.default_rng(5).integers(0, 256, (40, 56, 56, 3), dtype=np.uint8)
    pixels[0].reshape(-1)[:256 * 3] = np.repeat(np.arange(256), 3)  # every value, each channel
    pixels[1] = 255
    counted = keras.Model(encoder.model.inputs[0], encoder.model.get_layer("palette_count").output)
    assert np.array_equal(encoder.palette(pixels), counted(pixels.astype(np.float32)).numpy())
    assert np.array_equal(encoder.encode(pixels), whole_model(encoder, pixels))


@pytest.mark.parametrize("shape", [TINTED, Shape(16, "grayscale")])
def test_a_trained_palette_is_counted_in_numpy_bit_for_bit(shape: Shape) -> None:
    pixels = tinted(12, seed=6)
    if shape.channels == 1:  # 256 levels a channel, one channel
        pixels = pixels.max(axis=-1, keepdims=True)
    learned = keras.Sequential([keras.Input((16, 16, shape.channels)), keras.layers.Flatten(),
                                keras.layers.Dense(4, name="latent")])
    built = model.with_appearance(learned, pixels,
                                  model.Recipe(model.seed_preset, palette=8, edges=4))
    encoder = model.Encoder(built, shape, "test", Path("test.keras"))
    assert encoder.palette is not None
    assert np.array_equal(encoder.encode(pixels), whole_model(encoder, pixels))


def test_an_encoder_without_a_palette_runs_whole(encoder: model.Encoder) -> None:
    assert encoder.palette is None


def test_square_root_layers_follow_the_square_root() -> None:
    values = keras.Input((5,))
    root = keras.Model(values, model.square_root(values, 5, 1e-4, "root"))
    x = np.array([[0.0, 1e-4, 0.003, 0.25, 1.0]], np.float32)
    assert np.allclose(root.predict(x, verbose=0), np.sqrt(x), rtol=0.03, atol=1e-6)


def test_palette_of_finds_the_clusters() -> None:
    colours = np.array([[0.0, 0, 0], [0.05, 0, 0], [1, 1, 1], [0.95, 1, 1], [0.5, 0.5, 0.5]])
    weights = np.array([10, 10, 10, 10, 0])
    nearest = model.palette_of(colours, weights, 2, seed=0)
    assert nearest[0] == nearest[1] != nearest[2] == nearest[3]


def test_seed_preset_is_the_articles() -> None:
    recipe = model.PRESETS["seed"]
    assert recipe.build is model.seed_preset
    assert (recipe.augment, recipe.noise, recipe.structure, recipe.whiten) == (False, 0, 0, False)


def test_batches_restore_the_original_or_keep_the_augmented_image() -> None:
    pixels = images_of(8, SMALL, seed=5)
    restored = model.Recipe(model.conv_autoencoder, augment=True, noise=0.1, restore=True)
    for inputs, target in model.batches(pixels, 8, restored, seed=0):
        assert np.allclose(target.numpy(), pixels / 255.0)  # the clean original
        assert not np.allclose(inputs.numpy(), pixels)  # what the encoder saw was changed
    plain = model.Recipe(model.seed_preset)
    for inputs, target in model.batches(pixels, 8, plain, seed=0):
        assert np.array_equal(inputs.numpy(), pixels.astype(np.float32))
        assert np.allclose(target.numpy(), pixels / 255.0)


def test_jitter_changes_the_colours_the_encoder_sees() -> None:
    pixels = tinted(8, seed=6)
    jittered = model.Recipe(model.conv_autoencoder, augment=1.0, jitter=1.0, restore=True)
    for inputs, target in model.batches(pixels, 8, jittered, seed=0):
        assert inputs.shape == pixels.shape
        assert np.allclose(target.numpy(), pixels / 255.0)
        seen = inputs.numpy().reshape(8, -1, 3).mean(1)
        assert not np.allclose(seen, pixels.reshape(8, -1, 3).mean(1), atol=2.0)
