"""The order of an image's look-alikes, worked out by hand on unit vectors in a plane."""
from __future__ import annotations

import numpy as np
import pytest

from lookalike.core import ranking
from lookalike.core.exact import Neighbor


def matrix(vectors: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Row ids (sorted) and their vectors, as `ranking.ranked` takes them."""
    ids = np.array(sorted(vectors), np.int64)
    return ids, np.stack([vectors[row] for row in ids.tolist()])


def at(degrees: float) -> np.ndarray:
    radians = np.radians(degrees)
    return np.array([np.cos(radians), np.sin(radians)])


# The query at 0 degrees; its candidates, nearest first, at 10, 20, -21 and 25 degrees.
QUERY = at(0)
FOUND = [at(10), at(20), at(-21), at(25)]


def test_a_candidate_like_the_nearest_two_goes_before_one_only_as_near_the_query() -> None:
    # Weights of the nearest two: cos(10)^3 = 0.955, cos(20)^3 = 0.830. Scores:
    #   10: cos 10 + 0.955 cos 0  + 0.830 cos 10 = 2.757
    #   20: cos 20 + 0.955 cos 10 + 0.830 cos 0  = 2.710
    #  -21: cos 21 + 0.955 cos 31 + 0.830 cos 41 = 2.379
    #   25: cos 25 + 0.955 cos 15 + 0.830 cos 5  = 2.656
    places = ranking.order(QUERY[None], np.stack(FOUND)[None], "angular")
    assert places.tolist() == [[0, 1, 3, 2]]
    # The likeness is the cosine, whatever the vectors' lengths.
    scaled = ranking.order(3 * QUERY[None], np.stack([0.5 * f for f in FOUND])[None], "angular")
    assert scaled.tolist() == places.tolist()


def test_the_same_candidates_rank_the_same_in_whatever_order_they_come() -> None:
    # A search's float32 distances and a remeasure's float64 ones may put a near-tie
    # either way round: the nearest two that expand the query are the most alike by
    # likeness, whatever the order given.
    given = np.stack(FOUND)
    for order in ([0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        places = ranking.order(QUERY[None], given[order][None], "angular")
        assert [order[place] for place in places[0].tolist()] == [0, 1, 3, 2], order


def test_likeness_is_one_less_half_the_squared_distance() -> None:
    rows = np.array([[[0.0, 0.0], [1.0, 1.0]]])
    others = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    assert ranking.likeness(rows, others, "euclidean") == pytest.approx(
        np.array([[[0.5, -1.0], [0.5, 0.0]]]))
    # The cosine, for the angular distance sqrt(2 - 2 cos); a zero vector's is 0.
    assert ranking.likeness(rows, others, "angular") == pytest.approx(
        np.array([[[0.0, 0.0], [np.sqrt(0.5), np.sqrt(0.5)]]]))


def test_ranked_shows_k_keeps_the_plain_distances_and_leaves_out_what_has_no_vector() -> None:
    vectors = {1: QUERY, **{10 + n: f for n, f in enumerate(FOUND)}}
    found = {1: [Neighbor(10 + n, float(np.linalg.norm(f - QUERY))) for n, f in enumerate(FOUND)]}
    shown = ranking.ranked({1: QUERY}, found, *matrix(vectors), 3, "angular")
    assert shown == {1: [found[1][0], found[1][1], found[1][3]]}
    del vectors[13]  # (the candidate at 25 degrees, gone)
    assert ranking.ranked({1: QUERY}, found, *matrix(vectors), 3, "angular") == \
        {1: found[1][:3]}
    assert ranking.ranked({1: QUERY}, {1: []}, *matrix(vectors), 3, "angular") == {1: []}
    nothing = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)  # (none of them kept)
    assert ranking.ranked({1: QUERY}, found, *nothing, 3, "angular") == {1: []}


def test_many_queries_of_different_lengths_at_once_rank_as_each_alone() -> None:
    rng = np.random.default_rng(0)
    vectors = {row: rng.normal(size=8) for row in range(40)}
    found = {}
    for query in range(5):
        near = sorted((float(np.linalg.norm(vectors[r] - vectors[query])), r)
                      for r in range(5, 40))[:24 - 3 * query]
        found[query] = [Neighbor(r, d) for d, r in near]
    together = ranking.ranked({q: vectors[q] for q in found}, found, *matrix(vectors), 12,
                              "euclidean")
    for query, near in found.items():
        assert together[query] == ranking.ranked({query: vectors[query]}, {query: near},
                                                 *matrix(vectors), 12, "euclidean")[query]
        assert len(together[query]) == 12
