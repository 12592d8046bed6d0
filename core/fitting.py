"""Fixed layers put after a trained encoder and fitted, not trained, on its training images.

Each function takes an encoder (a Keras model from images to vectors) and
returns a new one whose extra layers are built-in Keras layers with fixed
weights, so the whole still loads in Keras's safe mode:
- `with_mirror`: the sum of the latents of the image and of its mirror image, with or
  without the size of their difference (`absolute`);
- `with_whitening`: the latent PCA-whitened on the training images;
- `with_edges`: directions of the brightness gradient on a grid, beside the latent;
- `with_luminance`, `with_colours`: an encoder of grayscale images made to read RGB
  images by their brightness, with or without a histogram of their colours beside.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .framework import keras

# ITU-R 601 luma, as Pillow converts RGB to grayscale ("L").
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# The colour histogram: bins on a grid over two opponent axes (red-green, yellow-blue),
# each clipped to +-CHROMA_RANGE; the 3x3 bins around grey are left out, so pale
# colours (the tint of paper, a colour cast) count for nothing and a grayscale copy
# has no colour at all.
CHROMA_BINS = 9
CHROMA_RANGE = 0.6
GREY_BINS = 1  # bins on each side of grey left out
# The colours are counted on the image averaged over blocks of this many pixels a
# side: the histogram of a whole image needs no fine detail, and its per-pixel layers
# cost 16 times less.
CHROMA_BLOCK = 4
# Of a mirror-invariant part with its asymmetry (the size of the difference between
# the image's features and its mirror image's), the whitening keeps this many
# directions of the asymmetry and fills the rest of the part's width with the mirror
# sum's: the vector keeps its size (chosen on the development parts, BENCHMARKS.md).
ASYMMETRY_DIRECTIONS = 32


def mirror_image(image: Any, size: int, name: str) -> Any:
    """The left-right mirror of `image` (batch, size, size, channels), by a fixed
    permutation of its columns (Keras has no flip layer that is not random)."""
    layers = keras.layers
    reverse = layers.Dense(size, use_bias=False, trainable=False, name=name)
    columns = layers.Permute((1, 3, 2), name=f"{name}_columns")(image)
    flipped = layers.Permute((1, 3, 2), name=f"{name}_back")(reverse(columns))
    reverse.set_weights([np.eye(size, dtype=np.float32)[::-1]])
    return flipped


def with_mirror(encoder: keras.Model, asymmetry: bool = False) -> keras.Model:
    """`encoder(image) + encoder(mirror image)`: a mirrored copy gets the very same vector.
    With `asymmetry`, |encoder(image) - encoder(mirror image)| beside it, as much the same."""
    size = int(encoder.input_shape[1])
    image = keras.Input(shape=encoder.input_shape[1:], name="image")
    plain, mirrored = encoder(image), encoder(mirror_image(image, size, "mirror"))
    both = keras.layers.Add(name="mirror_sum")([plain, mirrored])
    if asymmetry:
        both = keras.layers.Concatenate(name="mirror_sum_and_asymmetry")([both, absolute(
            keras.layers.Subtract(name="mirror_difference")([plain, mirrored]), "asymmetry")])
    return keras.Model(image, both, name="encoder")


def with_band(encoder: keras.Model, band: float) -> keras.Model:
    """`encoder` reading its image without the top and bottom `band` of its height (each
    a share of it), the rest stretched back to the full height: the strips where a
    copy's caption, watermark or logo bar sits, which the picture itself does not have."""
    layers = keras.layers
    size = int(encoder.input_shape[1])
    rows = round(size * band)
    image = keras.Input(shape=encoder.input_shape[1:], name="image")
    cropped = layers.Cropping2D(((rows, rows), (0, 0)), name="band")(image)
    stretched = layers.Resizing(size, size, interpolation="bilinear",
                                name="band_stretched")(cropped)
    return keras.Model(image, encoder(stretched), name="encoder")


def absolute(values: Any, name: str) -> Any:
    """|values|, as ReLU(x) + ReLU(-x) (Keras has no absolute-value layer)."""
    layers = keras.layers
    negated = layers.Rescaling(-1.0, name=f"{name}_negated")(values)
    return layers.Add(name=f"{name}_size")([layers.ReLU(name=f"{name}_plus")(values),
                                            layers.ReLU(name=f"{name}_minus")(negated)])


def whitening(latents: np.ndarray, power: float = 0.5, shrink: float = 0.01
              ) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of the affine map that PCA-whitens `latents` (n, d).

    Each principal direction is scaled by (variance + shrink * mean
    variance) ** -power: directions that barely vary are not blown up into
    noise. At `power` 0.5 every direction ends with the same spread; below
    it, the directions that vary most keep part of their lead.
    """
    mean = latents.mean(0)
    covariance = np.cov(latents - mean, rowvar=False)
    variances, directions = np.linalg.eigh(covariance)
    variances = np.clip(variances, 0.0, None)
    order = np.argsort(variances)[::-1]
    variances, directions = variances[order], directions[:, order]
    kernel = directions / (variances + shrink * variances.mean() + 1e-12) ** power
    return kernel.astype(np.float32), (-mean @ kernel).astype(np.float32)


def whitening_with_asymmetry(values: np.ndarray, weight: float, power: float = 0.5
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of the map from (n, 2d) values, a mirror sum then its asymmetry, to
    d numbers: the sum and the asymmetry each PCA-whitened at `power` (`whitening`), the
    first ASYMMETRY_DIRECTIONS of the asymmetry (at most a quarter of d) times `weight`
    beside the sum's first ones."""
    width = values.shape[1] // 2
    kept = min(ASYMMETRY_DIRECTIONS, width // 4)
    (summed, summed_bias), (apart, apart_bias) = (
        whitening(part.astype(np.float64), power)
        for part in (values[:, :width], values[:, width:]))
    kernel = np.zeros((2 * width, width), np.float32)
    kernel[:width, :width - kept] = summed[:, :width - kept]
    kernel[width:, width - kept:] = weight * apart[:, :kept]
    return kernel, np.concatenate([summed_bias[:width - kept], weight * apart_bias[:kept]])


def with_whitening(encoder: keras.Model, pixels: np.ndarray, asymmetry: float = 0.0,
                   power: float = 0.5) -> keras.Model:
    """`encoder` followed by a fixed Dense layer that PCA-whitens its latents on `pixels`
    at `power` (`whitening`); with `asymmetry`, latents that are a mirror sum and its
    asymmetry, whitened apart, the asymmetry at that weight (`whitening_with_asymmetry`)."""
    latents = encoder.predict(pixels.astype(np.float32), batch_size=256, verbose=0)
    kernel, bias = (whitening_with_asymmetry(latents, asymmetry, power) if asymmetry
                    else whitening(latents.astype(np.float64), power))
    layer = keras.layers.Dense(kernel.shape[1], trainable=False, name="whiten")
    whitened = keras.Model(encoder.inputs[0], layer(encoder.outputs[0]), name="encoder")
    layer.set_weights([kernel, bias])
    return whitened


# The layers fitted to a set of images (`with_whitening`, `with_edges`): every other
# fixed layer is the same whatever the images.
FITTED = ("whiten", "edges_whiten")


def keep_fitted(encoder: keras.Model, start: keras.Model) -> None:
    """Give `encoder`'s fitted layers the weights of `start`'s (an encoder of the same
    recipe): statistics of a broad mix of pictures, not of the few a user trains on.

    Whitening fitted on one kind of image scales down the directions that
    vary most within it, which are what tells its images apart, and blows up
    the ones that barely vary (BENCHMARKS.md, "Search quality").
    """
    def shapes(layer: keras.layers.Layer | None) -> list[tuple[int, ...]] | None:
        return None if layer is None else [w.shape for w in layer.get_weights()]

    for name in FITTED:
        mine, theirs = find_layer(encoder, name), find_layer(start, name)
        if shapes(mine) != shapes(theirs):
            raise ValueError(f"layer {name!r} differs between the encoders")
        if mine is not None and theirs is not None:
            mine.set_weights(theirs.get_weights())


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer | None:
    """The layer called `name` in `model` or in a model within it, or None."""
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            found = find_layer(layer, name)
            if found is not None:
                return found
    return None


def with_edges(encoder: keras.Model, pixels: np.ndarray, directions: int, weight: float,
               mirror: bool = False, asymmetry: float = 0.0) -> keras.Model:
    """`encoder`'s latent (scaled to unit length) beside a grid of edge directions.

    The edges: the gradient of the brightness in `directions` directions,
    rectified and averaged over a 4x4 grid of cells, square-rooted,
    PCA-whitened on `pixels` (n, size, size, channels) uint8, scaled to unit
    length, times `weight`. With `mirror`, the mirror image's gradients are
    added to the image's first, so that a mirrored copy has the same edges;
    with `asymmetry` too, the size of their difference stands beside that sum,
    whitened apart at that weight (`whitening_with_asymmetry`).
    """
    layers = keras.layers
    size, channels = int(encoder.input_shape[1]), int(encoder.input_shape[3])
    if size % 4:
        raise ValueError(f"edges need an image side divisible by 4, not {size}")
    image = encoder.inputs[0]
    gradient = layers.Conv2D(directions, 3, padding="same", use_bias=False, trainable=False,
                             name="gradient")
    edges = layers.ReLU(name="gradient_rectify")(
        gradient(layers.Rescaling(1.0 / 255, name="unit_range")(image)))
    # 4x4 cells that tile the image exactly, so that the grid mirrors onto itself.
    pooled = layers.AveragePooling2D(size // 4, name="cells")(edges)
    flat = layers.Flatten(name="cells_flat")(pooled)
    width = int(flat.shape[-1])
    if mirror:
        # The mirror image's edges are the image's, cells reversed left to right and
        # each direction a turned to pi - a: a fixed permutation, added.
        mirrored = layers.Dense(width, use_bias=False, trainable=False, name="edges_mirror")
        flipped = mirrored(flat)
        summed = layers.Add(name="edges_mirror_sum")([flat, flipped])
        flat = summed if not asymmetry else layers.Concatenate(name="edges_with_asymmetry")(
            [summed, absolute(layers.Subtract(name="edges_mirror_difference")([flat, flipped]),
                              "edges_asymmetry")])
        mirrored.set_weights([mirror_permutation(directions)])
    roots = square_root(flat, int(flat.shape[-1]), 1e-4, "edges_root")
    whiten = layers.Dense(width, trainable=False, name="edges_whiten")
    parts = [layers.UnitNormalization(name="latent_unit")(encoder.outputs[0]),
             layers.Rescaling(weight, name="edges_weight")(
                 layers.UnitNormalization(name="edges_unit")(whiten(roots)))]
    kernel = np.zeros((3, 3, channels, directions), np.float32)
    for k in range(directions):
        angle = 2 * np.pi * k / directions
        # Central differences of the channels' mean, along x (columns) and y (rows).
        kernel[1, 2, :, k] += 0.5 * np.cos(angle) / channels
        kernel[1, 0, :, k] -= 0.5 * np.cos(angle) / channels
        kernel[2, 1, :, k] += 0.5 * np.sin(angle) / channels
        kernel[0, 1, :, k] -= 0.5 * np.sin(angle) / channels
    gradient.set_weights([kernel])
    seen = keras.Model(image, roots).predict(pixels.astype(np.float32), batch_size=256,
                                             verbose=0)
    whiten.set_weights(list(whitening_with_asymmetry(seen, asymmetry) if mirror and asymmetry
                            else whitening(seen.astype(np.float64))))
    return keras.Model(image, layers.Concatenate(name="appearance")(parts), name="encoder")


def mirror_permutation(directions: int) -> np.ndarray:
    """The (4*4*directions)^2 matrix that takes flattened 4x4 cells of `directions`
    gradient directions to those of the mirror image (row-major cells, direction last)."""
    size = 4 * 4 * directions
    matrix = np.zeros((size, size), np.float32)
    for row in range(4):
        for column in range(4):
            for k in range(directions):
                source = (row * 4 + column) * directions + k
                target = (row * 4 + 3 - column) * directions + (directions // 2 - k) % directions
                matrix[source, target] = 1.0
    return matrix


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


def luminance(pixels: np.ndarray) -> np.ndarray:
    """The brightness (n, size, size, 1) float32 of RGB images (n, size, size, 3) uint8,
    computed as `luminance_layer` computes it."""
    return (pixels.astype(np.float32) @ LUMA)[..., None]


def luminance_layer(image: keras.KerasTensor) -> keras.KerasTensor:
    """A fixed 1x1 convolution from RGB 0..255 to brightness 0..255."""
    luma = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name="luminance")
    out = luma(image)
    luma.set_weights([LUMA.reshape(1, 1, 3, 1)])
    return out


def with_luminance(encoder: keras.Model) -> keras.Model:
    """`encoder` of grayscale images, reading RGB images by their brightness."""
    size = int(encoder.input_shape[1])
    image = keras.Input(shape=(size, size, 3), name="image")
    return keras.Model(image, encoder(luminance_layer(image)), name="encoder")


def with_colours(encoder: keras.Model, weight: float) -> keras.Model:
    """`encoder` of grayscale images reading RGB images by their brightness, beside a
    histogram of their saturated colours.

    The image is averaged over blocks of CHROMA_BLOCK x CHROMA_BLOCK pixels.
    Each block's opponent colours (red - green, (red + green) / 2 - blue, in
    0..1 units, clipped to +-CHROMA_RANGE) are shared between the nearest bins
    of a CHROMA_BINS x CHROMA_BINS grid (bilinear weights, so a small change
    of colour moves little); the bins near grey are left out. The shares of
    the image's blocks, square-rooted (exact colours shared count, however
    few pixels they cover), times `weight`: an image without saturated
    colours has zeros there, whatever its tint.
    """
    layers = keras.layers
    size = int(encoder.input_shape[1])
    bins, spread = CHROMA_BINS, CHROMA_RANGE
    step = 2 * spread / (bins - 1)
    image = keras.Input(shape=(size, size, 3), name="image")
    # Both opponent axes, shifted to 0..2*spread and clipped there.
    opponent = layers.Conv2D(2, 1, trainable=False, name="opponent")
    blocks = layers.AveragePooling2D(CHROMA_BLOCK, name="colour_blocks")(image)
    shifted = layers.ReLU(max_value=2 * spread, name="opponent_clip")(
        opponent(layers.Rescaling(1.0 / 255, name="colour_unit")(blocks)))
    # For each axis and bin centre c: (x - c) / step and its negative, then the
    # triangle max(0, 1 - |x - c| / step).
    offsets = layers.Conv2D(4 * bins, 1, trainable=False, name="bin_offsets")
    triangle = layers.Conv2D(2 * bins, 1, trainable=False, name="bin_triangles")
    near = layers.ReLU(name="bin_share")(triangle(layers.ReLU(name="bin_distance")(
        offsets(shifted))))
    kept = [(i, j) for i in range(bins) for j in range(bins)
            if max(abs(i - bins // 2), abs(j - bins // 2)) > GREY_BINS]
    along_a = layers.Conv2D(len(kept), 1, use_bias=False, trainable=False, name="bins_red_green")
    along_b = layers.Conv2D(len(kept), 1, use_bias=False, trainable=False,
                            name="bins_yellow_blue")
    shares = layers.GlobalAveragePooling2D(name="colour_shares")(
        layers.Multiply(name="colour_bins")([along_a(near), along_b(near)]))
    colours = layers.Rescaling(weight, name="colours_weight")(
        square_root(shares, len(kept), 1e-4, "colours_root"))
    whole = layers.Concatenate(name="brightness_and_colours")(
        [encoder(luminance_layer(image)), colours])

    opponent.set_weights([np.array([[1.0, 0.5], [-1.0, 0.5], [0.0, -1.0]], np.float32)
                          .reshape(1, 1, 3, 2), np.full(2, spread, np.float32)])
    kernel = np.zeros((2, 4 * bins), np.float32)
    bias = np.zeros(4 * bins, np.float32)
    for axis in range(2):
        for n in range(bins):
            plus, minus = (2 * axis) * bins + 2 * n, (2 * axis) * bins + 2 * n + 1
            kernel[axis, plus], bias[plus] = 1 / step, -n
            kernel[axis, minus], bias[minus] = -1 / step, n
    offsets.set_weights([kernel.reshape(1, 1, 2, 4 * bins), bias])
    pairs = np.zeros((4 * bins, 2 * bins), np.float32)
    for k in range(2 * bins):
        pairs[2 * k, k] = pairs[2 * k + 1, k] = -1.0
    triangle.set_weights([pairs.reshape(1, 1, 4 * bins, 2 * bins), np.ones(2 * bins, np.float32)])
    pick_a = np.zeros((2 * bins, len(kept)), np.float32)
    pick_b = np.zeros((2 * bins, len(kept)), np.float32)
    for column, (i, j) in enumerate(kept):
        pick_a[i, column] = pick_b[bins + j, column] = 1.0
    along_a.set_weights([pick_a.reshape(1, 1, 2 * bins, len(kept))])
    along_b.set_weights([pick_b.reshape(1, 1, 2 * bins, len(kept))])
    return keras.Model(image, whole, name="encoder")
