"""Retrieval metrics on tiny labelled sets whose right answers are worked out by hand
(nearest first, `ranked=False`), and the look-alikes ranked as results files rank them."""
from __future__ import annotations

import numpy as np
import pytest
from annoy import AnnoyIndex

from lookalike.core import evaluate, ranking

# Five points on a line (euclidean), two labels:
#
#   x:      0    1    3              10   12
#   label:  a    a    b              b    a
#   index:  0    1    2              3    4
#
# Each point's ranking of the others, nearest first (no ties):
#   0: 1 a, 2 b, 3 b, 4 a      relevant 1 0 0 1   AP (1/1 + 2/4) / 2 = 3/4
#   1: 0 a, 2 b, 3 b, 4 a      relevant 1 0 0 1   AP 3/4
#   2: 1 a, 0 a, 3 b, 4 a      relevant 0 0 1 0   AP (1/3) / 1 = 1/3
#   3: 4 a, 2 b, 1 a, 0 a      relevant 0 1 0 0   AP (1/2) / 1 = 1/2
#   4: 3 b, 2 b, 1 a, 0 a      relevant 0 0 1 1   AP (1/3 + 2/4) / 2 = 5/12
# precision@2: 1/2, 1/2, 0, 1/2, 0 -> mean 3/10; mAP (9 + 9 + 4 + 6 + 5) / 12 / 5 = 11/20.
LINE = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0], [12.0, 0.0]], np.float32)
LINE_LABELS = np.array(["a", "a", "b", "b", "a"])
LINE_NEAREST_2 = [[1, 2], [0, 2], [1, 0], [4, 2], [3, 2]]
LINE_AP = [3 / 4, 3 / 4, 1 / 3, 1 / 2, 5 / 12]


def test_exact_search_by_hand() -> None:
    nearest, average, searched = evaluate.exact_search(LINE, LINE_LABELS, 2, "euclidean",
                                                       ranked=False)
    assert nearest.tolist() == searched.tolist() == LINE_NEAREST_2
    assert average == pytest.approx(LINE_AP)


def test_precision_and_mean_average_precision_by_hand() -> None:
    exact, annoy = evaluate.quality(LINE, LINE_LABELS, 2, "euclidean", ranked=False)
    assert exact.precision == pytest.approx(3 / 10)
    assert exact.mean_ap == pytest.approx(11 / 20)
    assert exact.recall is None and annoy is None


def test_precision_at_1_and_at_4_by_hand() -> None:
    # @1: the nearest are 1 a, 0 a, 1 a, 4 a, 3 b: the query's label only for 0 and 1.
    at_1 = evaluate.quality(LINE, LINE_LABELS, 1, "euclidean", ranked=False)[0]
    assert at_1.precision == pytest.approx(2 / 5)
    # @4 (every other point): a sees 2 of 4 alike, b sees 1 of 4 -> (2+2+1+1+2) / 20,
    # whatever the order.
    for ranked in (False, True):
        at_4 = evaluate.quality(LINE, LINE_LABELS, 4, "euclidean", ranked=ranked)[0]
        assert at_4.precision == pytest.approx(8 / 20)


def test_exact_search_never_returns_the_query_even_beside_its_twin() -> None:
    # Item 2 is an exact copy of item 0: each is the other's nearest, never its own.
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.7, 0.7]], np.float32)
    labels = np.array(["x", "y", "x", "y"])
    for metric in ("angular", "euclidean"):
        nearest, _, _ = evaluate.exact_search(vectors, labels, 3, metric)
        assert all(row not in neighbours for row, neighbours in enumerate(nearest.tolist()))
        assert nearest[0, 0] == 2 and nearest[2, 0] == 0


def test_exact_search_in_blocks_agrees_with_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(23, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 23)
    whole = evaluate.exact_search(vectors, labels, 4, "angular")
    monkeypatch.setattr(evaluate, "CHUNK", 5)  # blocks of 5 queries, the last one short
    blocked = evaluate.exact_search(vectors, labels, 4, "angular")
    assert np.array_equal(whole[0], blocked[0])
    assert np.allclose(whole[1], blocked[1])
    assert np.array_equal(whole[2], blocked[2])


def test_exact_search_ranks_the_nearest_searched_as_results_files_do() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(60, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 60)
    shown, _, searched = evaluate.exact_search(vectors, labels, 5, "angular")
    plain, _, _ = evaluate.exact_search(vectors, labels, 5, "angular", ranked=False)
    assert searched.shape == (60, ranking.candidates(5))
    assert np.array_equal(searched[:, :5], plain)
    for row in range(60):
        places = ranking.order(vectors[row][None], vectors[searched[row]][None], "angular")[0]
        assert shown[row].tolist() == searched[row][places[:5]].tolist()
    assert not np.array_equal(shown, plain)  # (the ranking moved some)


def test_average_precision_by_hand() -> None:
    relevant = np.array([[True, False, True, False],   # (1/1 + 2/3) / 2
                         [False, False, False, True],  # (1/4) / 1
                         [False, False, False, False],  # nothing relevant: 0
                         [True, True, True, True]])     # 1
    assert evaluate.average_precision(relevant) == pytest.approx([5 / 6, 1 / 4, 0.0, 1.0])


def test_precision_at_k_counts_a_missing_neighbour_as_wrong() -> None:
    labels = np.array(["a", "a", "b"])
    neighbors = np.array([[1, -1], [0, 2], [-1, -1]])  # -1: Annoy found fewer than k
    # row 0: 1 of 2 alike; row 1: 1 of 2; row 2: 0 of 2.
    assert evaluate.precision_at_k(neighbors, labels) == pytest.approx(2 / 6)


def test_recall_at_k_by_hand() -> None:
    exact = np.array([[1, 3], [0, 2], [0, 1]])
    found = np.array([[3, 1], [0, -1], [4, 5]])  # all, one of two, none (order is free)
    assert evaluate.recall_at_k(found, exact) == pytest.approx((2 + 1 + 0) / 6)


def test_angular_distance_is_annoys() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    index = AnnoyIndex(4, "angular")
    for item, vector in enumerate(vectors):
        index.add_item(item, vector)
    ours = evaluate.distances(vectors, vectors, "angular")
    for i in range(6):
        for j in range(6):
            assert ours[i, j] == pytest.approx(index.get_distance(i, j), abs=1e-3)
    # Orthogonal vectors are sqrt(2) apart, opposite ones 2, whatever their lengths.
    pair = evaluate.distances(np.array([[3.0, 0.0]]), np.array([[0.0, 0.5], [-2.0, 0.0]]),
                              "angular")
    assert pair[0] == pytest.approx([np.sqrt(2.0), 2.0])


def test_annoy_with_enough_trees_finds_the_exact_neighbours() -> None:
    exact, annoy = evaluate.quality(LINE, LINE_LABELS, 2, "euclidean", trees=10, search_k=-1)
    assert annoy is not None
    assert annoy.recall == pytest.approx(1.0)
    assert annoy.precision == pytest.approx(exact.precision)
    assert annoy.mean_ap is None
    found = evaluate.annoy_neighbors(LINE, 2, "euclidean", trees=10, search_k=-1)
    assert sorted(map(sorted, found.tolist())) == sorted(map(sorted, LINE_NEAREST_2))


def test_well_separated_labels_score_one() -> None:
    rng = np.random.default_rng(2)
    centres = np.eye(4, 16) * 10
    vectors = np.repeat(centres, 8, axis=0) + rng.normal(scale=0.1, size=(32, 16))
    labels = np.repeat(np.arange(4), 8)
    exact, annoy = evaluate.quality(vectors, labels, 7, "angular", trees=8, search_k=1000)
    assert exact.precision == pytest.approx(1.0) and exact.mean_ap == pytest.approx(1.0)
    assert annoy is not None and annoy.precision == pytest.approx(1.0)


def test_copies_by_hand() -> None:
    # On the line above, as groups of copies: a = {0, 1, 4}, b = {2, 3}.
    # First neighbours: 0->1 a yes, 1->0 a yes, 2->1 no, 3->4 no, 4->3 no.
    # With k = 2, the other copies among the 2 nearest: 0 {1} of 2, 1 {0} of 2,
    # 2 {} of 1, 3 {2} of 1, 4 {} of 2 -> (1/2 + 1/2 + 0 + 1 + 0) / 5.
    kinds = np.array(["original", "crop", "original", "crop", "mirror"])
    found = evaluate.copies(LINE, LINE_LABELS, kinds, 2, "euclidean", ranked=False)
    assert found.first == pytest.approx(2 / 5)
    assert found.recall == pytest.approx(2 / 5)
    assert found.first_by_kind == {"crop": 0.5, "mirror": 0.0, "original": 0.5}


def test_copies_leave_out_a_picture_without_copies() -> None:
    points = np.array([[0.0], [1.0], [5.0]], np.float32)
    found = evaluate.copies(points, np.array(["a", "a", "lone"]), np.array(["x", "y", "x"]),
                            2, "euclidean", ranked=False)
    assert (found.first, found.recall) == (1.0, 1.0)
    assert found.first_by_kind == {"x": 1.0, "y": 1.0}
