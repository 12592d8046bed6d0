"""Mirrored convolutions: a latent that is the same for an image and its mirror image, in one
pass."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from lookalike.core import encoder as encoders
from lookalike.core import fitting, mirrored, training
from lookalike.core.images import Shape

SMALL = Shape(16, "grayscale")


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """The largest distance between rows of `a` and `b`, relative to the row's length."""
    return float((np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)).max())


def plain_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of `model` and of the models inside it."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found += plain_layers(layer)
    return found


@pytest.mark.parametrize("width", range(2, 70))
def test_the_columns_are_sampled_symmetrically_to_an_odd_width(width: int) -> None:
    kernel, pad = mirrored.columns(width)
    span = width + 2 * pad - kernel
    out = span // 2 + 1
    assert span >= 0 and span % 2 == 0 and out % 2 == 1  # the last window ends at the edge
    # Window i starts at 2i - pad; the mirror of window i is window out - 1 - i.
    for i in range(out):
        first, last = 2 * i - pad, 2 * i - pad + kernel - 1
        assert (width - 1 - last, width - 1 - first) == (2 * (out - 1 - i) - pad,
                                                         2 * (out - 1 - i) - pad + kernel - 1)


def test_the_deeper_encoders_maps_stay_7_by_7() -> None:
    built, _ = training.conv_autoencoder(Shape(56, "grayscale"), 8, equivariant=True)
    assert built.get_layer("latent").input.shape[-1] == 7 * 7 * 128 + 128


def test_one_pass_is_the_sum_over_the_image_and_its_mirror_image() -> None:
    built, _ = training.conv_autoencoder(SMALL, 8, equivariant=True)
    rng = np.random.default_rng(3)
    for layer in built.layers:  # statistics as training leaves them: a pair's nearly equal
        if isinstance(layer, keras.layers.BatchNormalization):
            half = layer.gamma.shape[0] // 2
            gamma, beta, mean, variance = (rng.uniform(0.5, 1.5, half), rng.normal(0, 0.3, half),
                                           rng.normal(0, 0.3, half), rng.uniform(0.5, 2, half))
            layer.set_weights([np.r_[gamma, gamma], np.r_[beta, beta],
                               np.r_[mean, mean * 1.01], np.r_[variance, variance]])
    noise = rng.uniform(0, 255, (6, 16, 16, 1)).astype(np.float32)
    one = mirrored.one_pass(built)
    latents = one.predict(noise, verbose=0)
    assert relative(latents, one.predict(noise[:, :, ::-1], verbose=0)) < 1e-5
    # The very sum that running it twice gives (the moving means up to their pair's average).
    twice = fitting.with_mirror(built).predict(noise, verbose=0)
    assert relative(twice, latents) < 1e-2
    # Plain layers only, each convolution once, batch normalisation folded in.
    kinds = [type(layer).__name__ for layer in one.layers]
    assert kinds.count("Conv2D") == 3 and "BatchNormalization" not in kinds
    assert all(layer.kernel_constraint is None for layer in one.layers
               if isinstance(layer, keras.layers.Conv2D))


def test_the_asymmetry_is_the_same_for_a_mirror_image_and_none_for_a_symmetric_one() -> None:
    built, _ = training.conv_autoencoder(SMALL, 8, equivariant=True)
    rng = np.random.default_rng(4)
    noise = rng.uniform(0, 255, (6, 16, 16, 1)).astype(np.float32)
    symmetric = (noise + noise[:, :, ::-1]) / 2
    one = mirrored.one_pass(built, asymmetry=True)
    both = one.predict(noise, verbose=0)
    assert both.shape == (6, 16)
    assert relative(both, one.predict(noise[:, :, ::-1], verbose=0)) < 1e-5
    # The sum is one_pass's without it; beside it |latent(image) - latent(mirror image)|.
    assert relative(both[:, :8], mirrored.one_pass(built).predict(noise, verbose=0)) < 1e-6
    plain = mirrored.one_pass(built, mirror_sum=False)
    difference = plain.predict(noise, verbose=0) - plain.predict(noise[:, :, ::-1], verbose=0)
    assert np.allclose(both[:, 8:], np.abs(difference), atol=1e-4)
    assert (both[:, 8:].max(axis=1) > 1e-2).all()
    assert np.abs(one.predict(symmetric, verbose=0)[:, 8:]).max() < 1e-4
    # Running the encoder twice gives the same.
    twice = fitting.with_mirror(built, asymmetry=True).predict(noise, verbose=0)
    assert relative(twice, both) < 1e-2


def test_whitening_with_asymmetry_keeps_the_width_and_weighs_the_asymmetry() -> None:
    rng = np.random.default_rng(9)
    values = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    kernel, bias = fitting.whitening_with_asymmetry(values, 0.5)
    assert kernel.shape == (16, 8) and bias.shape == (8,)
    kept = 8 // 4  # a quarter of the width, fewer than ASYMMETRY_DIRECTIONS
    # The sum's directions read only the sum, the asymmetry's only the asymmetry.
    assert not kernel[8:, :8 - kept].any() and not kernel[:8, 8 - kept:].any()
    out = values @ kernel + bias
    assert np.allclose(out.mean(0), 0.0, atol=1e-6)
    spread = out.std(0)
    assert (spread[:8 - kept] > 0.9).all() and (spread[:8 - kept] < 1.01).all()
    assert (spread[8 - kept:] > 0.45).all() and (spread[8 - kept:] < 0.51).all()


def test_partial_whitening_keeps_the_order_of_the_directions_spread() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(2000, 6)) * np.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    for power, spreads in ((0.5, [1.0] * 6), (0.4, 2.0 ** (-0.2 * np.arange(6))),
                           (0.0, [8.0, 4.0, 2.0, 1.0, 0.5, 0.25])):
        kernel, bias = fitting.whitening(values, power, shrink=0.0)
        out = values @ kernel + bias
        assert np.allclose(out.mean(0), 0.0, atol=1e-6)
        # Each principal direction's spread is its old one to the power 1 - 2 power.
        spread = out.std(0) / out.std(0)[0]
        assert np.allclose(spread, np.array(spreads) / spreads[0], rtol=0.08), power


@pytest.mark.slow
def test_a_trained_mirrored_encoder_gives_a_mirror_image_its_vector(tmp_path: Path) -> None:
    shape = Shape(16, "rgb")
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (40, 16, 16, 3), np.uint8)
    recipe = replace(training.PRESETS[training.DEFAULT_PRESET], equivariant=True)
    trained = training.train(pixels, shape, preset=recipe, latent_dim=8, epochs=1,
                             batch_size=16, verbose=0)
    path = tmp_path / "mirrored.keras"
    training.save(trained, path)
    loaded = encoders.load(path)  # safe mode: no constraint, no code in the file
    latents, mirrors = loaded.encode(pixels), loaded.encode(pixels[:, :, ::-1].copy())
    assert relative(latents[:, :8], mirrors[:, :8]) < 1e-4  # the learned latent
    # The whole (the edges' whitening magnifies float noise on noise images: so it does
    # for the encoder that runs twice).
    assert relative(latents, mirrors) < 1e-3
    assert not np.allclose(latents[0], latents[1], atol=1e-2)
    every = plain_layers(loaded.model)
    strided = [layer for layer in every
               if isinstance(layer, keras.layers.Conv2D) and layer.strides == (2, 2)]
    assert len(strided) == 3  # the learned part runs once
    assert "mirror_sum" not in {layer.name for layer in every}


def test_the_band_hides_the_top_and_bottom_strips_from_the_learned_part() -> None:
    """A caption bar along the bottom, a logo strip along the top: the learned part
    does not see them (`fitting.with_band`); it sees the rest of the picture."""
    built, _ = training.conv_autoencoder(SMALL, 4)
    banded = fitting.with_band(built, 0.125)  # 2 rows of 16 at the top and the bottom
    noise = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 1)).astype(np.float32)
    captioned = noise.copy()
    captioned[:, :2], captioned[:, -2:] = 0.0, 255.0
    seen = banded.predict(noise, verbose=0)
    assert np.allclose(banded.predict(captioned, verbose=0), seen, atol=1e-5)
    middle = noise.copy()
    middle[:, 7:9] = 255.0 - middle[:, 7:9]
    assert relative(seen, banded.predict(middle, verbose=0)) > 0.01
    assert relative(seen, built.predict(noise, verbose=0)) > 0.01  # (it is not the whole)
    both = fitting.with_band(fitting.with_mirror(built), 0.125)  # (the band and the mirror
    assert np.allclose(both.predict(noise[:, :, ::-1].copy(), verbose=0),  # commute)
                       both.predict(noise, verbose=0), atol=1e-4)
