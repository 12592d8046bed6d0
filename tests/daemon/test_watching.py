"""Events or polling: the file system of a watched folder (`mounts`), the poller of folder
mtimes (`polling`), and the real service on a FUSE mount whose source changes unseen."""
from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.observers.api import EventQueue, ObservedWatch

from lookalike.daemon import mounts, polling
from lookalike.daemon.watcher import Arrivals, Watcher
from tests.daemon.service import SUFFIX, Start, fill, read_results
from tests.helpers import LOOKALIKE, lookalike_env, tensorflow_lines

MOUNTINFO = """\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
41 22 0:38 / /srv/photos rw,relatime shared:20 - nfs4 nas:/export/photos rw,vers=4.2
42 41 0:39 / /srv/photos/phone\\040uploads rw,nosuid shared:21 - fuse.sshfs me@phone:/DCIM rw
43 22 0:40 / /mnt/usb rw shared:22 - fuseblk /dev/sdb1 rw
44 22 0:41 / /mnt/usb rw shared:23 - vfat /dev/sdc1 rw
"""


@pytest.mark.parametrize(("path", "kind", "remote"), [
    ("/home/me/inbox", "ext4", False),
    ("/srv/photos", "nfs4", True),
    ("/srv/photos/2026", "nfs4", True),
    ("/srv/photos/phone uploads/DCIM", "fuse.sshfs", True),  # a space, as mountinfo escapes it
    ("/srv/photosynth", "ext4", False),  # a longer name is not below /srv/photos
    ("/mnt/usb/x", "vfat", False),  # mounted over the fuseblk disk: the later mount counts
])
def test_the_file_system_of_a_folder_is_its_last_mount_at_its_longest_mount_point(
        path: str, kind: str, remote: bool) -> None:
    found = mounts.mounted_at(path, MOUNTINFO)
    assert (found.kind, found.remote) == (kind, remote)


@pytest.mark.parametrize(("kind", "remote"), [
    ("nfs", True), ("cifs", True), ("smb3", True), ("9p", True), ("fuse.rclone", True),
    ("fuse.bindfs", True), ("ext4", False), ("btrfs", False), ("tmpfs", False),
    ("overlay", False), ("fuseblk", False), ("unknown", False)])
def test_network_and_fuse_file_systems_are_polled(kind: str, remote: bool) -> None:
    assert mounts.FileSystem(kind, "/").remote is remote


def test_the_file_system_of_a_real_folder_is_read(tmp_path: Path) -> None:
    found = mounts.file_system(tmp_path)
    assert found.kind != "unknown" and str(tmp_path).startswith(found.mount_point)


# -- the poller ---------------------------------------------------------------------------
def poller_of(folder: Path) -> tuple[polling.FolderPoller, EventQueue]:
    events = EventQueue()
    return polling.FolderPoller(events, ObservedWatch(str(folder), recursive=True),
                                timeout=60), events


def drained(events: EventQueue) -> set[tuple[str, str]]:
    found = set()
    with contextlib.suppress(queue.Empty):
        while True:
            event, _ = events.get_nowait()
            found.add((type(event).__name__, os.path.basename(os.fsdecode(event.src_path))))
    return found


def test_a_poll_sees_files_made_removed_replaced_and_folders_moved_in_and_out(
        tmp_path: Path) -> None:
    (tmp_path / "album").mkdir()
    (tmp_path / "a.jpg").write_bytes(b"a")
    (tmp_path / "b.jpg").write_bytes(b"b")
    (tmp_path / "album" / "c.jpg").write_bytes(b"c")
    poller, events = poller_of(tmp_path)
    poller.poll()
    assert drained(events) == set()  # what was there when watched is not new

    (tmp_path / "new.jpg").write_bytes(b"n")
    (tmp_path / "b.jpg").unlink()
    (tmp_path / "staged.jpg").write_bytes(b"r")
    os.replace(tmp_path / "staged.jpg", tmp_path / "a.jpg")  # renamed over: another file
    os.rename(tmp_path / "album", tmp_path / "trip")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "d.jpg").write_bytes(b"d")
    os.rename(outside, tmp_path / "moved in")
    (tmp_path / ".hidden.jpg").write_bytes(b"h")
    (tmp_path / ("new.jpg" + SUFFIX)).write_text("{}")  # our own results file
    poller.poll()
    assert drained(events) == {
        ("FileCreatedEvent", "new.jpg"), ("FileDeletedEvent", "b.jpg"),
        ("FileDeletedEvent", "a.jpg"), ("FileCreatedEvent", "a.jpg"),
        ("DirDeletedEvent", "album"), ("DirCreatedEvent", "trip"),
        ("FileCreatedEvent", "c.jpg"), ("DirCreatedEvent", "moved in"),
        ("DirCreatedEvent", "deep"), ("FileCreatedEvent", "d.jpg")}
    (tmp_path / "trip" / "e.jpg").write_bytes(b"e")
    poller.poll()
    assert drained(events) == {("FileCreatedEvent", "e.jpg")}
    poller.poll()
    assert drained(events) == set()


def test_an_unchanged_tree_costs_a_stat_per_folder_and_no_listing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in range(40):
        (tmp_path / f"{folder:02d}").mkdir()
        for image in range(50):
            (tmp_path / f"{folder:02d}" / f"{image}.jpg").write_bytes(b"x")
    poller, events = poller_of(tmp_path)
    statted: list[str] = []
    listed: list[str] = []
    real_listed = polling.listed

    def stat(path: str) -> os.stat_result:
        statted.append(path)
        return os.stat(path)

    def listing(folder: str) -> polling.Listing:
        listed.append(folder)
        return real_listed(folder)

    monkeypatch.setattr(polling, "listed", listing)
    poller.poll(stat)
    assert (len(statted), listed) == (41, [])  # 2,000 files: not one of them looked at
    (tmp_path / "07" / "new.jpg").write_bytes(b"n")
    poller.poll(stat)
    assert listed == [str(tmp_path / "07")]
    assert drained(events) == {("FileCreatedEvent", "new.jpg")}
    poller.poll(stat)  # listed once more (a change in the same tick of the clock), then not
    poller.poll(stat)
    assert listed == [str(tmp_path / "07")] * 2


def test_the_watcher_polls_a_remote_folder_and_asks_the_kernel_of_a_local_one(
        tmp_path: Path) -> None:
    share, local = tmp_path / "share", tmp_path / "local"
    share.mkdir()
    local.mkdir()
    arrivals = Arrivals({"inbox": share, "queries": local}, 0.0)

    def file_system(folder: Path) -> mounts.FileSystem:  # as if the share were NFS
        return mounts.FileSystem("nfs4" if folder == share else "ext4", str(folder))

    watcher = Watcher(arrivals, "auto", 0.1, file_system)
    watcher.start()
    try:
        assert {root: how.mode for root, how in watcher.watching.items()} == {
            "inbox": "poll", "queries": "events"}
        (share / "x.jpg").write_bytes(b"x")
        (local / "y.jpg").write_bytes(b"y")
        deadline = time.monotonic() + 10
        while len(arrivals.pending) < 2 and time.monotonic() < deadline:
            arrivals.wait(0.2)
        assert set(arrivals.pending) == {("inbox", "x.jpg"), ("queries", "y.jpg")}
    finally:
        watcher.stop()


# -- the real service on a FUSE mount ----------------------------------------------------------
@pytest.fixture
def fuse_inbox(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(source, inbox): `bindfs source inbox`. A file written under the source reaches the
    mount, but no watcher of the mount hears of it: a network share on one machine."""
    if shutil.which("bindfs") is None:
        pytest.skip("bindfs is not installed (apt-get install bindfs)")
    source, inbox = tmp_path / "source", tmp_path / "inbox"
    source.mkdir()
    inbox.mkdir()
    mounted = subprocess.run(["bindfs", "--no-allow-other", str(source), str(inbox)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount with FUSE here: {mounted.stderr.strip()}")
    try:
        yield source, inbox
    finally:
        subprocess.run(["fusermount", "-u", str(inbox)], capture_output=True, check=False)


@pytest.mark.slow
def test_a_file_written_under_a_fuse_inboxs_source_is_answered_within_a_poll_and_5_s(
        tmp_path: Path, fuse_inbox: tuple[Path, Path], make_config: Callable[..., Path],
        start: Start, digit_files: list[tuple[Path, int]]) -> None:
    source, inbox = fuse_inbox
    kind = mounts.file_system(inbox).kind  # "fuse" or "fuse.bindfs", by bindfs's version
    assert kind == "fuse" or kind.startswith("fuse.")
    fill(source, digit_files[:20])
    # watch.mode is left at its default, auto
    config = make_config(watch={"settle_s": 0.5, "rescan_interval_s": 0, "poll_interval_s": 3})
    run = start(config)
    report = run.ready()
    assert report["watch"]["inbox"] == {"mode": "poll", "file_system": kind,
                                        "poll_interval_s": 3}
    assert report["watch"]["queries"]["mode"] == "events"  # a local folder
    log = run.text()
    assert "(changes made elsewhere send no events): polled every 3 s" in log
    assert "(its changes send events): watched by file events" in log
    run.wait(lambda: read_results(inbox / digit_files[0][0].name), what="the start-up scan")

    written = time.monotonic()
    name = digit_files[20][0].name
    shutil.copy(digit_files[20][0], source / name)  # under the source: no event on the mount
    run.wait(lambda: read_results(inbox / name), timeout=30, what=f"results of {name}")
    assert time.monotonic() - written <= 3 + 5
    assert (read_results(source / name) or {})["status"] == "ok"

    status = subprocess.run([str(LOOKALIKE), "status", "-c", str(config)], capture_output=True,
                            text=True, env=lookalike_env(), check=True, timeout=60).stdout
    assert f"inbox watched (polled every 3 s, {kind})" in status
    run.wait(lambda: " burst: 1 added, " in run.text(), what="the burst's line")
    assert tensorflow_lines(run.text()) == []  # the service's start, at info: none
    assert run.terminate() == 0
    assert json.loads((run.state_dir / "service.json").read_text())["state"] == "stopped"
