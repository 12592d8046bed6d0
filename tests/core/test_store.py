"""The library: a real SQLite database in tmp_path."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lookalike.core.errors import StateError
from lookalike.core.store import Answer, Entry, Library

MODEL = "sha256:" + "a" * 64
OTHER_MODEL = "sha256:" + "b" * 64


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Library]:
    with Library(tmp_path / "state" / "library.sqlite") as opened:
        yield opened


def vector(seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def image(path: str, seed: int, model: str = MODEL, size: int = 100) -> Entry:
    return Entry(path, size, 1_000 + seed, f"{seed:064x}", model, vector(seed))


def broken(path: str, code: str = "truncated") -> Entry:
    return Entry(path, 10, 5, None, None, None, code, "the image data is damaged")


def test_new_library_is_empty(library: Library) -> None:
    assert library.generation == 0
    assert library.records() == {}
    assert library.counts() == {"images": 0, "vectors": 0, "errors": 0}
    ids, latents = library.vectors()
    assert ids.shape == (0,) and ids.dtype == np.int64 and latents.shape[0] == 0
    assert library.model_ids() == {}
    assert library.pending(0) == 0


def test_vectors_round_trip_exactly_as_float32(library: Library) -> None:
    odd = np.array([1e-38, -0.0, 3.4e38, np.pi, -1 / 3, 7, 0.1, np.float32(2) ** -149], np.float32)
    library.apply([Entry("odd.jpg", 1, 1, "0" * 64, MODEL, odd), image("b.jpg", 2)])
    ids, latents = library.vectors()
    by_path = {r.id: r.path for r in library.records().values()}
    assert latents.dtype == np.float32 and latents.shape == (2, 8)
    found = dict(zip([by_path[int(i)] for i in ids], latents, strict=True))
    assert found["odd.jpg"].tobytes() == odd.tobytes()  # bit for bit, -0.0 and subnormal too
    assert found["b.jpg"].tobytes() == vector(2).tobytes()


def test_float64_latents_are_stored_as_float32(library: Library) -> None:
    library.apply([Entry("x.jpg", 1, 1, "0" * 64, MODEL, vector(3).astype(np.float64))])
    _, latents = library.vectors()
    assert latents.dtype == np.float32
    assert np.array_equal(latents[0], vector(3))


def test_records_hold_what_was_applied(library: Library) -> None:
    library.apply([image("a/one.jpg", 1, size=1234), broken("two.png")])
    records = library.records()
    assert set(records) == {"a/one.jpg", "two.png"}
    one = records["a/one.jpg"]
    assert (one.size, one.mtime_ns, one.sha256, one.model_id) == (1234, 1001, f"{1:064x}", MODEL)
    assert (one.error_code, one.error_message, one.answered, one.radius) == (None, None, None, None)
    two = records["two.png"]
    assert (two.error_code, two.error_message, two.sha256) == (
        "truncated", "the image data is damaged", None)
    assert library.lookup(["two.png", "nope.jpg"]) == {"two.png": two}
    assert library.fetch([one.id]) == {one.id: one}
    assert library.describe([one.id, two.id]) == {one.id: ("a/one.jpg", f"{1:064x}"),
                                                  two.id: ("two.png", None)}


def test_generation_rises_by_one_per_apply(library: Library) -> None:
    assert library.apply([image("a.jpg", 1), image("b.jpg", 2)]) == 1
    assert library.apply([image("c.jpg", 3)]) == 2
    assert library.apply(deletions=["a.jpg"]) == 3
    assert library.apply() == 4  # an empty change is still a change of generation
    assert library.generation == 4


def test_upsert_by_path_keeps_the_row_id(library: Library) -> None:
    library.apply([image("a.jpg", 1), image("b.jpg", 2)])
    before = library.records()["a.jpg"]
    library.mark_answered([Answer(before.id, "f" * 32, [2], 0.5)])
    library.apply([image("a.jpg", 9, model=OTHER_MODEL)])
    after = library.records()["a.jpg"]
    assert after.id == before.id
    assert (after.sha256, after.model_id) == (f"{9:064x}", OTHER_MODEL)
    assert after.answered is None and after.radius is None  # its results must be written again
    assert library.vectors_of([after.id])[after.id].tobytes() == vector(9).tobytes()
    assert library.counts()["images"] == 2


def test_an_image_can_become_unusable_and_usable_again(library: Library) -> None:
    library.apply([image("a.jpg", 1)])
    row = library.records()["a.jpg"].id
    library.apply([broken("a.jpg")])
    assert library.counts() == {"images": 1, "vectors": 0, "errors": 1}
    assert library.vectors_of([row]) == {}
    library.apply([image("a.jpg", 2)])
    assert library.counts() == {"images": 1, "vectors": 1, "errors": 0}
    assert library.records()["a.jpg"].error_code is None


def test_delete_leaves_a_tombstone(library: Library) -> None:
    library.apply([image("a.jpg", 1), image("b.jpg", 2)])
    gone = library.records()["a.jpg"].id
    generation = library.apply(deletions=["a.jpg", "never-there.jpg"])
    assert set(library.records()) == {"b.jpg"}
    assert library.lookup(["a.jpg"]) == {} and library.fetch([gone]) == {}
    ids, _ = library.vectors()
    assert gone not in ids
    fresh_ids, _, stale = library.changed_since(generation - 1)
    assert gone in stale and gone not in fresh_ids
    # The tombstone still says which path the index item was.
    assert library.describe([gone]) == {gone: ("a.jpg", f"{1:064x}")}
    assert library.counts() == {"images": 1, "vectors": 1, "errors": 0}


def test_deleting_twice_does_not_touch_the_tombstone_again(library: Library) -> None:
    library.apply([image("a.jpg", 1)])
    row = library.records()["a.jpg"].id
    first = library.apply(deletions=["a.jpg"])
    library.apply(deletions=["a.jpg"])
    assert row in library.changed_since(first - 1)[2]
    assert row not in library.changed_since(first)[2]  # still at the generation it left


def test_a_deleted_path_that_comes_back_is_live_again(library: Library) -> None:
    library.apply([image("a.jpg", 1)])
    row = library.records()["a.jpg"].id
    library.apply(deletions=["a.jpg"])
    library.apply([image("a.jpg", 5)])
    assert library.records()["a.jpg"].id == row
    assert library.vectors_of([row])[row].tobytes() == vector(5).tobytes()


def test_changed_since(library: Library) -> None:
    built = library.apply([image(f"{n}.jpg", n) for n in range(6)])
    rows = {path: r.id for path, r in library.records().items()}
    library.apply([image("new.jpg", 10), image("1.jpg", 11)])  # one new, one changed
    library.apply([broken("2.jpg")], deletions=["3.jpg"])       # one unusable, one gone
    rows["new.jpg"] = library.records()["new.jpg"].id

    fresh_ids, fresh, stale = library.changed_since(built)
    assert fresh_ids.tolist() == sorted([rows["1.jpg"], rows["new.jpg"]])
    expected = {rows["1.jpg"]: vector(11), rows["new.jpg"]: vector(10)}
    for row, latent in zip(fresh_ids, fresh, strict=True):
        assert latent.tobytes() == expected[int(row)].tobytes()  # the new vector, not the old
    assert stale == {rows[p] for p in ("1.jpg", "2.jpg", "3.jpg", "new.jpg")}

    fresh_ids, _, stale = library.changed_since(library.generation)
    assert len(fresh_ids) == 0 and stale == set()
    assert set(library.changed_since(0)[0].tolist()) == set(library.vectors()[0].tolist())


def test_vectors_up_to_a_generation_excludes_later_changes(library: Library) -> None:
    first = library.apply([image("a.jpg", 1), image("b.jpg", 2)])
    library.apply([image("c.jpg", 3), image("a.jpg", 4)])
    rows = {path: r.id for path, r in library.records().items()}
    ids, latents = library.vectors(up_to=first)
    assert ids.tolist() == [rows["b.jpg"]]  # a.jpg changed later: the index must not hold it
    assert latents[0].tobytes() == vector(2).tobytes()
    ids, _ = library.vectors()
    assert ids.tolist() == sorted(rows.values())
    assert library.vectors(up_to=0)[0].tolist() == []


def test_pending_counts_usable_images_changed_since(library: Library) -> None:
    built = library.apply([image("a.jpg", 1), image("b.jpg", 2)])
    assert library.pending(built) == 0
    library.apply([image("c.jpg", 3), broken("d.jpg"), image("a.jpg", 5)])
    library.apply(deletions=["b.jpg"])
    assert library.pending(built) == 2  # c and the new a; not the broken d nor deleted b
    assert library.pending(0) == 2


def test_counts_with_error_rows(library: Library) -> None:
    library.apply([image("a.jpg", 1), image("b.jpg", 2), broken("c.jpg"),
                   broken("d.txt.jpg", "not_an_image")])
    assert library.counts() == {"images": 4, "vectors": 2, "errors": 2}


def test_model_ids(library: Library) -> None:
    library.apply([image("a.jpg", 1), image("b.jpg", 2), image("c.jpg", 3, OTHER_MODEL),
                   broken("d.jpg")])
    assert library.model_ids() == {MODEL: 2, OTHER_MODEL: 1}
    library.apply(deletions=["c.jpg"])
    assert library.model_ids() == {MODEL: 2}


def test_vectors_of_one_model_and_images_other_models_encoded(library: Library) -> None:
    library.apply([image("a.jpg", 1), image("b.jpg", 2, OTHER_MODEL), image("c.jpg", 3),
                   broken("d.jpg")])
    rows = {path: r.id for path, r in library.records().items()}
    ids, latents = library.vectors(model_id=MODEL)
    assert ids.tolist() == sorted([rows["a.jpg"], rows["c.jpg"]])
    assert latents[0].tobytes() == vector(1).tobytes()
    assert library.vectors(model_id=OTHER_MODEL)[0].tolist() == [rows["b.jpg"]]
    assert len(library.vectors()[0]) == 3  # no model given: every usable image
    assert library.encoded_by_others(MODEL) == ["b.jpg"]  # not the unusable d.jpg
    assert library.encoded_by_others(OTHER_MODEL) == ["a.jpg", "c.jpg"]
    library.apply([image("b.jpg", 4)])  # re-encoded by the current model
    assert library.encoded_by_others(MODEL) == []


def test_mark_answered(library: Library) -> None:
    library.apply([image("a.jpg", 1), image("b.jpg", 2), image("c.jpg", 3)])
    rows = {path: r.id for path, r in library.records().items()}
    generation = library.generation
    library.mark_answered([Answer(rows["a.jpg"], "1" * 32, [rows["b.jpg"]], 0.25),
                           Answer(rows["b.jpg"], "2" * 32, [rows["a.jpg"], rows["c.jpg"]], None)])
    records = library.records()
    assert (records["a.jpg"].answered, records["a.jpg"].radius) == ("1" * 32, 0.25)
    assert (records["b.jpg"].answered, records["b.jpg"].radius) == ("2" * 32, None)
    assert records["c.jpg"].answered is None
    assert library.generation == generation  # answering is not a change of the library
    assert library.radii(rows.values()) == {rows["a.jpg"]: 0.25, rows["b.jpg"]: None}
    assert sorted(library.listing_any([rows["c.jpg"]])) == [rows["b.jpg"]]
    assert sorted(library.listing_any([rows["a.jpg"], rows["b.jpg"]])) == sorted(
        [rows["a.jpg"], rows["b.jpg"]])
    assert library.listing_any([]) == []
    library.apply(deletions=["b.jpg"])  # a deleted image's results name nothing any more
    assert library.listing_any([rows["c.jpg"]]) == []


def test_listing_any_follows_rewritten_results(library: Library) -> None:
    library.apply([image("a.jpg", 1), image("b.jpg", 2), image("c.jpg", 3)])
    rows = {path: r.id for path, r in library.records().items()}
    a, b, c = rows["a.jpg"], rows["b.jpg"], rows["c.jpg"]
    library.mark_answered([Answer(a, "1" * 32, [b, c], 0.5), Answer(b, "2" * 32, [a], 0.5),
                           Answer(c, "4" * 32, [], None)])
    assert library.listing_any([c]) == [a] and library.listing_any([a, c]) == [a, b]
    library.mark_answered([Answer(a, "3" * 32, [b], 0.5)])  # rewritten: names c no more
    assert library.listing_any([c]) == [] and library.listing_any([b]) == [a]


def test_mark_outdated_marks_results_out_of_date_until_answered_again(library: Library) -> None:
    library.apply([image("a.jpg", 1), image("b.jpg", 2)])
    rows = {path: r.id for path, r in library.records().items()}
    library.mark_answered([Answer(rows["a.jpg"], "1" * 32, [rows["b.jpg"]], 0.25),
                           Answer(rows["b.jpg"], "2" * 32, [rows["a.jpg"]], 0.25)])
    library.mark_outdated([rows["a.jpg"]])
    records = library.records()
    assert records["a.jpg"].answered is None and records["b.jpg"].answered == "2" * 32
    # Still measured against meanwhile: a later arrival may enter its results too.
    assert library.radii(rows.values()) == {rows["a.jpg"]: 0.25, rows["b.jpg"]: 0.25}
    library.apply(deletions=["b.jpg"])
    assert library.radii(rows.values()) == {rows["a.jpg"]: 0.25}
    library.mark_answered([Answer(rows["a.jpg"], "3" * 32, [rows["b.jpg"]], 0.5)])
    assert library.records()["a.jpg"].answered == "3" * 32


def test_a_change_marks_the_results_listing_what_it_replaces_or_removes(
        library: Library) -> None:
    """In its own transaction, so that a kill right after it cannot lose the marks."""
    library.apply([image("a.jpg", 1), image("b.jpg", 2), image("c.jpg", 3), image("d.jpg", 4)])
    rows = {path: r.id for path, r in library.records().items()}
    a, b, c, d = (rows[name] for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"))
    library.mark_answered([Answer(a, "1" * 32, [b], 0.5), Answer(b, "2" * 32, [c], 0.5),
                           Answer(c, "3" * 32, [d], 0.5), Answer(d, "4" * 32, [a], 0.5)])

    same = library.store([image("b.jpg", 2)])  # touched: the same bytes, the same vector
    assert same.outdated == []
    edited = library.store([image("b.jpg", 9)])  # new bytes: who listed it searches again
    assert edited.outdated == [a] and edited.generation == same.generation + 1
    gone = library.store(deletions=["d.jpg"])
    assert gone.outdated == [c]
    unusable = library.store([image("e.jpg", 5), broken("a.jpg")])
    assert unusable.outdated == []  # d listed a, and d is gone
    answered = {path: r.answered for path, r in library.records().items()}
    assert answered == {"a.jpg": None, "b.jpg": None, "c.jpg": None, "e.jpg": None}
    assert library.records()["c.jpg"].radius == 0.5  # still measured against meanwhile


def test_many_ids_are_looked_up_in_chunks(library: Library) -> None:
    library.apply([image(f"{n:04d}.jpg", n) for n in range(1_200)])
    rows = [r.id for r in library.records().values()]
    assert len(library.describe(rows)) == 1_200
    assert len(library.vectors_of(rows + [10**9])) == 1_200
    assert len(library.lookup(f"{n:04d}.jpg" for n in range(1_200))) == 1_200


def test_forget_deleted(library: Library) -> None:
    library.apply([image("a.jpg", 1), image("b.jpg", 2), image("c.jpg", 3)])
    rows = {path: r.id for path, r in library.records().items()}
    early = library.apply(deletions=["a.jpg"])
    late = library.apply(deletions=["b.jpg"])
    assert library.forget_deleted(up_to=early) == 1
    assert library.describe(rows.values()).keys() == {rows["b.jpg"], rows["c.jpg"]}
    assert library.forget_deleted(up_to=early) == 0
    assert library.forget_deleted(up_to=late) == 1
    assert set(library.records()) == {"c.jpg"}  # live rows are never forgotten


def test_what_changed_since_a_generation_is_looked_up_not_scanned(library: Library) -> None:
    """The service asks at every swap of its index; a scan of the table is 0.7 s at 10^6."""
    generation = library.apply([image("a.jpg", 1), image("b.jpg", 2)])
    statements: list[str] = []
    library.db.set_trace_callback(statements.append)
    library.changed_since(generation)
    library.db.set_trace_callback(None)
    (query,) = statements
    plan = library.db.execute("EXPLAIN QUERY PLAN " + query).fetchall()
    assert "USING INDEX images_by_generation" in plan[0][-1]


def test_tombstones_are_found_without_a_scan_of_the_table(library: Library) -> None:
    """A scan would hold the write lock, and stall the service's writes, while a build
    in another process forgets tombstones: seconds at 10^6 rows."""
    plan = library.db.execute("EXPLAIN QUERY PLAN DELETE FROM images "
                              "WHERE deleted = 1 AND generation <= 1").fetchall()
    assert "USING INDEX images_deleted" in plan[0][-1]


def test_models_of_the_vectors_are_read_from_their_index(library: Library) -> None:
    """Every start asks for vectors another model made, and `lookalike status` counts the
    vectors of each model: a scan of the table is 2.6 s at 10^6 rows."""
    library.apply([image("a.jpg", 1), image("b.jpg", 2, OTHER_MODEL)])
    statements: list[str] = []
    library.db.set_trace_callback(statements.append)
    library.encoded_by_others(MODEL)
    library.model_ids()
    library.db.set_trace_callback(None)
    assert len(statements) == 2
    for query in statements:
        plan = library.db.execute("EXPLAIN QUERY PLAN " + query).fetchall()
        assert "USING INDEX images_models" in plan[0][-1], query


def test_a_failed_apply_changes_nothing(library: Library) -> None:
    library.apply([image("a.jpg", 1)])
    bad = Entry(None, 1, 1, None, None)  # type: ignore[arg-type]  # path NOT NULL
    with pytest.raises(sqlite3.IntegrityError):
        library.apply([image("b.jpg", 2), bad], deletions=["a.jpg"])
    assert library.generation == 1
    assert set(library.records()) == {"a.jpg"}
    assert library.apply([image("c.jpg", 3)]) == 2  # and the library is usable after it


def test_wal_journal_mode_is_on(tmp_path: Path, library: Library) -> None:
    assert library.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    library.apply([image("a.jpg", 1)])
    assert (tmp_path / "state" / "library.sqlite-wal").exists()
    other = sqlite3.connect(tmp_path / "state" / "library.sqlite")
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # kept in the file
    finally:
        other.close()


def test_a_second_connection_reads_while_one_writes(tmp_path: Path) -> None:
    path = tmp_path / "library.sqlite"
    with Library(path) as writer, Library(path) as reader:
        writer.apply([image("a.jpg", 1)])
        writer.db.execute("BEGIN IMMEDIATE")
        writer.db.execute("UPDATE images SET size = 0")
        assert reader.records()["a.jpg"].size == 100  # WAL: the reader sees the last commit
        writer.db.execute("ROLLBACK")


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "library.sqlite"
    with Library(path) as first:
        first.apply([image("a.jpg", 1), broken("b.jpg")])
        first.apply(deletions=["b.jpg"])
        records = first.records()
        first.mark_answered([Answer(records["a.jpg"].id, "3" * 32, [], 0.1)])
        records = first.records()
    with Library(path) as again:
        assert again.generation == 2
        assert again.records() == records
        ids, latents = again.vectors()
        assert ids.tolist() == [records["a.jpg"].id]
        assert latents[0].tobytes() == vector(1).tobytes()


def test_a_file_that_is_not_a_database_gives_state_error(tmp_path: Path) -> None:
    (tmp_path / "library.sqlite").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StateError, match="cannot open the library"):
        Library(tmp_path / "library.sqlite")
