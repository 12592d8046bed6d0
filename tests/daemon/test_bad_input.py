"""Whatever lands in the inbox, the real service survives it and says what it did.

One `lookalike run` process is fed every kind of bad, odd or merely unusual
input at once, on top of a small library of digits; each test then checks
one case on what the run left: a results file with `"status": "error"`, a
short code and a message for what cannot be used, a normal answer for what
can, the user's file untouched (bytes and mtime), and the service still
running and answering. The cases the decoder alone decides (FIFO, no read
permission, truncated files, ...) have unit tests in tests/core/test_images.py;
these are the ones whose handling needs the watcher, the store and the
results writer together.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from lookalike.core import results
from tests.daemon.service import (
    SCHEMA,
    SETTINGS,
    SUFFIX,
    Answered,
    fill,
    launcher,
    names,
    problems_of,
    read_results,
)
from tests.helpers import png_header_only

pytestmark = pytest.mark.slow

ANSWER_S = 90.0
LONG_NAME = "n" * 251 + ".png"  # 255 bytes: the longest a Linux file name can be
LATIN1_NAME = b"caf\xe9.png"  # not UTF-8: a name from an old Windows share or a camera


@dataclass
class Case:
    """One input: its name in the inbox and the code expected (None: answered normally)."""

    name: str
    code: str | None


@dataclass
class Fed:
    """What the run left, for the tests to check."""

    inbox: Path
    outside: Path
    library: list[str]
    documents: dict[str, dict[str, Any] | None]
    rows: dict[str, dict[str, Any]]
    before: dict[str, tuple[str, int]]  # name -> (sha256, mtime_ns) when dropped
    after: dict[str, tuple[str, int] | None]
    opened_outside: list[str]
    alive_at_end: bool
    exit_code: int
    log: str
    listing: list[str] = field(default_factory=list)  # every name in the inbox at the end


def fingerprint(path: Path) -> tuple[str, int] | None:
    """(sha256, mtime_ns) of a file; of a link, its target's name and the link's own mtime."""
    try:
        if os.path.islink(path):  # never open a link: its target may be the one not to read
            return os.fsdecode(os.readlink(path)), os.lstat(path).st_mtime_ns
        with open(path, "rb") as image:
            data = image.read()
        return hashlib.sha256(data).hexdigest(), os.lstat(path).st_mtime_ns
    except OSError:
        return None


def png(image: Image.Image, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


def encoded(image: Image.Image, kind: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, kind, **options)
    return out.getvalue()


class Opens(FileSystemEventHandler):
    """Every file opened below a folder (inotify IN_OPEN): proof that a link was not read."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent):
            with self.lock:
                self.seen.append(os.fsdecode(event.src_path))


# -- what is dropped ---------------------------------------------------------------------
def digit(source: Path, side: int = 56) -> Image.Image:
    return Image.open(source).convert("L").resize((side, side), Image.Resampling.BILINEAR)


def drop_all(inbox: Path, outside: Path, digit_files: list[tuple[Path, int]]
             ) -> tuple[dict[str, str | None], dict[str, tuple[str, int]]]:
    """Drop every case into the running service's inbox; return {name: code} and fingerprints."""
    sources = [path for path, _ in digit_files[40:]]
    seven = next(path for path, label in digit_files[60:] if label == 7)  # no other case's
    expected: dict[str, str | None] = {}

    def put(name: str, data: bytes, code: str | None) -> None:
        (inbox / name).write_bytes(data)
        expected[name] = code

    # unusable content
    put("empty.jpg", b"", "empty")
    put("notes.jpg", b"shopping: milk, eggs\n" * 20, "not_an_image")
    put("page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "not_an_image")
    whole = encoded(digit(sources[0], 300).convert("RGB"), "JPEG", quality=90)
    put("truncated.jpg", whole[:len(whole) // 2], "truncated")
    put("bomb.png", png_header_only(100_000, 100_000), "too_many_pixels")
    # usable, if the decoder does its job
    put("big-64mp.jpg", encoded(digit(sources[1], 8000), "JPEG", quality=80), None)
    frames = [digit(sources[2]), Image.eval(digit(sources[2]), lambda v: 255 - v)]
    put("animated.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                duration=80, loop=0), None)
    put("cmyk.jpg", encoded(digit(sources[3]).convert("CMYK"), "JPEG", quality=95), None)
    deep = (np.asarray(digit(sources[4]), dtype=np.uint16) * 257)
    put("deep-16bit.png", png(Image.fromarray(deep)), None)
    palette = digit(sources[5]).convert("P")
    put("palette-transparent.png", png(palette, transparency=255), None)
    put("photo.webp", encoded(digit(sources[6]), "WEBP", quality=95), None)
    put("scan.tiff", encoded(digit(sources[7]), "TIFF"), None)
    put("paint.bmp", encoded(digit(sources[8]), "BMP"), None)
    upright = digit(seven, 224)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    put("upright-7.png", png(upright), None)
    put("sideways-7.png", png(stored), None)  # the same pixels as stored, without the tag
    put("exif-rotated.jpg", encoded(stored, "JPEG", quality=95, exif=exif), None)
    # names
    put("with space.png", png(digit(sources[9])), None)
    put("ünïcödé 日本語.png", png(digit(sources[10])), None)
    put("new\nline.png", png(digit(sources[11])), None)
    put(LONG_NAME, png(digit(sources[12])), None)
    put("forged\nERROR lookalike: every image was deleted.jpg", b"not an image\n",
        "not_an_image")
    with open(os.fsencode(inbox) + b"/" + LATIN1_NAME, "wb") as latin1:
        latin1.write(png(digit(sources[13])))
    # a folder named like an image: a folder (sub-folders count), not a file
    (inbox / "x.jpg").mkdir()
    put("x.jpg/inside.png", png(digit(sources[14])), None)
    # links
    (inbox / "passwd.jpg").symlink_to("/etc/passwd")
    expected["passwd.jpg"] = "outside"
    (inbox / "secret.png").symlink_to(outside / "secret.png")
    expected["secret.png"] = "outside"
    (inbox / "loop.jpg").symlink_to(inbox / "loop.jpg")
    expected["loop.jpg"] = "unreadable"
    before = {name: fingerprint(inbox / name) for name in expected}
    # a file deleted right after it appears
    (inbox / "gone.png").write_bytes(png(digit(sources[15])))
    (inbox / "gone.png").unlink()
    # a file replaced while it is being read: renamed over, then rewritten in place
    versions = [png(digit(sources[16 + n], 56 + 8 * n)) for n in range(4)]
    for n, data in enumerate(versions[:-1]):
        (outside / "replacement").write_bytes(data)
        os.replace(outside / "replacement", inbox / "replaced.png")
        time.sleep(0.005 * (n + 1))
    with open(inbox / "replaced.png", "wb") as rewrite:  # truncated, then written again
        rewrite.write(versions[-1][:100])
        rewrite.flush()
        time.sleep(0.02)
        rewrite.write(versions[-1][100:])
    expected["replaced.png"] = None
    before["replaced.png"] = fingerprint(inbox / "replaced.png")
    return expected, {name: print_ for name, print_ in before.items() if print_ is not None}


def document_of(inbox: Path, name: str) -> dict[str, Any] | None:
    """The results document of inbox image `name`, wherever the service put it."""
    if name == LONG_NAME:  # too long for `<name>.neighbors.json`: a shortened name
        for path in inbox.glob("n*" + SUFFIX):
            try:
                document: dict[str, Any] = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError):
                continue
            if document.get("query") == LONG_NAME:
                return document
        return None
    try:
        with open(os.fsencode(inbox / name) + SUFFIX.encode(), "rb") as results_file:
            found: dict[str, Any] = json.loads(results_file.read().decode("utf-8"))
            return found
    except (OSError, ValueError):
        return None


class Settled:
    """True once every case has its results, or nothing changed for a while with no queue."""

    def __init__(self, inbox: Path, expected: dict[str, str | None], state_dir: Path) -> None:
        self.inbox, self.expected, self.state_dir = inbox, expected, state_dir
        self.last: dict[str, Any] = {}
        self.since = time.monotonic()

    def __call__(self) -> bool:
        now = {name: document_of(self.inbox, name) for name in self.expected}
        pairs = [(now[name], code) for name, code in self.expected.items()]
        done = all(document is not None and (document["status"] == "error") == (code is not None)
                   for document, code in pairs)
        if now != self.last:
            self.last, self.since = now, time.monotonic()
        try:
            queue = json.loads((self.state_dir / "service.json").read_text())["queue"]
        except (OSError, ValueError, KeyError):
            queue = 1
        return done or (queue == 0 and time.monotonic() - self.since > 6)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, config_in: Callable[..., Path],
        digit_files: list[tuple[Path, int]]) -> Iterator[Fed]:
    root = tmp_path_factory.mktemp("bad-input")
    config = config_in(root, **SETTINGS)
    inbox, outside = root / "inbox", root / "outside"
    outside.mkdir()
    library = fill(inbox, digit_files[:30])
    with open(os.fsencode(inbox) + b"/old" + LATIN1_NAME, "wb") as there_at_start:
        there_at_start.write(digit_files[32][0].read_bytes())  # for the start-up scan
    shutil.copy(digit_files[30][0], outside / "secret.png")
    opens = Opens()
    observer = Observer()
    observer.schedule(opens, str(outside), recursive=True, event_filter=[FileOpenedEvent])
    observer.start()
    try:
        with launcher(root) as launch:
            run = launch(config)
            run.ready()
            run.wait(Answered(inbox, library), ANSWER_S, "the library's results")
            expected, before = drop_all(inbox, outside, digit_files)
            run.wait(Settled(inbox, expected, run.state_dir), ANSWER_S, "every case handled")
            # the service goes on: a good image after all that is answered
            shutil.copy(digit_files[31][0], inbox / "after.png")
            run.wait(lambda: not problems_of(read_results(inbox / "after.png"), "after.png",
                                             inbox), ANSWER_S, "the image dropped last")
            documents = {name: document_of(inbox, name)
                         for name in [*expected, "gone.png", os.fsdecode(LATIN1_NAME)]}
            alive = run.process.poll() is None
            database = sqlite3.connect(f"file:{run.state_dir / 'library.sqlite'}?mode=ro",
                                       uri=True)
            database.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
            rows = {path: {"sha256": sha, "deleted": deleted, "error_code": code}
                    for path, sha, deleted, code in database.execute(
                        "SELECT path, sha256, deleted, error_code FROM images")}
            database.close()
            after = {name: fingerprint(inbox / name) for name in before}
            listing = sorted(os.fsdecode(name) for name in os.listdir(os.fsencode(inbox)))
            code = run.terminate()
            yield Fed(inbox, outside, library, documents, rows, before, after,
                      list(opens.seen), alive, code, run.text(), listing)
    finally:
        observer.stop()
        observer.join()


# -- the service ---------------------------------------------------------------------------
def test_the_service_survives_it_all_and_exits_cleanly(fed: Fed) -> None:
    assert fed.alive_at_end
    assert fed.exit_code == 0
    assert "Traceback" not in fed.log
    assert "unexpected error" not in fed.log


def test_no_user_file_is_changed(fed: Fed) -> None:
    changed = [name for name, print_ in fed.before.items() if fed.after[name] != print_]
    assert not changed


# -- unusable content: an error results file with a code and a message -----------------------
ERRORS = ["empty.jpg", "notes.jpg", "page.jpg", "truncated.jpg", "bomb.png", "passwd.jpg",
          "secret.png", "forged\nERROR lookalike: every image was deleted.jpg"]


@pytest.mark.parametrize("name", ERRORS)
def test_unusable_input_gets_an_error_results_file(fed: Fed, name: str) -> None:
    expected = {"empty.jpg": "empty", "notes.jpg": "not_an_image", "page.jpg": "not_an_image",
                "truncated.jpg": "truncated", "bomb.png": "too_many_pixels",
                "passwd.jpg": "outside", "secret.png": "outside"}.get(name, "not_an_image")
    document = fed.documents[name]
    assert document is not None, f"no results file for {name!r}"
    assert document["schema"] == SCHEMA and document["status"] == "error", document
    assert document["query"] == name
    assert document["error"]["code"] == expected
    message = document["error"]["message"]
    assert 10 <= len(message) <= 200 and "Traceback" not in message, message
    assert fed.rows[name]["error_code"] == expected


def test_a_link_out_of_the_inbox_is_never_read(fed: Fed) -> None:
    assert not [path for path in fed.opened_outside if path.endswith("secret.png")]
    assert fed.rows["secret.png"]["sha256"] is None  # nothing of it was hashed either


def test_a_symlink_loop_gets_an_error_results_file(fed: Fed) -> None:
    document = fed.documents["loop.jpg"]
    assert document is not None and document["status"] == "error", document
    assert fed.rows["loop.jpg"]["error_code"] is not None


def test_a_symlink_loop_is_reported_as_a_loop(fed: Fed) -> None:
    document = fed.documents["loop.jpg"]
    assert document is not None and document["error"]["code"] == "unreadable", document
    assert "loop" in document["error"]["message"]


def test_an_unusable_name_cannot_forge_a_log_line(fed: Fed) -> None:
    assert not [line for line in fed.log.splitlines()
                if line.startswith("ERROR lookalike: every image")]


# -- usable input: answered normally ----------------------------------------------------------
USABLE = ["big-64mp.jpg", "animated.gif", "cmyk.jpg", "deep-16bit.png",
          "palette-transparent.png", "photo.webp", "scan.tiff", "paint.bmp", "exif-rotated.jpg",
          "with space.png", "ünïcödé 日本語.png", "new\nline.png", "x.jpg/inside.png",
          "replaced.png"]


@pytest.mark.parametrize("name", USABLE)
def test_usable_input_is_answered(fed: Fed, name: str) -> None:
    problems = problems_of(fed.documents[name], name, fed.inbox)
    assert not problems
    assert fed.rows[name]["error_code"] is None and fed.rows[name]["sha256"]


def test_an_exif_rotated_photo_is_seen_upright(fed: Fed) -> None:
    document = fed.documents["exif-rotated.jpg"]
    assert document is not None
    order = names(document)
    # Upright it is the upright copy; ignoring the tag it would be the sideways one.
    assert order[0] == "upright-7.png", document["neighbors"][:3]
    assert "sideways-7.png" not in order[:1]


def test_a_64_megapixel_photo_is_answered_and_a_100000_squared_png_refused(fed: Fed) -> None:
    assert fed.documents["big-64mp.jpg"] is not None
    assert fed.documents["big-64mp.jpg"]["status"] == "ok"
    assert fed.documents["bomb.png"] is not None
    assert fed.documents["bomb.png"]["error"]["code"] == "too_many_pixels"
    assert "10,000,000,000 pixels" in fed.documents["bomb.png"]["error"]["message"]


def test_a_255_byte_name_gets_results_under_a_shortened_name(fed: Fed) -> None:
    document = fed.documents[LONG_NAME]
    assert not problems_of(document, LONG_NAME, fed.inbox)
    written = [name for name in fed.listing if name.endswith(SUFFIX) and name.startswith("nnn")]
    assert len(written) == 1 and len(written[0].encode()) <= 255
    assert written[0] == results.results_path(fed.inbox / LONG_NAME).name  # as documented


def test_a_name_that_is_not_utf8_is_logged_and_stops_nothing_else(fed: Fed) -> None:
    """Such a name cannot go into the library (UTF-8 text): a warning names it, escaped.

    Before the fix it failed the whole batch it arrived with (SQLite refused the
    path), and the start-up scan of an inbox holding one.
    """
    assert fed.documents[os.fsdecode(LATIN1_NAME)] is None
    assert os.fsdecode(LATIN1_NAME) not in fed.rows
    assert " caf\\xe9.png: the file name is not UTF-8; not read (rename the file)" in fed.log
    # one there at start-up: before the fix, the service could not start
    assert " oldcaf\\xe9.png: the file name is not UTF-8; not read (rename the file)" in fed.log


def test_a_folder_named_like_an_image_is_a_folder(fed: Fed) -> None:
    assert "x.jpg" + SUFFIX not in fed.listing
    assert "x.jpg" not in fed.rows
    assert fed.documents["x.jpg/inside.png"] is not None


def test_a_file_deleted_as_it_appears_leaves_nothing(fed: Fed) -> None:
    assert fed.documents["gone.png"] is None
    assert "gone.png" + SUFFIX not in fed.listing
    assert fed.rows.get("gone.png", {"deleted": 1})["deleted"]


def test_a_file_replaced_while_read_is_answered_for_its_last_content(fed: Fed) -> None:
    sha, _ = fed.before["replaced.png"]
    assert fed.rows["replaced.png"]["sha256"] == sha


def test_no_temporary_files_are_left(fed: Fed) -> None:
    assert not [name for name in fed.listing if name.startswith(results.TEMP_PREFIX)]
