"""Near-duplicate decisions on generated copies and distinct drawings, and the groups."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from lookalike.core import copies, images
from lookalike.core.store import Answer, Entry, Library

SHAPE = images.Shape(56, "rgb")  # the shipped encoder's input


def picture(seed: int = 0) -> Image.Image:
    """A photo-like picture: smooth colour fields with some texture."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 9, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((360, 240), Image.Resampling.BICUBIC),
                        np.float32)
    return Image.fromarray((smooth + rng.normal(0, 12, smooth.shape)).clip(0, 255)
                           .astype(np.uint8))


def png(image: Image.Image) -> bytes:
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    return encoded.getvalue()


def thumb_of(image: Image.Image) -> copies.Picture:
    """The thumbnail and shape of an image as ingest makes them: from the pixels the
    encoder reads, and the image's size."""
    return copies.Picture(copies.thumbnail(images.decode(png(image), SHAPE)),
                          copies.shape_of(*image.size))


def made_copies(original: Image.Image) -> dict[str, Image.Image]:
    w, h = original.size
    return {"half": original.resize((w // 2, h // 2)),
            "mirror": ImageOps.mirror(original),
            "gray": original.convert("L").convert("RGB"),
            "crop80": original.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
            "crop60": original.crop((w // 5, h // 5, w - w // 5, h - h // 5)),
            "turned": original.rotate(5, Image.Resampling.BICUBIC)}


def test_copies_are_marked_and_other_pictures_are_not() -> None:
    original = picture()
    judge = copies.Judge("normal")
    mine = thumb_of(original)
    for kind, copy in made_copies(original).items():
        assert judge.is_copy(0.5, mine, thumb_of(copy)), kind
    assert not judge.is_copy(0.5, mine, thumb_of(picture(seed=1)))
    assert not judge.is_copy(1.5, mine, mine)  # beyond the learned distance: never
    assert not judge.is_copy(0.0, mine, None)  # no thumbnail (an older library): never


def test_distinct_drawings_of_one_digit_are_not_copies(digits_root: Path) -> None:
    """Different hands' 3s are look-alikes, not copies: few of their pairs are marked."""
    judge = copies.Judge("normal")
    thumbs = [thumb_of(Image.open(p).convert("RGB"))
              for p in sorted((digits_root / "3").glob("*.png"))[:40]]
    marked = [judge.is_copy(0.5, a, b) for i, a in enumerate(thumbs) for b in thumbs[i + 1:]]
    assert np.mean(marked) < 0.01


def test_groups_join_marked_pairs_largest_first() -> None:
    assert copies.groups([(1, 2), (2, 3), (7, 8), (3, 1)]) == [[1, 2, 3], [7, 8]]
    assert copies.groups([]) == []


def test_a_deletion_splits_a_group(tmp_path: Path) -> None:
    """a - b - c joined through b: once b leaves the library, a and c are no group."""
    with Library(tmp_path / "library.sqlite") as library:
        library.apply([Entry(name, 10, 1, name * 8, "m", np.ones(4, np.float32))
                       for name in "abcd"])
        ids = {r.path: r.id for r in library.records().values()}
        a, b, c, d = (ids[name] for name in "abcd")
        library.mark_answered([Answer(a, "x", [b], None, [b]), Answer(c, "x", [b, d], None, [b]),
                               Answer(d, "x", [c], None, [c])])
        assert copies.groups(library.copy_pairs()) == [sorted([a, b, c, d])]
        library.apply(deletions=["b"])
        assert copies.groups(library.copy_pairs()) == [sorted([c, d])]


def test_the_judge_keeps_a_bounded_cache_and_judges_the_same_after_clearing_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = picture()
    mine, theirs = thumb_of(original), thumb_of(picture(seed=1))
    copied = [thumb_of(copy) for copy in made_copies(original).values()]
    judge = copies.Judge("normal")
    assert judge.copies(mine, [(0.5, thumb) for thumb in [*copied, theirs]]) == \
        [True] * len(copied) + [False]
    monkeypatch.setattr(copies, "CACHED_VIEWS", 3)  # fewer than one query's thumbnails
    small = copies.Judge("normal")
    assert small.copies(mine, [(0.5, thumb) for thumb in copied]) == [True] * len(copied)
    # A new query with a neighbour cached before: the cache is cleared, the views made again.
    assert small.copies(theirs, [(0.5, copied[0]), (0.5, mine)]) == [False, False]
    assert len(small.rows) == 3
    small.shrink(3)  # no more than it may keep: kept
    assert len(small.rows) == 3 and small.scores
    small.shrink(2)  # more: let go, and judged the same after
    assert not small.rows and not small.scores and small.seen is None
    assert small.copies(theirs, [(0.5, copied[0]), (0.5, mine)]) == [False, False]


def test_a_full_cache_of_pair_scores_is_let_go_without_losing_a_batchs_scores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of pairs, some of them judged before, that would overflow the kept
    scores: the old ones go first, and every pair of the batch is judged (a bulk
    answer of 10^5 images fills the cache)."""
    original = picture()
    mine, theirs = thumb_of(original), thumb_of(picture(seed=1))
    copied = [thumb_of(copy) for copy in made_copies(original).values()]
    monkeypatch.setattr(copies, "CACHED_SCORES", len(copied))
    judge = copies.Judge("normal")
    assert judge.copies(mine, [(0.5, thumb) for thumb in copied]) == [True] * len(copied)
    assert len(judge.scores) == len(copied)
    again = [(0.5, thumb) for thumb in copied] + [(0.5, theirs), (0.5, copied[0])]
    assert judge.copies(mine, again) == [True] * len(copied) + [False, True]
    assert len(judge.scores) == len(copied) + 1


def test_the_turn_matrix_is_pillows_rotation() -> None:
    """The views' turns are Pillow's bilinear rotation, written as a matrix."""
    image = np.random.default_rng(0).uniform(0, 255, (copies.THUMB_SIDE,) * 2).astype(np.float32)
    for degrees in (-6.0, 3.0):
        turned = Image.fromarray(image, "F").rotate(degrees, Image.Resampling.BILINEAR)
        made = image.reshape(1, -1) @ copies.turn_map(degrees)
        np.testing.assert_allclose(made.reshape(image.shape), np.asarray(turned), atol=1e-3)
        # ... and the gathers that make it for many thumbnails at once
        gathered = copies.turned(image.reshape(-1, 1), degrees, 0)
        np.testing.assert_allclose(gathered.ravel(), made.ravel(), atol=1e-3)


def test_the_crops_of_many_thumbnails_at_once_are_each_ones_crop() -> None:
    thumbs = np.random.default_rng(1).uniform(0, 255, (3, copies.THUMB_SIDE ** 2)).astype(
        np.float32)
    keeps = (1.0, 0.75, 0.6)
    made = copies.crops(np.ascontiguousarray(thumbs.T), keeps)  # (keeps, disc, thumbnails)
    for n, thumb in enumerate(thumbs):
        for k, keep in enumerate(keeps):
            one = copies.cropped(thumb.reshape(copies.THUMB_SIDE, -1), keep).ravel()
            np.testing.assert_allclose(made[k, :, n], one[copies.disc()], atol=1e-3)


def test_a_wide_images_turn_is_a_slanted_turn_of_its_thumbnail() -> None:
    """A thumbnail squashes a 2:1 image to a square: the image turned by 6 degrees has the
    thumbnail that the turn for its shape makes, not the one a square turn makes."""
    wide = picture().resize((480, 240))
    squashed = [np.frombuffer(copies.thumbnail(images.decode(png(image), SHAPE)), np.uint8)
                .astype(np.float32) for image in (wide, wide.rotate(6, Image.Resampling.BICUBIC))]
    shape = copies.shape_of(*wide.size)
    assert shape == 2 and copies.shape_of(240, 480) == -2 and copies.shape_of(None, None) == 0
    inside = np.ones((copies.THUMB_SIDE, copies.THUMB_SIDE), bool)
    inside[:4], inside[-4:], inside[:, :4], inside[:, -4:] = False, False, False, False

    def error(made: np.ndarray) -> float:
        return float(np.abs(made.reshape(inside.shape) - squashed[1].reshape(inside.shape))[
            inside].mean())

    slanted, square = (error(squashed[0] @ copies.turn_map(6.0, s)) for s in (shape, 0))
    assert slanted < square / 2
