"""Polling a folder whose changes send no events: folder mtimes, not every file.

A folder's mtime changes when a name in it is created, removed or renamed.
Each poll stats every folder below the watched one (a few thousand at 10^5
images) and lists again only those whose mtime changed; a name that
appeared, went, or now names another file (inode) becomes a watchdog event,
so the rest of the service cannot tell the poller from inotify. Nothing
stats every file: a file rewritten in place changes no folder, and the full
rescan (`watch.rescan_interval_s`) finds it. (watchdog's own PollingEmitter
stats every file at every poll.)

A name made in the same tick of the file system's clock just after its
folder was listed leaves the mtime as it was: a folder that changed is
listed once more at the next poll.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
)
from watchdog.observers.api import BaseObserver, EventEmitter

from lookalike.core import results

log = logging.getLogger(__name__)

Entry = tuple[int, bool]  # (inode, whether a folder)


@dataclass
class Listing:
    """What one folder held when last listed."""

    mtime_ns: int
    entries: dict[str, Entry] = field(default_factory=dict)
    again: bool = False  # it had changed: list it once more at the next poll


def listed(folder: str) -> Listing:
    """The names in `folder` that can matter: not hidden, not our results files.

    readdir gives each entry's inode and type: no stat per file.
    """
    mtime_ns = os.stat(folder).st_mtime_ns  # before listing: a change meanwhile is seen again
    listing = Listing(mtime_ns)
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(results.SUFFIX):
                continue
            listing.entries[entry.name] = (entry.inode(), entry.is_dir(follow_symlinks=False))
    return listing


class FolderPoller(EventEmitter):
    """A watchdog emitter that polls its folder tree every `timeout` seconds.

    The first listing is made when the watch is scheduled, so that nothing
    that lands after the service's start-up scan goes unseen.
    """

    def __init__(self, event_queue: Any, watch: Any, **options: Any) -> None:
        super().__init__(event_queue, watch, **options)
        self.root = os.fsdecode(watch.path)
        self.identity = identity_of(self.root)
        self.listings: dict[str, Listing] = {}
        self.failing = False
        for _ in self.walk(self.root):  # (what is there now is not new)
            pass

    def walk(self, top: str) -> Iterator[str]:
        """List `top` and every folder below it (kept in `listings`); yield each folder."""
        pending = [top]
        while pending:
            folder = pending.pop()
            try:
                listing = listed(folder)
            except OSError:
                continue  # gone meanwhile, or unreadable: its parent's next listing tells
            self.listings[folder] = listing
            yield folder
            pending += [os.path.join(folder, name) for name, (_, is_folder)
                        in listing.entries.items() if is_folder]

    def queue_events(self, timeout: float) -> None:
        if self.stopped_event.wait(timeout):
            return
        if identity_of(self.root) != self.identity:
            return  # unmounted or replaced: the watcher schedules a new watch
        try:
            self.poll()
        except OSError as error:  # a share briefly unreachable: keep the listings, try again
            if not self.failing:
                log.warning("cannot poll %s: %s; trying again", self.root, error)
            self.failing = True
            return
        if self.failing:
            log.info("polling %s again", self.root)
            self.failing = False

    def poll(self, stat: Callable[[str], os.stat_result] = os.stat) -> None:
        """One poll: stat every folder, list again those that changed, queue what differs."""
        for folder in list(self.listings):
            before = self.listings.get(folder)
            if before is None:
                continue  # went with a folder above it, at this poll
            try:
                mtime_ns = stat(folder).st_mtime_ns
            except FileNotFoundError:
                continue  # the listing of the folder above it tells
            if mtime_ns != before.mtime_ns or before.again:
                self.compare(folder, before, again=mtime_ns != before.mtime_ns)

    def compare(self, folder: str, before: Listing, again: bool) -> None:
        try:
            now = listed(folder)
        except FileNotFoundError:
            return
        now.again = again
        self.listings[folder] = now
        for name, entry in now.entries.items():
            old = before.entries.get(name)
            if old == entry:
                continue
            path = os.path.join(folder, name)
            if old is not None:  # another file (or a folder) under the same name
                self.gone(path, old[1])
            if entry[1]:
                self.arrived_folder(path)
            else:
                self.queue_event(FileCreatedEvent(path))
        for name, (_, is_folder) in before.entries.items():
            if name not in now.entries:
                self.gone(os.path.join(folder, name), is_folder)

    def gone(self, path: str, is_folder: bool) -> None:
        if not is_folder:
            self.queue_event(FileDeletedEvent(path))
            return
        self.queue_event(DirDeletedEvent(path))
        below = path + os.sep
        for folder in [f for f in self.listings if f == path or f.startswith(below)]:
            del self.listings[folder]

    def arrived_folder(self, path: str) -> None:
        """A new folder (made here, or moved in): every file in it, however deep, is new."""
        for folder in self.walk(path):
            self.queue_event(DirCreatedEvent(folder))
            for name, (_, is_folder) in self.listings[folder].entries.items():
                if not is_folder:
                    self.queue_event(FileCreatedEvent(os.path.join(folder, name)))


def identity_of(folder: str) -> tuple[int, int] | None:
    try:
        status = os.stat(folder)
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def poller(interval_s: float) -> BaseObserver:
    """A watchdog observer whose watches are polled every `interval_s` seconds."""
    return BaseObserver(FolderPoller, timeout=interval_s)
