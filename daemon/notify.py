"""systemd's notify protocol: READY, STATUS, WATCHDOG and STOPPING messages.

Outside systemd (no NOTIFY_SOCKET) every call does nothing. The protocol is
one datagram on a Unix socket; libsystemd's Python binding needs headers to
build and the pure-Python package has not been kept up, so these few lines
are ours.
"""
from __future__ import annotations

import logging
import math
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        mine = os.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and mine else None
        self.pinged = -math.inf  # when the watchdog was last pinged

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as error:
            log.warning("cannot notify systemd: %s", error)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog_due(self, now: float) -> bool:
        """Whether systemd's watchdog wants a ping: every quarter of its timeout."""
        return self.watchdog_s is not None and now - self.pinged >= self.watchdog_s / 4

    def ping(self, now: float) -> None:
        self.send("WATCHDOG=1")
        self.pinged = now

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")
