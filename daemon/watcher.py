"""Watch folders and collect the paths that changed, until they settle.

The watchdog handler only notes a path (coalescing repeated events); the
service asks `Arrivals.ready` for the paths that are complete: closed after
writing, moved into place, gone, or with size and mtime unchanged for the
settle time. Reading a file that is still being written is what this
prevents. Each watched folder is watched by the kernel's events or polled
(`watch.mode`; `auto` polls network shares and FUSE file systems, whose
changes made elsewhere send no events: `mounts`, `polling`).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from lookalike.core import scan
from lookalike.daemon import mounts, polling

log = logging.getLogger(__name__)

# Opens and reads (our own among them) are not changes: not subscribed to.
EVENTS = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
          DirCreatedEvent, DirMovedEvent, DirDeletedEvent]

Stat = tuple[int, int] | None  # (size, mtime_ns), None when missing


@dataclass
class Pending:
    complete: bool = False  # closed after writing or moved into place
    stat: Stat = None
    since: float = 0.0
    checked: bool = False


@dataclass(frozen=True)
class Ready:
    """A path of a watched folder that can be acted on."""

    root: str  # "inbox" or "queries"
    path: str  # relative to that folder
    stat: Stat  # None: the file is gone
    folder: bool = False  # a folder vanished: forget what was under it


@dataclass
class Arrivals:
    """Paths noted by the watcher, coalesced, waiting to settle."""

    roots: dict[str, Path]
    settle_s: float
    exclude: tuple[str, ...] = ()
    clock: Callable[[], float] = field(default=lambda: 0.0)
    pending: dict[tuple[str, str], Pending] = field(default_factory=dict)
    folders: set[tuple[str, str]] = field(default_factory=set)
    changed: threading.Condition = field(default_factory=threading.Condition)
    news: bool = False  # something was noted since the last `wait`
    misnamed: set[tuple[str, str]] = field(default_factory=set)  # warned of: once each

    def note(self, root: str, absolute: str, complete: bool = False) -> None:
        relative = self.relative(root, absolute)
        if relative is None or not scan.wanted(relative, self.exclude):
            if relative is not None and scan.misnamed(relative, self.exclude) \
                    and (root, relative) not in self.misnamed and os.path.lexists(absolute):
                if len(self.misnamed) < 10_000:  # a bound, for a folder full of them
                    self.misnamed.add((root, relative))
                log.warning("%s: the file name is not UTF-8; not read (rename the file)",
                            scan.shown(relative))
            return
        with self.changed:
            first = not self.pending
            entry = self.pending.setdefault((root, relative), Pending())
            entry.complete = entry.complete or complete
            if complete or first:  # else the next poll of pending paths sees it
                self.wake()

    def note_folder(self, root: str, absolute: str) -> None:
        relative = self.relative(root, absolute)
        if relative:
            with self.changed:
                self.folders.add((root, relative))
                self.wake()

    def relative(self, root: str, absolute: str) -> str | None:
        try:
            relative = Path(absolute).relative_to(self.roots[root]).as_posix()
        except ValueError:
            return None
        return None if relative == "." else relative

    def __len__(self) -> int:
        with self.changed:
            return len(self.pending) + len(self.folders)

    def wake(self) -> None:
        """Under `changed`: end the service's current `wait`."""
        self.news = True
        self.changed.notify()

    def wait(self, timeout: float) -> None:
        """Sleep until a path may be ready (a new arrival, a close, a folder) or `timeout`.

        A file still being written wakes nobody: its many write events would
        keep the service busy; the service polls pending paths instead.
        """
        with self.changed:
            if not self.news:
                self.changed.wait(timeout)
            self.news = False

    def ready(self, limit: int) -> list[Ready]:
        """Up to `limit` paths that are complete or gone; the rest keep waiting."""
        now = self.clock()
        with self.changed:
            noted = list(self.pending.items())
            folders, self.folders = self.folders, set()
        done: list[Ready] = [Ready(root, path, None, folder=True) for root, path in folders
                             if not (self.roots[root] / path).is_dir()]
        for (root, path), entry in noted:
            if len(done) >= limit:
                break
            stat = stat_of(self.roots[root] / path)
            with self.changed:
                if self.pending.get((root, path)) is not entry:
                    continue  # noted again meanwhile: look next time
                if not entry.checked or stat != entry.stat:
                    entry.stat, entry.since, entry.checked = stat, now, True
                    if not (entry.complete or stat is None):
                        continue
                elif not (entry.complete or now - entry.since >= self.settle_s):
                    continue
                del self.pending[(root, path)]
            done.append(Ready(root, path, stat))
        return done


def folder_identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, None when it is not there."""
    try:
        status = os.stat(folder)
    except OSError:
        return None
    return (status.st_dev, status.st_ino) if stat.S_ISDIR(status.st_mode) else None


def stat_of(path: Path) -> Stat:
    """(size, mtime_ns) of a file; None when it is gone or a link to nothing.

    A loop of links is there (its own stat, so that it is reported), not gone.
    """
    try:
        status = os.stat(path)
    except OSError as error:
        if error.errno != errno.ELOOP:
            return None
        try:
            status = os.lstat(path)
        except OSError:
            return None
    return (status.st_size, status.st_mtime_ns)


class Handler(FileSystemEventHandler):
    """Only notes paths: the service does the work."""

    def __init__(self, arrivals: Arrivals, root: str) -> None:
        self.arrivals, self.root = arrivals, root

    def on_any_event(self, event: FileSystemEvent) -> None:
        source = os.fsdecode(event.src_path)
        target = os.fsdecode(getattr(event, "dest_path", "") or "")
        if event.is_directory:
            if isinstance(event, DirDeletedEvent):
                self.arrivals.note_folder(self.root, source)
            elif isinstance(event, DirMovedEvent):
                self.arrivals.note_folder(self.root, source)
            return  # watchdog reports the files inside new and moved folders itself
        if isinstance(event, FileMovedEvent):
            self.arrivals.note(self.root, source)
            if target:
                self.arrivals.note(self.root, target, complete=True)  # renamed into place: whole
        else:
            self.arrivals.note(self.root, source, complete=isinstance(event, FileClosedEvent))


def observer() -> BaseObserver:
    """An inotify observer that reports a file renamed in from outside as a move.

    By default watchdog reports such a file as created, which cannot be told
    from a new file still being written, so it would wait the settle time;
    renamed into place, it is whole (rsync, cameras and browsers do this).
    """
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux
        return Observer()
    return InotifyObserver(generate_full_events=True)


class Overflow(logging.Handler):
    """Hears watchdog's warning that the kernel dropped events, so that we rescan.

    watchdog re-creates its watches after an inotify queue overflow and logs
    a warning, but tells its handlers nothing: the events themselves are lost.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.happened = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.happened.set()


@dataclass(frozen=True)
class Watching:
    """How one watched folder is watched: "events" or "poll", and its file system."""

    mode: str
    file_system: str
    poll_interval_s: float


class Watcher:
    """A watchdog watch on each watched folder that exists, by events or polled (`mode`:
    auto, events or poll); `watch` again when one returns."""

    def __init__(self, arrivals: Arrivals, mode: str = "events", poll_interval_s: float = 30.0,
                 file_system: Callable[[Path], mounts.FileSystem] = mounts.file_system) -> None:
        self.arrivals = arrivals
        self.mode, self.poll_interval_s, self.file_system = mode, poll_interval_s, file_system
        self.observers: dict[str, BaseObserver] = {
            "events": observer(), "poll": polling.poller(poll_interval_s)}
        self.watched: dict[str, tuple[str, object, tuple[int, int]]] = {}
        self.watching: dict[str, Watching] = {}  # how each folder is watched (last chosen)
        self.overflow = Overflow()

    def start(self) -> None:
        logging.getLogger("watchdog").addHandler(self.overflow)
        for running in self.observers.values():
            running.start()
        self.watch()

    def events_lost(self) -> bool:
        """Whether the kernel dropped events since the last call."""
        lost = self.overflow.happened.is_set()
        self.overflow.happened.clear()
        return lost

    def choose(self, root: str, folder: Path) -> Watching:
        """Events or polling for `folder`, by `mode`; logged when it is a new choice."""
        kind = self.file_system(folder)
        mode = self.mode if self.mode != "auto" else "poll" if kind.remote else "events"
        chosen = Watching(mode, kind.kind, self.poll_interval_s)
        if self.watching.get(root) != chosen:
            why = f"watch.mode {self.mode}" if self.mode != "auto" else (
                "changes made elsewhere send no events" if kind.remote
                else "its changes send events")
            how = (f"polled every {self.poll_interval_s:g} s" if mode == "poll"
                   else "watched by file events")
            log.info("%s %s is on %s (%s): %s", root, folder, kind.kind, why, how)
        self.watching[root] = chosen
        return chosen

    def watch(self) -> list[str]:
        """Watch each folder that exists and is not watched yet; return the ones now watched."""
        started = []
        for root, folder in self.arrivals.roots.items():
            identity = folder_identity(folder)
            mode, watch, watched_identity = self.watched.get(root, ("", None, None))
            if watch is not None and identity == watched_identity:
                continue
            if watch is not None:  # gone, or a new folder at that path (a disk mounted again)
                with contextlib.suppress(KeyError):  # its emitter may have stopped already
                    self.observers[mode].unschedule(watch)  # type: ignore[arg-type]
                del self.watched[root]
            if identity is not None:
                chosen = self.choose(root, folder)
                try:
                    watch = self.observers[chosen.mode].schedule(
                        Handler(self.arrivals, root), str(folder), recursive=True,
                        event_filter=EVENTS)
                    self.watched[root] = (chosen.mode, watch, identity)
                    started.append(root)
                except OSError as error:  # e.g. the inotify watch limit
                    log.warning("cannot watch %s: %s; relying on periodic rescans", folder, error)
        return started

    def stop(self) -> None:
        logging.getLogger("watchdog").removeHandler(self.overflow)
        for running in self.observers.values():
            running.stop()
        for running in self.observers.values():
            running.join(timeout=5)
