"""Convolutions that see a mirror image as the image flipped: a latent that ignores mirroring, in
one pass.

`fitting.with_mirror` makes a latent the same for an image and its mirror
image by running the encoder twice and adding the two latents. Here the
convolutions are built so that one pass gives that very sum:

- Each convolution's output channels come in two halves, the second the
  mirror image of the first: its kernels are the first half's flipped left
  to right, reading the input's halves swapped (`mirrored_kernel`). Then the
  feature maps of a mirror image are the image's flipped left to right with
  their halves swapped: a fixed permutation of the features.
- That holds exactly only if each strided convolution samples the columns
  symmetrically about the middle, which a 3-wide kernel at stride 2 cannot
  do on a map of even width: there the kernel is 4 columns wide. Each
  convolution pads 0 or 1 column on either side so that its output width is
  odd (`columns`: 56 -> 27 -> 13 -> 7); the rows are padded as "same" does.
- Training keeps the weights so (projected gradient descent): after each
  update a constraint averages each kernel with its mirrored self
  (`MirrorPairs`), and batch normalisation's scale and offset over each pair
  of channels (`SamePairs`).

The latent is a Dense layer on the features v: the sum over an image and its
mirror image, Dense(v) + Dense(P v), is one Dense layer, its kernel K + P K;
their difference, one with the kernel K - P K, whose size is as much the same
for both.
`one_pass` rebuilds a trained encoder so, from plain built-in layers (no
constraint: it loads in Keras's safe mode), batch normalisation folded into
the convolutions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .fitting import absolute
from .framework import keras


def mirrored_kernel(kernel: Any, paired_input: bool) -> Any:
    """The kernel (rows, columns, in, out) of the mirrored channels: flipped left to right,
    the input's halves swapped if they are pairs, the output's halves swapped."""
    ops = keras.ops
    flipped = ops.flip(kernel, axis=1)
    if paired_input:
        flipped = ops.roll(flipped, kernel.shape[2] // 2, axis=2)
    return ops.roll(flipped, kernel.shape[3] // 2, axis=3)


class MirrorPairs(keras.constraints.Constraint):
    """Keeps a convolution's second half of channels the mirror image of its first."""

    def __init__(self, paired_input: bool) -> None:
        self.paired_input = paired_input

    def __call__(self, kernel: Any) -> Any:
        return (kernel + mirrored_kernel(kernel, self.paired_input)) / 2

    def get_config(self) -> dict[str, Any]:
        return {"paired_input": self.paired_input}


class SamePairs(keras.constraints.Constraint):
    """Keeps the two channels of each pair at the same value (batch normalisation's)."""

    def __call__(self, values: Any) -> Any:
        return (values + keras.ops.roll(values, values.shape[0] // 2, axis=0)) / 2


def columns(width: int) -> tuple[int, int]:
    """(kernel width, padding on each side) for a stride-2 convolution over `width`
    columns that samples them symmetrically about the middle, to an odd width."""
    kernel = 4 if width % 2 == 0 else 3
    for pad in (0, 1):
        span = width + 2 * pad - kernel
        if span >= 0 and (span // 2 + 1) % 2 == 1:
            return kernel, pad
    raise ValueError(f"no symmetric stride-2 convolution over {width} columns")


def rows(height: int) -> tuple[int, int]:
    """(padding above, padding below) of a stride-2 3-row convolution, as "same" pads."""
    total = max((height + 1) // 2 * 2 - 2 + 3 - height, 0)
    return total // 2, total - total // 2


def convolution(x: Any, width: int, paired_input: bool) -> Any:
    """A stride-2 convolution of `width` channels (two mirrored halves), batch-normalised,
    rectified; `paired_input` when `x`'s channels are such halves too."""
    if width % 2:
        raise ValueError(f"mirrored channels come in pairs: {width} is odd")
    layers = keras.layers
    kernel_width, pad = columns(int(x.shape[2]))
    x = layers.ZeroPadding2D((rows(int(x.shape[1])), (pad, pad)))(x)
    conv = layers.Conv2D(width, (3, kernel_width), strides=2, use_bias=False,
                         kernel_constraint=MirrorPairs(paired_input))
    x = conv(x)
    conv.kernel.assign(conv.kernel_constraint(conv.kernel))  # mirrored from the start
    x = layers.BatchNormalization(momentum=0.9, gamma_constraint=SamePairs(),
                                  beta_constraint=SamePairs())(x)
    return layers.ReLU()(x)


def feature_mirror(side: tuple[int, int, int], flat: bool, pooled: bool) -> np.ndarray:
    """The permutation p of the features (the flattened maps of shape `side`, then their
    averages) with features(mirror image)[i] = features(image)[p[i]]."""
    height, width, channels = side
    index = np.arange(height * width * channels).reshape(side)
    mirrored = np.roll(index[:, ::-1, :], channels // 2, axis=2)
    parts = ([mirrored.ravel()] if flat else []) + (
        [(height * width * channels if flat else 0) + np.roll(np.arange(channels), channels // 2)]
        if pooled else [])
    return np.concatenate(parts)


def one_pass(encoder: keras.Model, mirror_sum: bool = True, asymmetry: bool = False
             ) -> keras.Model:
    """A trained encoder of mirrored convolutions (`training.conv_autoencoder` with
    `equivariant`) rebuilt from plain built-in layers: batch normalisation folded into the
    convolutions, and with `mirror_sum` the latent of the image plus that of its mirror
    image, computed in one pass; with `asymmetry` too, the size of their difference beside
    it (as `fitting.with_mirror` gives, in one pass)."""
    layers = keras.layers
    image = keras.Input(shape=encoder.input_shape[1:], name="image")
    x, trunk = image, encoder.layers[1:]
    flat = pooled = False
    for n, layer in enumerate(trunk):
        if isinstance(layer, layers.Conv2D):
            x = folded(layer, trunk[n + 1])(x)
        elif isinstance(layer, layers.Flatten):
            flat = True
        elif isinstance(layer, layers.GlobalAveragePooling2D):
            pooled = True
        elif not isinstance(layer, layers.BatchNormalization | layers.Concatenate
                                    | layers.Dense):
            if layer.weights:
                raise ValueError(f"{layer.name}: one_pass knows no {type(layer).__name__}")
            x = type(layer).from_config(layer.get_config())(x)
    side = tuple(int(n) for n in x.shape[1:])
    parts = ([layers.Flatten()(x)] if flat else []) + (
        [layers.GlobalAveragePooling2D()(x)] if pooled else [])
    features = parts[0] if len(parts) == 1 else layers.Concatenate()(parts)
    dense = encoder.get_layer("latent")
    plain, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
    back = np.argsort(feature_mirror(side, flat, pooled))  # type: ignore[arg-type]
    kernel = plain
    if mirror_sum:
        kernel, bias = plain + plain[back], 2 * bias
    latent = layers.Dense(dense.units, name="latent")
    out = latent(features)
    latent.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    if mirror_sum and asymmetry:
        difference = layers.Dense(dense.units, use_bias=False, name="latent_difference")
        out = layers.Concatenate(name="latent_and_asymmetry")(
            [out, absolute(difference(features), "asymmetry")])
        difference.set_weights([(plain - plain[back]).astype(np.float32)])
    return keras.Model(image, out, name="encoder")


def folded(conv: keras.layers.Conv2D, norm: keras.layers.BatchNormalization
           ) -> keras.layers.Layer:
    """`conv` then `norm` (at inference) as one plain convolution with a bias, its pairs
    made exact: the moving statistics, which mirrored training views make nearly equal
    over a pair, averaged over it."""
    kernel = np.asarray(conv.kernel_constraint(conv.kernel), np.float64)
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in norm.get_weights())

    def paired(values: np.ndarray) -> np.ndarray:
        return (values + np.roll(values, len(values) // 2)) / 2

    gamma, beta, mean, variance = map(paired, (gamma, beta, mean, variance))
    scale = gamma / np.sqrt(variance + norm.epsilon)
    plain = keras.layers.Conv2D(conv.filters, conv.kernel_size, strides=conv.strides,
                                padding=conv.padding)
    plain.build((None, None, None, kernel.shape[2]))
    plain.set_weights([(kernel * scale).astype(np.float32),
                       (beta - mean * scale).astype(np.float32)])
    return plain
