"""Loading and running an encoder: a real TensorFlow model, saved as .keras, loaded safely."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from lookalike.core import card, lite, training
from lookalike.core import encoder as encoders
from lookalike.core.errors import ModelError
from lookalike.core.images import Shape

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def encoder(encoder_path: Path) -> encoders.Encoder:
    return encoders.load(encoder_path)


def images_of(count: int, shape: Shape, seed: int = 0) -> np.ndarray:
    """Random grey levels: any uint8 images will do for loading and running."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, shape.size, shape.size, shape.channels), dtype=np.uint8)


def save_model(built: keras.Model, path: Path) -> Path:
    built.save(path)
    return path


# -- loading --------------------------------------------------------------------
def test_load_gives_shape_latent_and_id(encoder: encoders.Encoder, encoder_path: Path) -> None:
    assert encoder.shape == Shape(56, "grayscale")
    assert encoder.latent_dim == 32
    assert encoder.path == encoder_path
    assert encoder.model_id == "sha256:" + hashlib.sha256(encoder_path.read_bytes()).hexdigest()
    assert encoder.model_id == card.model_id(encoder_path)


def test_load_passes_the_pixel_limit_on(encoder_path: Path) -> None:
    assert encoders.load(encoder_path, max_pixels=1234).shape.max_pixels == 1234


def test_encode_a_batch(encoder: encoders.Encoder) -> None:
    pixels = images_of(10, encoder.shape)
    latents = encoder.encode(pixels)
    assert latents.shape == (10, 32) and latents.dtype == np.float32
    assert np.isfinite(latents).all()
    assert len({row.tobytes() for row in latents}) == 10  # different images, different vectors


def test_encode_is_deterministic_and_independent_of_batching(encoder: encoders.Encoder) -> None:
    pixels = images_of(7, encoder.shape, seed=1)
    first = encoder.encode(pixels)
    assert np.array_equal(first, encoder.encode(pixels))
    assert np.allclose(first, encoder.encode(pixels, batch_size=3), atol=1e-5)
    assert np.allclose(first[4], encoder.encode(pixels[4:5])[0], atol=1e-5)


def test_warm_traces_the_encoding_once_for_every_batch_size(encoder_path: Path) -> None:
    fresh = encoders.load(encoder_path)
    fresh.warm()
    traced = fresh._encode.experimental_get_tracing_count()
    fresh.encode(images_of(3, fresh.shape))
    fresh.encode(images_of(1, fresh.shape))
    assert traced == 1
    assert fresh._encode.experimental_get_tracing_count() == 1


def test_encode_nothing(encoder: encoders.Encoder) -> None:
    latents = encoder.encode(np.zeros((0, 56, 56, 1), np.uint8))
    assert latents.shape == (0, 32) and latents.dtype == np.float32


def test_encoder_rescales_its_input_itself(encoder: encoders.Encoder) -> None:
    # 0..255 go in; the model's first layer divides, so uint8 and float copies agree.
    pixels = images_of(3, encoder.shape, seed=2)
    direct = encoder.model(pixels.astype(np.float32), training=False).numpy()
    assert np.allclose(encoder.encode(pixels), direct, atol=1e-5)
    assert isinstance(encoder.model.layers[0], keras.layers.Rescaling)


# -- the Lite form ----------------------------------------------------------------
def tensorflows(encoder: encoders.Encoder, pixels: np.ndarray) -> np.ndarray:
    return encoder.model(pixels.astype(np.float32), training=False).numpy()


def test_encoding_runs_the_lite_form_and_gives_tensorflows_vectors(
        encoder: encoders.Encoder) -> None:
    pixels = images_of(300, encoder.shape, seed=3)  # more than a batch of 256
    latents = encoder.encode(pixels)
    assert encoder.runner is not None
    theirs = tensorflows(encoder, pixels)
    assert np.abs(latents - theirs).max() <= lite.TOLERANCE * np.abs(theirs).max()


def test_the_lite_form_is_kept_and_read_at_the_next_start(
        encoder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "state" / "lite"
    first = encoders.load(encoder_path, lite_folder=folder)
    first.warm()
    kept = folder / lite.file_name(first.model_id)
    assert first.runner is not None and kept.read_bytes() == first.runner.flat

    def convert(function: object) -> bytes:
        raise AssertionError("converted again")
    monkeypatch.setattr(lite, "convert", convert)
    second = encoders.load(encoder_path, lite_folder=folder)
    pixels = images_of(5, second.shape, seed=4)
    assert np.array_equal(second.encode(pixels), first.encode(pixels))
    assert second._encode.experimental_get_tracing_count() == 0  # nor traced


def test_a_damaged_kept_lite_form_is_made_again_and_another_versions_goes(
        encoder: encoders.Encoder, encoder_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "lite"
    folder.mkdir()
    kept = folder / lite.file_name(encoder.model_id)
    kept.write_bytes(b"not a flatbuffer")
    earlier = folder / f"{encoder.model_id}.tf2.0.0.tflite"  # another TensorFlow's
    earlier.write_bytes(b"an earlier encoder's")
    fresh = encoders.load(encoder_path, lite_folder=folder)
    pixels = images_of(4, fresh.shape, seed=5)
    assert np.allclose(fresh.encode(pixels), encoder.encode(pixels), atol=1e-6)
    assert fresh.runner is not None and kept.read_bytes() == fresh.runner.flat
    assert not earlier.exists()


def test_a_folder_that_cannot_keep_the_lite_form_costs_only_the_keeping(
        encoder_path: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("")
    fresh = encoders.load(encoder_path, lite_folder=blocked / "lite")
    assert fresh.encode(images_of(2, fresh.shape)).shape == (2, 32)
    assert fresh.runner is not None and blocked.read_text() == ""


def test_without_a_lite_form_tensorflow_encodes(encoder_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    def convert(function: object) -> bytes:
        raise RuntimeError("an operation TensorFlow Lite lacks")
    monkeypatch.setattr(lite, "convert", convert)
    fresh = encoders.load(encoder_path)
    pixels = images_of(3, fresh.shape, seed=6)
    assert np.allclose(fresh.encode(pixels), tensorflows(fresh, pixels), atol=1e-5)
    assert fresh.runner is None
    assert "no Lite form (an operation TensorFlow Lite lacks)" in caplog.text


def test_a_lite_form_that_gives_other_vectors_is_not_used(encoder_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    run = lite.Runner.run
    monkeypatch.setattr(lite.Runner, "run", lambda self, pixels: run(self, pixels) * 1.01)
    fresh = encoders.load(encoder_path)
    pixels = images_of(3, fresh.shape, seed=7)
    assert np.allclose(fresh.encode(pixels), tensorflows(fresh, pixels), atol=1e-5)
    assert fresh.runner is None
    assert "its Lite form gives other vectors" in caplog.text


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


def test_input_shape_is_read_from_the_file_without_loading_it(encoder_path: Path,
                                                             tmp_path: Path) -> None:
    from lookalike.core.config import DEFAULT_MODEL

    assert card.input_shape(encoder_path) == (56, 1)  # (the test encoder is grayscale)
    assert card.input_shape(DEFAULT_MODEL) == (56, 3)
    loaded = encoders.load(DEFAULT_MODEL)
    assert (loaded.shape.size, loaded.shape.channels) == card.input_shape(DEFAULT_MODEL)
    (tmp_path / "text.keras").write_text("not a zip")
    assert card.input_shape(tmp_path / "text.keras") is None
    assert card.input_shape(tmp_path / "missing.keras") is None


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
        encoders.load(path)
    assert "safe_mode" in str(caught.value)  # refused for the code it carries, not as garbage
    assert keras.saving.load_model(path, safe_mode=False).output_shape == (None, 4)


def test_not_a_keras_path(tmp_path: Path, encoder_path: Path) -> None:
    legacy = shutil.copy(encoder_path, tmp_path / "encoder.h5")
    with pytest.raises(ModelError, match=r"must be a \.keras file"):
        encoders.load(Path(legacy))


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such encoder file"):
        encoders.load(tmp_path / "missing.keras")


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04 not really a zip"])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.keras").write_bytes(content)
    with pytest.raises(ModelError, match="not a .keras file, or a damaged one"):
        encoders.load(tmp_path / "bad.keras")


def test_a_zip_that_is_no_keras_model(tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("notes.txt", "not a model")
    with pytest.raises(ModelError, match="cannot load the encoder"):
        encoders.load(tmp_path / "other.keras")


def test_wrong_output_rank_is_refused(tmp_path: Path) -> None:
    feature_map = keras.Sequential([
        keras.Input(shape=(16, 16, 1)),
        keras.layers.Conv2D(4, 3, strides=2, padding="same"),  # (8, 8, 4): not a vector
    ])
    path = save_model(feature_map, tmp_path / "map.keras")
    with pytest.raises(ModelError, match="expected an encoder"):
        encoders.load(path)


@pytest.mark.parametrize("input_shape", [(16, 24, 1), (16, 16, 2), (256,)])
def test_wrong_input_shape_is_refused(tmp_path: Path, input_shape: tuple[int, ...]) -> None:
    odd = keras.Sequential([keras.Input(shape=input_shape), keras.layers.Flatten(),
                            keras.layers.Dense(4)])
    path = save_model(odd, tmp_path / "odd.keras")
    with pytest.raises(ModelError, match="expected an encoder"):
        encoders.load(path)


def test_an_rgb_encoder_reads_rgb(tmp_path: Path) -> None:
    encoder, _ = training.seed_preset(Shape(24, "rgb"), 5)
    loaded = encoders.load(save_model(encoder, tmp_path / "rgb.keras"))
    assert loaded.shape == Shape(24, "rgb") and loaded.latent_dim == 5
    assert loaded.encode(np.zeros((2, 24, 24, 3), np.uint8)).shape == (2, 5)


def test_keras_loads_without_the_libraries_it_would_load_for_nothing() -> None:
    """pandas, scikit-learn and SciPy stay out while the encoder loads and encodes, and
    can be imported afterwards; one imported before is left as it was."""
    script = textwrap.dedent("""\
        import importlib, importlib.util, sys
        import numpy as np
        installed = [name for name in ("pandas", "sklearn") if importlib.util.find_spec(name)]
        assert "sklearn" in installed  # the test extra's
        import scipy
        before = sys.modules["scipy"]
        from lookalike.core import encoder as encoders
        from lookalike.core.config import DEFAULT_MODEL
        encoder = encoders.load(DEFAULT_MODEL)
        assert encoder.encode(np.zeros((1, *encoder.model.input_shape[1:]), np.uint8)).shape[0] == 1
        assert [name for name in installed if name in sys.modules] == []
        assert sys.modules["scipy"] is before
        for name in installed:
            assert importlib.import_module(name).__name__ == name
        print("OK", installed)
        """)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.startswith("OK"), finished.stdout
