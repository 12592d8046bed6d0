"""A real Annoy index built from a real library, and searches over it plus what came after."""
from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from annoy import AnnoyIndex

from lookalike.core import index, index_kinds, projection
from lookalike.core.errors import StateError
from lookalike.core.exact import GROUP, ExactScan, Neighbor, distance, lowest
from lookalike.core.index_kinds import (
    BuiltIndex,
    EmptyIndex,
    ExactIndex,
    OneStageIndex,
    TwoStageIndex,
)
from lookalike.core.search import Searcher
from lookalike.core.store import Entry, Library

DIM = 16
MODEL = "sha256:" + "c" * 64
EXACT = 1_000_000  # search_k far above items x trees: Annoy visits every leaf


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def library(state: Path) -> Iterator[Library]:
    with Library(state / "library.sqlite") as opened:
        yield opened


def clustered(count: int, seed: int = 0, clusters: int = 8) -> np.ndarray:
    """Vectors around a few centres, as latents of look-alike images are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)) * 3
    return (centres[rng.integers(0, clusters, count)]
            + rng.standard_normal((count, DIM))).astype(np.float32)


def entry(path: str, latent: np.ndarray) -> Entry:
    return Entry(path, 1, 1, "0" * 64, MODEL, latent)


def fill(library: Library, vectors: np.ndarray, prefix: str = "") -> dict[int, np.ndarray]:
    """Store `vectors` as images; return {row id: vector}."""
    names = [f"{prefix}{n:05d}.jpg" for n in range(len(vectors))]
    library.apply(entry(name, v) for name, v in zip(names, vectors, strict=True))
    records = library.records()
    return {records[name].id: v for name, v in zip(names, vectors, strict=True)}


def build(library: Library, state: Path, metric: str = "angular",
          trees: int = 20, kind: str = "annoy") -> index.IndexInfo:
    exact_below = 10**9 if kind == "exact" else 0
    dims = DIM // 2 if kind == "two-stage" else 0
    return index.build(library, state, metric=metric, trees=trees, model_id=MODEL,
                       exact_below=exact_below, dims=dims)


@pytest.fixture(params=["annoy", "exact", "two-stage"])
def kind(request: pytest.FixtureRequest) -> str:
    """Every kind of index: Annoy, the plain matrix of a small library, and Annoy on
    projected vectors whose candidates are ranked again on the full ones."""
    return str(request.param)


# Two-stage candidates: every item, so that a lossy projection still finds exactly
# what brute force does; tests below take fewer.
CANDIDATES = 10**6


def searcher(library: Library, state: Path, metric: str = "angular",
             search_k: int = EXACT) -> Searcher:
    return Searcher.open(library, index.load(state), metric, search_k, CANDIDATES)


def brute_force(rows: dict[int, np.ndarray], query: np.ndarray, k: int, metric: str = "angular",
                exclude: int | None = None) -> list[tuple[int, float]]:
    ids = np.array([r for r in rows if r != exclude])
    matrix = np.stack([rows[int(r)] for r in ids]).astype(np.float64)
    if metric == "angular":
        unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        gaps = np.linalg.norm(unit - query / np.linalg.norm(query), axis=1)
    else:
        gaps = np.linalg.norm(matrix - query, axis=1)
    order = np.argsort(gaps)[:k]
    return [(int(ids[i]), float(gaps[i])) for i in order]


def generations_on_disk(state: Path) -> set[int]:
    return {int(p.name.split(".")[0]) for p in index.folder(state).iterdir()
            if p.name[0].isdigit()}


# -- building -------------------------------------------------------------------
def test_build_writes_the_index_and_points_at_it(library: Library, state: Path) -> None:
    rows = fill(library, clustered(300))
    info = build(library, state, trees=7)
    assert (info.generation, info.items, info.dim, info.metric, info.trees, info.model_id) == (
        library.generation, 300, DIM, "angular", 7, MODEL)
    home = index.folder(state)
    assert json.loads((home / "current.json").read_text())["generation"] == info.generation
    assert index.current_info(state) == info
    assert (home / f"{info.generation}.ann").is_file()
    assert sorted(np.load(home / f"{info.generation}.ids.npy").tolist()) == sorted(rows)
    assert not [p for p in home.iterdir() if p.name.endswith(".partial")]


def test_new_builds_remove_old_generations_but_keep_the_previous(library: Library,
                                                                state: Path) -> None:
    fill(library, clustered(50))
    built = [build(library, state).generation]
    for round_ in range(3):
        fill(library, clustered(5, seed=round_ + 1), prefix=f"r{round_}-")
        built.append(build(library, state).generation)
    assert built == sorted(set(built))
    assert generations_on_disk(state) == {built[-2], built[-1]}
    assert index.current_info(state).generation == built[-1]  # type: ignore[union-attr]


def test_build_clears_leftovers_of_a_crashed_build(library: Library, state: Path) -> None:
    fill(library, clustered(20))
    build(library, state)
    leftover = index.folder(state) / "99.ann.partial"
    leftover.write_bytes(b"half an index")
    library.apply([entry("more.jpg", clustered(1, seed=5)[0])])
    build(library, state)
    assert not leftover.exists()


def test_build_only_reads_the_library(library: Library, state: Path) -> None:
    """Dropping the tombstones a build no longer needs is its caller's (`builder.build_now`)."""
    rows = fill(library, clustered(10))
    library.apply(deletions=["00003.jpg"])
    gone = min(rows) + 3
    build(library, state)
    assert gone in library.describe([gone])


def test_load_memory_maps_and_maps_items_to_rows(library: Library, state: Path) -> None:
    rows = fill(library, clustered(200))
    info = build(library, state)
    loaded = index.load(state)
    assert isinstance(loaded, OneStageIndex) and loaded.info == info
    ann = str(index.folder(state) / f"{info.generation}.ann")
    assert ann in Path("/proc/self/maps").read_text()  # mapped, not read into memory
    assert loaded.annoy.get_n_items() == len(loaded.row_ids) == 200
    assert loaded.order is not None
    for item in (0, 57, 199):
        row = int(loaded.row_ids[loaded.order[item]])
        stored = np.array(loaded.annoy.get_item_vector(item), np.float32)
        assert np.allclose(stored, rows[row], atol=1e-6)


def test_annoy_holds_near_items_together(library: Library, state: Path) -> None:
    """Rows of four clusters, stored one cluster after another in turn, lie cluster by
    cluster in Annoy's file: a query's candidates are read from few places in memory."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, DIM)) * 3
    vectors = (centres[np.arange(400) % 4] + rng.standard_normal((400, DIM))).astype(np.float32)
    rows = fill(library, vectors)
    cluster = {row: n % 4 for n, row in enumerate(rows)}
    info = build(library, state)
    loaded = index.load(state)
    assert isinstance(loaded, OneStageIndex) and info.ordered and loaded.order is not None
    assert sorted(loaded.order.tolist()) == list(range(400))
    in_annoy = [cluster[int(loaded.row_ids[place])] for place in loaded.order]
    in_rows = [cluster[int(row)] for row in loaded.row_ids]
    assert sum(a != b for a, b in itertools.pairwise(in_annoy)) < 40
    assert sum(a != b for a, b in itertools.pairwise(in_rows)) == 399
    search = searcher(library, state)
    for row in list(rows)[:20]:
        assert [n.row_id for n in search.neighbors(rows[row], 5, exclude=row)] == \
            [r for r, _ in brute_force(rows, rows[row], 5, exclude=row)]


def test_an_index_built_before_annoy_was_ordered_still_loads(library: Library,
                                                            state: Path) -> None:
    """An index whose `current.json` says nothing of an order: Annoy's items are the
    index's own, in its order."""
    rows = fill(library, clustered(120))
    info = build(library, state, kind="two-stage")
    home = index.folder(state)
    built = index.load(state)
    assert isinstance(built, TwoStageIndex)
    full = np.stack([rows[int(row)] for row in built.row_ids])
    projected = projection.project(full, "angular", built.axes)
    built.annoy.unload()
    forest = AnnoyIndex(DIM // 2, "euclidean")
    for place, vector in enumerate(projected):  # the index's order, as builds once made it
        forest.add_item(place, vector)
    forest.build(10)
    forest.save(str(home / f"{info.generation}.ann"))
    (home / f"{info.generation}.order.npy").unlink()
    pointer = json.loads((home / "current.json").read_text())
    del pointer["ordered"]
    (home / "current.json").write_text(json.dumps(pointer))
    loaded = index.load(state)
    assert isinstance(loaded, TwoStageIndex) and loaded.order is None
    search = searcher(library, state)
    for row in list(rows)[:10]:
        assert [n.row_id for n in search.neighbors(rows[row], 5, exclude=row)] == \
            [r for r, _ in brute_force(rows, rows[row], 5, exclude=row)]


def test_load_before_any_build_is_none(state: Path) -> None:
    assert index.load(state) is None
    assert index.current_info(state) is None


def test_a_reader_of_the_old_index_keeps_working_after_a_swap(library: Library,
                                                              state: Path) -> None:
    rows = fill(library, clustered(300))
    build(library, state)
    old = searcher(library, state)
    probe = clustered(1, seed=42)[0]
    before = old.neighbors(probe, 10)

    for round_ in range(2):  # two builds: the old files are unlinked from the folder
        fill(library, clustered(100, seed=round_ + 7), prefix=f"r{round_}-")
        build(library, state)
    assert old.index is not None
    assert not (index.folder(state) / f"{old.index.info.generation}.ann").exists()

    assert old.neighbors(probe, 10) == before  # the mapped old file still answers
    assert {n.row_id for n in before} <= set(rows)
    new = searcher(library, state)
    assert new.index is not None and new.index.info.items == 500


# -- searching ------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["angular", "euclidean"])
def test_search_equals_brute_force(library: Library, state: Path, metric: str, kind: str) -> None:
    rows = fill(library, clustered(400))
    build(library, state, metric=metric, kind=kind)
    found = searcher(library, state, metric)
    assert found.pending == 0 and found.items == 400
    for seed in range(5):
        query = clustered(1, seed=100 + seed)[0]
        got = found.neighbors(query, 12)
        want = brute_force(rows, query, 12, metric)
        assert [n.row_id for n in got] == [row for row, _ in want]
        assert np.allclose([n.distance for n in got], [d for _, d in want], atol=1e-4)
        assert [n.distance for n in got] == sorted(n.distance for n in got)


def test_default_settings_find_nearly_all_true_neighbours(library: Library,
                                                          state: Path) -> None:
    rows = fill(library, clustered(1000))
    build(library, state, trees=16)  # the default trees, at the old default search_k
    found = searcher(library, state, search_k=4000)
    hits = 0
    for seed in range(20):
        query = clustered(1, seed=200 + seed)[0]
        truth = {row for row, _ in brute_force(rows, query, 10)}
        hits += len(truth & {n.row_id for n in found.neighbors(query, 10)})
    assert hits >= 0.95 * 200


def test_fresh_rows_are_found_without_a_rebuild(library: Library, state: Path, kind: str) -> None:
    rows = fill(library, clustered(200))
    build(library, state, kind=kind)
    query = clustered(1, seed=9)[0]
    library.apply([entry("twin.jpg", query * 2.5), entry("far.jpg", -query)])
    twin = library.records()["twin.jpg"].id
    rows[twin] = query * 2.5
    rows[library.records()["far.jpg"].id] = -query

    found = searcher(library, state)
    assert found.pending == 2 and found.items == 202
    got = found.neighbors(query, 12)
    assert got[0].row_id == twin and got[0].distance < 1e-3  # same direction: angular 0
    assert [n.row_id for n in got] == [row for row, _ in brute_force(rows, query, 12)]


def test_deleted_or_changed_rows_never_come_from_the_stale_index(library: Library,
                                                                state: Path, kind: str) -> None:
    rows = fill(library, clustered(200))
    build(library, state, kind=kind)
    query = clustered(1, seed=11)[0]
    nearest = [row for row, _ in brute_force(rows, query, 6)]
    by_id = {r.id: r.path for r in library.records().values()}
    deleted, moved, broken = nearest[0], nearest[1], nearest[2]
    library.apply([entry(by_id[moved], -query),
                   Entry(by_id[broken], 1, 2, None, None, None, "truncated", "cut")],
                  deletions=[by_id[deleted]])
    del rows[deleted], rows[broken]
    rows[moved] = -query

    found = searcher(library, state)
    got = found.neighbors(query, 200)
    ids = [n.row_id for n in got]
    assert deleted not in ids and broken not in ids
    assert ids.count(moved) == 1
    assert dict((n.row_id, n.distance) for n in got)[moved] == pytest.approx(2.0, abs=1e-4)
    assert ids == [row for row, _ in brute_force(rows, query, 200)]
    assert len(got) == 198


def test_many_stale_items_widen_the_index_search(library: Library, state: Path, kind: str) -> None:
    rows = fill(library, clustered(300))
    build(library, state, kind=kind)
    query = clustered(1, seed=12)[0]
    nearest = [row for row, _ in brute_force(rows, query, 60)]
    by_id = {r.id: r.path for r in library.records().values()}
    library.apply(deletions=[by_id[row] for row in nearest[:50]])
    for row in nearest[:50]:
        del rows[row]
    got = searcher(library, state).neighbors(query, 10)
    assert [n.row_id for n in got] == nearest[50:60]


def test_the_query_row_itself_is_excluded(library: Library, state: Path, kind: str) -> None:
    rows = fill(library, clustered(150))
    build(library, state, kind=kind)
    library.apply([entry("late.jpg", clustered(1, seed=3)[0])])
    late = library.records()["late.jpg"].id
    rows[late] = clustered(1, seed=3)[0]
    found = searcher(library, state)
    for own in (min(rows), late):  # one in the index, one from the exact scan
        got = found.neighbors(rows[own], 10, exclude=own)
        assert own not in [n.row_id for n in got] and len(got) == 10
        assert [n.row_id for n in got] == [r for r, _ in brute_force(rows, rows[own], 10,
                                                                     exclude=own)]
    assert found.neighbors(rows[late], 1)[0] == Neighbor(late, pytest.approx(0.0, abs=1e-3))


def test_fewer_items_than_k(library: Library, state: Path, kind: str) -> None:
    rows = fill(library, clustered(5))
    build(library, state, kind=kind)
    library.apply([entry("late.jpg", clustered(1, seed=1)[0])])
    got = searcher(library, state).neighbors(clustered(1, seed=2)[0], 50, exclude=min(rows))
    assert len(got) == 5 and min(rows) not in [n.row_id for n in got]


@pytest.mark.parametrize("metric", ["angular", "euclidean"])
def test_exact_scan_distances_match_annoys(metric: str) -> None:
    vectors = clustered(50, seed=4)
    vectors[10] = 0.0  # a zero vector: Annoy calls it sqrt(2) away from everything (angular)
    annoy = AnnoyIndex(DIM, metric)  # type: ignore[arg-type]
    for item, v in enumerate(vectors):
        annoy.add_item(item, v)
    annoy.build(5)
    query = clustered(1, seed=5)[0]
    items, annoys = annoy.get_nns_by_vector(query.tolist(), 50, search_k=EXACT,
                                            include_distances=True)
    ours = distance(vectors, query, metric)
    assert np.allclose(ours[items], annoys, atol=1e-4)
    for a, b in [(0, 1), (2, 30), (7, 7)]:
        assert distance(vectors[[a]], vectors[b], metric)[0] == pytest.approx(
            annoy.get_distance(a, b), abs=1e-4)


@pytest.mark.parametrize("metric", ["angular", "euclidean"])
def test_within_finds_every_row_nearer_than_each_radius_and_no_other(metric: str) -> None:
    """What the check of every results file rests on (`daemon.check`): no row nearer
    than an image's k-th neighbour is missed; the slack admits only near-ties."""
    rows, queries = clustered(400, seed=6), clustered(60, seed=7)
    ids = np.arange(1000, 1400)
    own = ids[:60].copy()  # the first 60 queries are rows 1000..1059 themselves
    queries[:60] = rows[:60]
    true = np.stack([distance(rows, query, metric) for query in queries])
    radii = np.sort(true, axis=1)[:, 12]
    radii[5] = np.inf  # named fewer than k: every row may enter
    found = ExactScan(ids, rows, metric).within(queries, radii, own)
    for n, near in enumerate(found):
        expected = set(ids[(true[n] < radii[n]) & (ids != own[n])].tolist())
        assert expected <= set(near.tolist())
        assert all(true[n][row - 1000] < radii[n] + 1e-3 for row in near.tolist())
        assert own[n] not in near
    assert len(found[5]) == 399


@pytest.mark.parametrize("width", [GROUP * 48, GROUP * 48 + 37, GROUP * 3])
def test_lowest_finds_each_rows_lowest_scores_with_ties_and_masked_rows(width: int) -> None:
    """Rows wide enough to be ranked by groups, and a partial last group; ties and
    infinite (masked) scores as the exact scan has them."""
    rng = np.random.default_rng(3)
    scores = np.round(rng.standard_normal((40, width)), 1).astype(np.float32)  # many ties
    scores[:, rng.integers(0, width, size=width // 3)] = np.inf
    scores[0, -5:] = -9.0  # the lowest all in the partial group (or the last one)
    for count in (1, 12, 40):
        columns = lowest(scores, count)
        assert columns.shape == (40, count)
        assert all(len(set(row)) == count for row in columns.tolist())
        assert np.array_equal(np.sort(np.take_along_axis(scores, columns, axis=1), axis=1),
                              np.sort(scores, axis=1)[:, :count])
    assert set(lowest(scores, 5)[0].tolist()) == set(range(width - 5, width))


def test_a_wide_exact_scan_finds_the_true_nearest() -> None:
    rows, queries = clustered(5000, seed=10), clustered(30, seed=11)
    ids = np.arange(5000) * 3
    found = ExactScan(ids, rows, "angular").nearest(queries, 12, [None] * 30)
    for query, near in zip(queries, found, strict=True):
        true = distance(rows, query, "angular")
        assert sorted(n.row_id for n in near) == sorted(ids[np.argsort(true)[:12]].tolist())
        # nearest first, ties by row id: what results files and the library's radii read
        assert [(n.distance, n.row_id) for n in near] == sorted(
            (n.distance, n.row_id) for n in near)
    twins = ExactScan(np.array([7, 3, 5]), np.ones((3, 4), np.float32), "angular")
    assert [n.row_id for n in twins.nearest(np.ones((1, 4)), 3, [None])[0]] == [3, 5, 7]


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="cosine"):
        distance(clustered(3), clustered(1)[0], "cosine")


def test_search_without_an_index_scans_everything(library: Library, state: Path) -> None:
    rows = fill(library, clustered(80))
    found = Searcher.open(library, None, "angular")
    assert found.index is None and found.pending == 80
    query = clustered(1, seed=6)[0]
    assert [n.row_id for n in found.neighbors(query, 12)] == [
        r for r, _ in brute_force(rows, query, 12)]


def test_refresh_follows_changes_after_opening(library: Library, state: Path) -> None:
    rows = fill(library, clustered(100))
    build(library, state)
    library.apply([entry("late.jpg", clustered(1, seed=8)[0])])
    late = library.records()["late.jpg"].id
    found = searcher(library, state)
    query = clustered(1, seed=13)[0]
    indexed = found.neighbors(query, 1)[0].row_id
    found.refresh({indexed: -query, late: query}, removed=[min(rows)])
    got = found.neighbors(query, 100)
    ids = [n.row_id for n in got]
    assert ids[0] == late and min(rows) not in ids
    assert dict((n.row_id, n.distance) for n in got)[indexed] == pytest.approx(2.0, abs=1e-4)
    assert ids.count(indexed) == 1 and found.pending == 2


def test_new_rows_do_not_widen_annoys_search(library: Library, state: Path) -> None:
    """Only rows the index holds are stale: each stale row asks Annoy for one more item."""
    rows = fill(library, clustered(100))
    build(library, state)
    library.apply([entry("late.jpg", clustered(1, seed=8)[0])])
    late = library.records()["late.jpg"].id
    found = searcher(library, state, search_k=-1)
    assert found.stale.tolist() == []
    changed, gone = sorted(rows)[:2]
    found.refresh({late + 1: clustered(1, seed=9)[0], changed: -clustered(1, seed=9)[0]},
                  removed=[gone])
    assert found.stale.tolist() == [changed, gone]
    assert found.pending == 3

    asked = []
    annoy = found.index.annoy  # type: ignore[union-attr]

    class Counting:
        def get_nns_by_vector(self, vector: list[float], n: int, **kw: object) -> object:
            asked.append(n)
            return annoy.get_nns_by_vector(vector, n, **kw)  # type: ignore[union-attr]
    found.index.annoy = Counting()  # type: ignore[union-attr,assignment]
    found.neighbors(clustered(1, seed=13)[0], 10)
    assert asked == [10 + 2 + 1]  # k, the two stale rows, the query's own row


def test_an_id_map_out_of_order_is_damaged(library: Library, state: Path) -> None:
    fill(library, clustered(10))
    info = build(library, state)
    ids = index.folder(state) / f"{info.generation}.ids.npy"
    np.save(ids, np.load(ids)[::-1].copy())
    with pytest.raises(StateError, match="out of order"):
        index.load(state)


def test_empty_library_builds_and_searches(library: Library, state: Path) -> None:
    info = build(library, state)
    assert (info.items, info.dim) == (0, 0)
    assert not (index.folder(state) / f"{info.generation}.ann").exists()
    loaded = index.load(state)
    assert isinstance(loaded, EmptyIndex) and len(loaded.row_ids) == 0
    assert searcher(library, state).neighbors(np.ones(DIM, np.float32), 12) == []
    assert Searcher.open(library, None, "angular").neighbors(np.ones(DIM, np.float32), 12) == []


def test_library_emptied_after_a_build(library: Library, state: Path) -> None:
    fill(library, clustered(10))
    build(library, state)
    library.apply(deletions=[f"{n:05d}.jpg" for n in range(10)])
    assert searcher(library, state).neighbors(np.ones(DIM, np.float32), 12) == []


def test_damaged_current_json_gives_state_error(library: Library, state: Path) -> None:
    fill(library, clustered(10))
    build(library, state)
    pointer = index.folder(state) / "current.json"
    for damage in (b"{not json", b"[1, 2]", b'{"generation": 1}', b""):
        pointer.write_bytes(damage)
        with pytest.raises(StateError, match="rebuild"):
            index.load(state)


def test_missing_ann_gives_state_error(library: Library, state: Path) -> None:
    fill(library, clustered(10))
    info = build(library, state)
    (index.folder(state) / f"{info.generation}.ann").unlink()
    with pytest.raises(StateError, match="rebuild"):
        index.load(state)


def test_missing_or_mismatched_id_map_gives_state_error(library: Library, state: Path) -> None:
    fill(library, clustered(10))
    info = build(library, state)
    ids = index.folder(state) / f"{info.generation}.ids.npy"
    np.save(ids, np.arange(9, dtype=np.int64))
    with pytest.raises(StateError, match="holds 10 items but maps 9"):
        index.load(state)
    ids.unlink()
    with pytest.raises(StateError, match="rebuild"):
        index.load(state)


def test_a_build_repairs_a_damaged_current_json(library: Library, state: Path) -> None:
    # The StateError tells the user to run `lookalike rebuild`: that must work.
    fill(library, clustered(10))
    build(library, state)
    (index.folder(state) / "current.json").write_bytes(b"garbage")
    with pytest.raises(StateError):
        index.load(state)
    library.apply([entry("more.jpg", clustered(1, seed=3)[0])])
    info = build(library, state)
    loaded = index.load(state)
    assert loaded is not None and loaded.info == info and info.items == 11


def test_a_build_repairs_a_missing_ann(library: Library, state: Path) -> None:
    fill(library, clustered(10))
    info = build(library, state)
    (index.folder(state) / f"{info.generation}.ann").unlink()
    rebuilt = build(library, state)  # same generation: nothing changed since
    assert rebuilt.generation == info.generation
    loaded = index.load(state)
    assert isinstance(loaded, OneStageIndex) and loaded.annoy.get_n_items() == 10


# -- the exact index of a small library, and many queries at once ----------------
def test_a_library_below_exact_below_gets_the_matrix_itself(library: Library,
                                                             state: Path) -> None:
    rows = fill(library, clustered(99))
    info = index.build(library, state, metric="angular", trees=20, model_id=MODEL,
                       exact_below=100)
    assert info.kind == "exact" and info.items == 99
    assert not list(index.folder(state).glob("*.ann"))
    loaded = index.load(state)
    assert isinstance(loaded, ExactIndex)
    assert np.array_equal(loaded.vectors, np.stack([rows[int(r)] for r in loaded.row_ids]))
    fill(library, clustered(1, seed=1), prefix="more")
    info = index.build(library, state, metric="angular", trees=20, model_id=MODEL,
                       exact_below=100)
    assert info.kind == "annoy" and info.items == 100
    loaded = index.load(state)
    assert isinstance(loaded, OneStageIndex)


@pytest.mark.parametrize("metric", ["angular", "euclidean"])
def test_many_queries_at_once_equal_one_at_a_time(library: Library, state: Path, metric: str,
                                                  kind: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rows = fill(library, clustered(300))
    build(library, state, metric=metric, kind=kind)
    library.apply([entry("late.jpg", clustered(1, seed=8)[0])])
    found = searcher(library, state, metric)
    own = sorted(rows)[:40]
    queries = np.stack([rows[row] for row in own])
    monkeypatch.setattr("lookalike.core.exact.SCORES_AT_ONCE", 7 * 301)  # blocks of 7
    many = found.neighbors_many(queries, 12, own)
    single = [found.neighbors(query, 12, exclude=row)
              for query, row in zip(queries, own, strict=True)]
    for together, alone in zip(many, single, strict=True):  # BLAS may round differently
        assert [n.row_id for n in together] == [n.row_id for n in alone]
        assert np.allclose([n.distance for n in together], [n.distance for n in alone],
                           atol=1e-5)
    assert all(row not in [n.row_id for n in near] for row, near in zip(own, many, strict=True))
    assert found.neighbors_many(queries[:0], 12, []) == []


def test_queries_searched_side_by_side_find_what_they_find_one_by_one(
        library: Library, state: Path, kind: str) -> None:
    """Annoy lets go of the GIL while it searches: the ingest's pool runs a batch's
    queries on both cores. Stale rows (changed and deleted since the build) stay out."""
    rows = fill(library, clustered(400))
    build(library, state, kind=kind)
    changed, deleted = sorted(rows)[:2]
    name = {record.id: path for path, record in library.records().items()}
    library.apply([entry(name[changed], clustered(1, seed=9)[0])], deletions=[name[deleted]])
    own = sorted(rows)[2:66]
    queries = np.stack([rows[row] for row in own])
    alone = Searcher.open(library, index.load(state), "angular", 2000, 50)
    with ThreadPoolExecutor(2) as pool:
        together = Searcher.open(library, index.load(state), "angular", 2000, 50, pool)
        assert len(together.stale) == 2
        side_by_side = together.neighbors_many(queries, 12, own)
    one_by_one = alone.neighbors_many(queries, 12, own)
    assert [[n.row_id for n in near] for near in side_by_side] == \
        [[n.row_id for n in near] for near in one_by_one]
    assert deleted not in {n.row_id for near in side_by_side for n in near}


# -- two-stage search -------------------------------------------------------------
def in_subspace(count: int, rank: int, seed: int = 0) -> np.ndarray:
    """Vectors of DIM numbers that vary along `rank` directions only."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((DIM, rank)))[0].T
    return (rng.standard_normal((count, rank)) @ basis).astype(np.float32)


def test_two_stage_build_writes_projected_annoy_axes_and_full_vectors(library: Library,
                                                                     state: Path) -> None:
    rows = fill(library, clustered(300))
    whole = build(library, state)
    whole_size = (index.folder(state) / f"{whole.generation}.ann").stat().st_size
    fill(library, clustered(1, seed=3), prefix="one-more")
    info = build(library, state, kind="two-stage")
    assert (info.kind, info.dim, info.reduced) == ("annoy", DIM, DIM // 2)
    home = index.folder(state)
    assert (home / f"{info.generation}.axes.npy").exists()
    assert (home / f"{info.generation}.ann").stat().st_size < whole_size
    loaded = index.load(state)
    assert isinstance(loaded, TwoStageIndex)
    assert loaded.annoy.f == DIM // 2
    assert loaded.axes.shape == (DIM, DIM // 2)
    items = np.array([0, 5, 299])
    for item, vector in zip(items, loaded.full_vectors.read(items), strict=True):
        assert np.array_equal(vector, rows[int(loaded.row_ids[item])])


def test_full_vectors_are_read_not_mapped(library: Library, state: Path) -> None:
    """Candidates' full vectors come from the page cache, not the service's memory."""
    fill(library, clustered(200))
    info = build(library, state, kind="two-stage")
    search = searcher(library, state)  # held: its Annoy file stays mapped
    assert len(search.neighbors(clustered(1, seed=9)[0], 12)) == 12
    maps = Path("/proc/self/maps").read_text()
    assert str(index.folder(state) / f"{info.generation}.ann") in maps
    assert str(index.folder(state) / f"{info.generation}.vectors.npy") not in maps


@pytest.mark.parametrize("array", [np.arange(1000, dtype=np.int64),
                                   np.linspace(-1, 1, 3 * 896, dtype=np.float32).reshape(3, 896),
                                   np.zeros((0, 8), np.float32)], ids=["ids", "vectors", "empty"])
def test_arrays_are_written_as_numpy_saves_them_a_block_at_a_time(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   array: np.ndarray) -> None:
    flushed: list[int] = []
    monkeypatch.setattr(index, "FLUSH_BYTES", 1000)
    monkeypatch.setattr(index.os, "fdatasync", flushed.append)
    index.write_durably(tmp_path / "written.npy", array)
    np.save(tmp_path / "saved.npy", array)
    assert (tmp_path / "written.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()
    assert len(flushed) == -(-array.nbytes // 1000)  # a flush per block: never much waits


def test_annoys_file_is_flushed_while_annoy_writes_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[int] = []
    monkeypatch.setattr(index, "FLUSH_EVERY_S", 0.01)
    monkeypatch.setattr(index.os, "fdatasync", flushed.append)
    target = tmp_path / "written.bin"
    target.write_bytes(b"")
    with index.flushing(target):
        time.sleep(0.2)
    count = len(flushed)
    time.sleep(0.05)
    assert count >= 3 and len(flushed) == count  # and not once the writing is done


def test_vectors_no_longer_than_dims_are_indexed_whole(library: Library, state: Path) -> None:
    fill(library, clustered(50))
    info = index.build(library, state, metric="angular", trees=10, model_id=MODEL, dims=DIM)
    assert info.reduced == 0
    assert not list(index.folder(state).glob("*.axes.npy"))
    assert not list(index.folder(state).glob("*.vectors.npy"))


@pytest.mark.parametrize("metric", ["angular", "euclidean"])
def test_main_axes_keep_every_distance_of_vectors_that_vary_along_that_few(metric: str) -> None:
    vectors = in_subspace(500, rank=4) + (1.0 if metric == "angular" else 0.0)
    rank = 5 if metric == "angular" else 4  # unit vectors of an offset subspace span one more
    axes = projection.main_axes(vectors, metric, rank)
    full = projection.unit(vectors, metric)
    projected = full @ axes
    for a, b in [(0, 1), (2, 499), (10, 400)]:
        assert np.linalg.norm(projected[a] - projected[b]) == pytest.approx(
            np.linalg.norm(full[a] - full[b]), abs=1e-4)


@pytest.mark.parametrize("metric", ["angular", "euclidean"])
def test_two_stage_with_a_lossless_projection_equals_brute_force(library: Library, state: Path,
                                                                 metric: str) -> None:
    rows = fill(library, in_subspace(400, rank=4) + 1.0)
    index.build(library, state, metric=metric, trees=20, model_id=MODEL, dims=5)
    found = Searcher.open(library, index.load(state), metric, EXACT, candidates=12)
    for seed in range(5):
        query = in_subspace(1, rank=4, seed=0)[0] * (1 + seed / 10) + 1.0
        want = brute_force(rows, query, 12, metric)
        got = found.neighbors(query, 12)
        assert [n.row_id for n in got] == [row for row, _ in want]
        assert np.allclose([n.distance for n in got], [d for _, d in want], atol=1e-4)


@pytest.mark.parametrize(("kind", "part"), [("exact", "vectors.npy"), ("two-stage", "axes.npy"),
                                           ("two-stage", "vectors.npy"), ("annoy", "order.npy")])
def test_an_index_missing_a_part_is_damaged(library: Library, state: Path, kind: str,
                                            part: str) -> None:
    fill(library, clustered(30))
    info = build(library, state, kind=kind)
    (index.folder(state) / f"{info.generation}.{part}").unlink()
    with pytest.raises(StateError, match="damaged"):
        index.load(state)


def test_an_order_that_does_not_fit_annoys_items_is_damaged(library: Library,
                                                            state: Path) -> None:
    fill(library, clustered(30))
    info = build(library, state)
    path = index.folder(state) / f"{info.generation}.order.npy"
    for wrong in (np.arange(29), np.arange(1, 31)):  # one short; one past the last item
        np.save(path, wrong.astype(np.int32))
        with pytest.raises(StateError, match="damaged"):
            index.load(state)


def test_truncated_full_vectors_are_damaged(library: Library, state: Path) -> None:
    fill(library, clustered(30))
    info = build(library, state, kind="two-stage")
    path = index.folder(state) / f"{info.generation}.vectors.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StateError, match="truncated"):
        index.load(state)


# -- signs: which candidates are read in full ----------------------------------------
WIDE = 256  # numbers per vector long enough for signs (the default encoder's are 896)


def wide(count: int, seed: int = 0) -> np.ndarray:
    """Vectors of WIDE numbers around 1,000 centres that differ along every axis alike:
    a projection onto a few main axes loses much of what tells them apart."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((1000, WIDE)) * 2
    return (centres[rng.integers(0, 1000, count)]
            + rng.standard_normal((count, WIDE))).astype(np.float32)


def counting_reads(built: BuiltIndex | None) -> list[int]:
    """How many full vectors each `FullVectors.read` of `built` reads."""
    assert isinstance(built, TwoStageIndex)
    reads: list[int] = []
    read = built.full_vectors.read

    def counted(items: np.ndarray) -> np.ndarray:
        reads.append(len(items))
        return read(items)
    built.full_vectors.read = counted  # type: ignore[method-assign]
    return reads


def test_the_share_of_differing_signs_is_the_angle_over_pi() -> None:
    """SimHash: a random plane through the origin parts two vectors with a probability
    of their angle over pi, so the share of signs they differ in estimates it."""
    planes = projection.random_planes(WIDE, WIDE)
    assert np.allclose(planes.T @ planes, np.eye(WIDE), atol=1e-5)  # at right angles
    rng = np.random.default_rng(4)
    base, other = np.linalg.qr(rng.standard_normal((WIDE, 2)))[0].T
    for degrees in (0, 30, 60, 90, 135, 180):
        turned = np.cos(np.radians(degrees)) * base + np.sin(np.radians(degrees)) * other
        signs = projection.signs_of(np.stack([base, turned]) * [[1.0], [7.0]], planes)
        share = np.bitwise_count(signs[0] ^ signs[1]).sum() / WIDE
        assert share == pytest.approx(degrees / 180, abs=0.1)


@pytest.mark.parametrize(("metric", "dims", "bits"), [("angular", 32, WIDE),
                                                      ("euclidean", 32, 0),
                                                      ("angular", 0, 0)])
def test_signs_are_kept_for_the_angular_two_stage_index_only(library: Library, state: Path,
                                                             metric: str, dims: int,
                                                             bits: int) -> None:
    fill(library, wide(300))
    info = index.build(library, state, metric=metric, trees=10, model_id=MODEL, dims=dims)
    assert info.signs == bits
    loaded = index.load(state)
    assert loaded is not None
    if bits:
        assert isinstance(loaded, TwoStageIndex)
        assert loaded.planes is not None and loaded.signs is not None
        assert loaded.planes.shape == (WIDE, bits) and loaded.signs.shape == (300, bits // 64)
        first = library.vectors(model_id=MODEL)[1][:1]
        assert np.array_equal(loaded.signs_of(first), loaded.signs[:1])  # as the build made
    else:
        assert not isinstance(loaded, TwoStageIndex) or loaded.signs is None
        assert not list(index.folder(state).glob("*.signs.npy"))


def test_signs_pick_the_few_candidates_read_in_full(library: Library, state: Path) -> None:
    """Of Annoy's 400 candidates, the 40 whose signs differ least are read: they hold
    most of the true neighbours that reading all 400 finds, and many more than Annoy's
    own 40 nearest (in the projection) do."""
    rows = fill(library, wide(3000))
    index.build(library, state, metric="angular", trees=10, model_id=MODEL, dims=16)
    built = index.load(state)
    assert built is not None
    reads = counting_reads(built)
    picked = Searcher.open(library, built, "angular", EXACT, candidates=400, rescore=40)
    every = Searcher.open(library, built, "angular", EXACT, candidates=400, rescore=400)
    annoys_own = Searcher.open(library, built, "angular", EXACT, candidates=40)
    queries = wide(20, seed=300)
    truths = [{row for row, _ in brute_force(rows, query, 10)} for query in queries]

    def hits(searcher: Searcher) -> int:
        return sum(len(truth & {n.row_id for n in searcher.neighbors(query, 10)})
                   for query, truth in zip(queries, truths, strict=True))
    picked_hits = hits(picked)
    assert reads == [40] * 20  # a search reads the few, whatever it was offered
    assert picked_hits >= 0.8 * hits(every)
    assert picked_hits >= 1.2 * hits(annoys_own)


def test_a_batch_of_queries_reads_its_candidates_a_few_queries_at_a_time(
        library: Library, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What one read holds in memory is bounded by the queries read together, and the
    neighbours found are those of each query searched alone."""
    fill(library, wide(2000))
    index.build(library, state, metric="angular", trees=10, model_id=MODEL, dims=16)
    built = index.load(state)
    assert built is not None
    searcher = Searcher.open(library, built, "angular", EXACT, candidates=200, rescore=20)
    queries = wide(20, seed=301)
    alone = [searcher.neighbors(query, 10) for query in queries]
    monkeypatch.setattr(index_kinds, "READ_TOGETHER", 8)
    reads = counting_reads(built)
    together = searcher.neighbors_many(queries, 10, [None] * len(queries))
    assert len(reads) == 3 and all(read <= 8 * 20 for read in reads)
    assert [[n.row_id for n in near] for near in together] == [
        [n.row_id for n in near] for near in alone]


def test_without_signs_every_candidate_is_read(library: Library, state: Path) -> None:
    fill(library, wide(300))
    index.build(library, state, metric="euclidean", trees=10, model_id=MODEL, dims=32)
    built = index.load(state)
    assert built is not None
    reads = counting_reads(built)
    Searcher.open(library, built, "euclidean", EXACT, candidates=100, rescore=10).neighbors(
        wide(1, seed=5)[0], 12)
    assert reads == [101]  # all of Annoy's 100, and one more in case one was excluded


@pytest.mark.parametrize("part", ["planes.npy", "signs.npy"])
def test_an_index_missing_its_signs_is_damaged(library: Library, state: Path, part: str) -> None:
    fill(library, wide(100))
    info = index.build(library, state, metric="angular", trees=5, model_id=MODEL, dims=32)
    (index.folder(state) / f"{info.generation}.{part}").unlink()
    with pytest.raises(StateError, match="damaged"):
        index.load(state)


def test_two_stage_finds_nearly_all_true_neighbours_with_few_candidates(library: Library,
                                                                        state: Path) -> None:
    """Half the dimensions and 10k candidates: the ranking on full vectors mends the rest."""
    spread = np.linspace(1.5, 0.2, DIM, dtype=np.float32)  # real latents' variance decays too
    rows = fill(library, clustered(1000) * spread)
    build(library, state, trees=16, kind="two-stage")
    found = Searcher.open(library, index.load(state), "angular", 4000, candidates=100)
    projected_only = Searcher.open(library, index.load(state), "angular", 4000, candidates=10)
    hits = misses_without = 0
    for seed in range(20):
        query = clustered(1, seed=200 + seed)[0] * spread
        truth = {row for row, _ in brute_force(rows, query, 10)}
        hits += len(truth & {n.row_id for n in found.neighbors(query, 10)})
        misses_without += 10 - len(truth & {n.row_id for n in projected_only.neighbors(query, 10)})
    assert hits >= 0.95 * 200
    assert misses_without > 200 - hits  # the candidates beyond k are what mends it


def test_vectors_come_from_the_searcher_as_the_library_holds_them(library: Library,
                                                                   state: Path,
                                                                   kind: str) -> None:
    """`Searcher.matrix_of` reads what it holds, the rest from the library: the same
    vectors, ids and order as `Library.matrix_of`, for rows of the index, rows changed
    or added since its build, and rows deleted since."""
    rows = fill(library, clustered(120))
    build(library, state, kind=kind)
    by_id = {r.id: r.path for r in library.records().values()}
    ids = sorted(rows)
    changed, deleted = ids[3], ids[5]
    library.apply([entry(by_id[changed], clustered(1, seed=4)[0])], deletions=[by_id[deleted]])
    added = fill(library, clustered(10, seed=5), prefix="new-")
    found = searcher(library, state)
    asked = [*ids[:20], *added, 10**6]  # (no row has the last)
    got_ids, got = found.matrix_of(iter(asked), library)
    want_ids, want = library.matrix_of(asked)
    assert got_ids.tolist() == want_ids.tolist() and deleted not in got_ids.tolist()
    assert np.array_equal(got, want)
    assert [len(part) for part in found.matrix_of([], library)] == [0, 0]


def test_rows_near_each_other_are_put_together_by_their_signs(library: Library,
                                                             state: Path) -> None:
    """`Searcher.near_together` orders rows so that those of one tight group (copies of
    a picture) come together, whatever their row ids; an index without signs (the
    exact one) leaves the order as given."""
    rng = np.random.default_rng(4)
    groups = rng.integers(0, 6, 300)
    vectors = rng.standard_normal((6, 128))[groups] + 1e-4 * rng.standard_normal((300, 128))
    rows = fill(library, vectors.astype(np.float32))
    group_of = dict(zip(rows, groups.tolist(), strict=True))
    given = list(rows)[::-1]

    def runs(order: list[int]) -> int:
        return 1 + sum(group_of[a] != group_of[b] for a, b in itertools.pairwise(order))

    assert runs(given) > 100  # the groups' rows are spread over the ids
    index.build(library, state, metric="angular", trees=5, model_id=MODEL, dims=32)
    assert isinstance(index.load(state), TwoStageIndex)
    together = searcher(library, state).near_together(given)
    assert sorted(together) == sorted(given)
    assert runs(together) == 6
    build(library, state, kind="exact")
    assert searcher(library, state).near_together(given) == given
