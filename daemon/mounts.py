"""Which file system holds a folder, and whether the kernel tells of its changes.

inotify hears what this kernel does to a file system. On a network share
(NFS, SMB/CIFS, 9p) or a FUSE file system (sshfs, rclone, bindfs, ...) the
files also change elsewhere: on the server, another machine, the FUSE
daemon's own source. Those changes send no event, so such folders are
polled (`watch.mode: auto`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
# File systems whose files change where this kernel does not see it. FUSE ones are
# "fuse.NAME" (fuse.sshfs, fuse.rclone, fuse.bindfs...); "fuseblk" is a local disk
# (NTFS through ntfs-3g), whose changes all pass through this kernel.
NETWORK = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smb2", "smbfs", "9p", "afs", "ceph", "glusterfs",
    "lustre", "gpfs", "beegfs", "orangefs", "ocfs2", "gfs2", "coda", "ncpfs", "davfs",
    "virtiofs", "vboxsf", "prl_fs", "fuse",
})
OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space in a path as \040


@dataclass(frozen=True)
class FileSystem:
    """The file system a folder is on: its type as the kernel names it ("ext4",
    "nfs4", "fuse.sshfs"; "unknown" when it cannot be read) and its mount point."""

    kind: str
    mount_point: str

    @property
    def remote(self) -> bool:
        """Whether its files may change without this kernel sending an event."""
        return self.kind in NETWORK or self.kind.startswith("fuse.")


def file_system(folder: Path, mountinfo: Path = MOUNTINFO) -> FileSystem:
    """The file system holding `folder` (through links): the last mount at the
    longest mount point above it."""
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return FileSystem("unknown", "")
    return mounted_at(os.path.realpath(folder), text)


def mounted_at(path: str, mountinfo: str) -> FileSystem:
    """The file system holding the absolute, resolved `path`, given the text of
    /proc/self/mountinfo (see proc(5))."""
    found = FileSystem("unknown", "")
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if " - " not in line or len(fields) < 5:
            continue
        point = OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        kind = line.split(" - ", 1)[1].split(" ")[0]
        below = path == point or path.startswith(point.rstrip("/") + "/")
        if below and len(point) >= len(found.mount_point):  # (a later mount hides an earlier)
            found = FileSystem(kind, point)
    return found
