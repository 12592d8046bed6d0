"""The service's index rebuilds, each in a child process at a lower priority.

A build in a thread of the service shared the service's GIL. Its Python
loops (reading the vectors, adding them to Annoy) held it for seconds, and
each system call of the main thread (reading a vector, a step of SQLite) then
waited up to 5 ms to take it back: a drop answered in 15 ms took 0.6-0.8 s
during every build of 10^5 images. A process of its own shares no GIL, and
at a lower priority it takes only the CPU the service leaves.

`build_now` is every build of the daemon: in that child process, in the
service itself when a large arrival cannot wait, and `lookalike rebuild`.

    python -m lookalike.daemon.builder SETTINGS   (JSON: the fields of `BuildSettings`)
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from lookalike.core import index
from lookalike.core.config import Config
from lookalike.core.errors import LookalikeError
from lookalike.core.store import Library
from lookalike.daemon.logs import setup_logging

log = logging.getLogger(__name__)

NICENESS = 10  # the service's own work comes first
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class BuildSettings:
    """What one build needs: the service's settings when it began."""

    state_dir: str
    metric: str
    trees: int
    model_id: str | None
    exact_below: int
    dims: int
    log_level: int
    service_pid: int

    @classmethod
    def of(cls, config: Config, model_id: str | None) -> BuildSettings:
        settings = config.index
        return cls(str(config.state_dir), settings.metric, settings.trees, model_id,
                   settings.exact_below, settings.dims, logging.getLogger().getEffectiveLevel(),
                   os.getpid())


def build_now(library: Library, settings: BuildSettings) -> index.IndexInfo:
    """Build the index of `library` in this process and make it current; then drop the
    library's tombstones that it no longer needs (searches can tell those are gone)."""
    info = index.build(library, Path(settings.state_dir), metric=settings.metric,
                       trees=settings.trees, model_id=settings.model_id,
                       exact_below=settings.exact_below, dims=settings.dims)
    library.forget_deleted(up_to=info.generation)
    return info


class BuildProcess:
    """A build running in a child process; its log lines go where the service's go."""

    def __init__(self, settings: BuildSettings) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lookalike.daemon.builder", json.dumps(asdict(settings))],
            stdout=subprocess.PIPE, text=True)

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self) -> str | None:
        """Wait for the build to end: None, or what stopped it."""
        said, _ = self.process.communicate()
        code = self.process.returncode
        if code == 0:
            return None
        if code < 0:
            return f"the index builder was killed by signal {-code}"
        return said.strip() or f"the index builder exited with status {code}"

    def stop(self) -> None:
        """End the build now: the next one removes what it left."""
        self.process.terminate()
        self.process.communicate()


def die_with(service: int) -> None:
    """End when the service that started this build ends: the next service's own build
    of the same generation would write the same files."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != service:  # it ended before that was set
        sys.exit(1)


def main(settings: BuildSettings) -> int:
    with contextlib.suppress(OSError):  # a sandbox may forbid it: then at the same priority
        os.nice(NICENESS)
    setup_logging(settings.log_level)
    try:
        with Library(Path(settings.state_dir) / "library.sqlite") as library:
            build_now(library, settings)
    except (LookalikeError, OSError) as error:
        log.error("index rebuild failed: %s", error)
        print(error, flush=True)  # for the service's status
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal: the service stops us
    given = BuildSettings(**json.loads(sys.argv[1]))
    die_with(given.service_pid)
    sys.exit(main(given))
