"""Progress on long work: a live line on a terminal, a log line every 10 s in the journal."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lookalike.daemon import logs
from lookalike.daemon.progress import LOG_EVERY_S, Progress, Tally, duration
from tests.helpers import LOOKALIKE, lookalike_env

LIVE = re.compile(r"\r\x1b\[K(ingest|results): ([\d,]+)/([\d,]+) \(([\d,]+)/s, (.+?) left\)")


def test_the_time_left_reads_as_a_person_says_it() -> None:
    assert [duration(s) for s in (0.4, 45, 725, 12_000)] == [
        "0 s", "45 s", "12 min 5 s", "3 h 20 min"]
    assert duration(float("inf")) == "?"


def test_in_the_journal_a_line_every_ten_seconds_with_the_rate_and_the_time_left(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    progress = Progress("ingest", 10_000, clock=lambda: now[0], live=False)
    caplog.set_level(logging.INFO, logger="lookalike.daemon.progress")
    for second in range(1, 36):  # 100 images a second for 35 s
        now[0] += 1
        progress.update(100 * second)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [f"ingest: {n:,}/10,000 (100/s, {left} left)" for n, left in (
        (1_000, "1 min 30 s"), (2_000, "1 min 20 s"), (3_000, "1 min 10 s"))]
    assert LOG_EVERY_S == 10
    progress.update(10_000)  # the end: the summary line says it, not the progress
    assert len(caplog.records) == 3


def test_on_a_terminal_a_live_line_that_log_lines_pass_above(
        capsys: pytest.CaptureFixture[str]) -> None:
    now = [0.0]
    progress = Progress("results", 400, clock=lambda: now[0], live=True)
    handler = logs.Stderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    now[0] = 1.0
    progress.update(100)
    handler.emit(logging.LogRecord("x", logging.WARNING, __file__, 1, "a warning", (), None))
    now[0] = 1.2  # sooner than the redraw interval: nothing drawn
    progress.update(120)
    progress.finish()
    err = capsys.readouterr().err
    live = "\r\x1b[Kresults: 100/400 (100/s, 3 s left)"
    # The line, erased for the warning, drawn again under it, erased at the end.
    assert err == live + "\r\x1b[K" + "WARNING a warning\n" + live + "\r\x1b[K"
    assert logs.LiveLine.text == ""


@pytest.mark.slow
def test_run_once_on_a_terminal_shows_a_live_line_and_ends_with_the_summary(
        tmp_path: Path, make_config: Callable[..., Path],
        inbox_of: Callable[[Path, int], list[str]]) -> None:
    """The real command on a pseudo-terminal: the live line counts up to its total."""
    config = make_config()
    names = inbox_of(tmp_path / "inbox", 1797)  # every digit: a few seconds of work
    main, terminal = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # a terminal's buffer is small: read as the command writes
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the command closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    finished = subprocess.run([str(LOOKALIKE), "run", "--once", "-c", str(config)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
                              env=lookalike_env(), text=True, timeout=300, check=False)
    os.close(terminal)
    reader.join(timeout=10)
    os.close(main)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert finished.returncode == 0, shown
    counts = [(what, int(done.replace(",", "")), int(total.replace(",", "")))
              for what, done, total, _, _ in LIVE.findall(shown)]
    assert counts, shown
    assert all(0 < done < total for _, done, total in counts)
    assert {total for what, _, total in counts if what == "ingest"} <= {len(names)}
    # Never left behind: each drawing is erased before anything else is written.
    assert all(shown.startswith("\r\x1b[K", match.end()) for match in LIVE.finditer(shown)), shown
    assert f"{len(names)} images in the library" in finished.stdout


def test_the_summary_says_how_many_images_a_second_were_read() -> None:
    tally = Tally(added=1_200, updated=40, errors=10, answered=1_250, encoded=1_240,
                  seconds=0.5)
    assert tally.line().endswith("in 0.5 s (2,500 images/s)")
    tally.added = tally.updated = tally.errors = 0  # answers alone: no rate to say
    assert tally.line().endswith("reused (same bytes) in 0.5 s")
