"""Near-duplicate judging in a process of its own (`daemon.judging`): the same marks as a
judge in this process, and judging goes on here when that process dies."""
from __future__ import annotations

import logging
import os

import pytest

from lookalike.core import copies
from lookalike.daemon.judging import JudgingProcess
from tests.core.test_copies import made_copies, picture, thumb_of


def queries() -> list[copies.Query]:
    """Two pictures, each with its copies, the other picture and a missing thumbnail as
    neighbours, at learned distances near and far."""
    asked: list[copies.Query] = []
    for seed in (0, 1):
        original = picture(seed)
        copied = [thumb_of(copy) for copy in made_copies(original).values()]
        other = thumb_of(picture(1 - seed))
        asked.append((thumb_of(original), [(0.5, thumb) for thumb in copied]
                      + [(0.5, other), (1.5, copied[0]), (0.5, None)]))
    asked.append((None, [(0.5, other)]))
    return asked


def test_the_process_judges_as_a_judge_here() -> None:
    asked = queries()
    judging = JudgingProcess()
    try:
        for strictness in ("normal", "strict", "loose", "normal"):
            here = copies.Judge(strictness).marks(asked)
            assert judging.marks(strictness, asked) == here
        assert any(any(marks) for marks in here) and not all(all(marks) for marks in here)
    finally:
        judging.close()


def test_judging_goes_on_here_once_the_process_died(caplog: pytest.LogCaptureFixture) -> None:
    asked = queries()
    judging = JudgingProcess()
    try:
        assert judging.pool is not None
        judging.pool.submit(os._exit, 9)  # as the out-of-memory killer would end it
        with caplog.at_level(logging.WARNING, "lookalike.daemon.judging"):
            assert judging.marks("normal", asked) == copies.Judge("normal").marks(asked)
            assert judging.marks("normal", asked[:1]) == copies.Judge("normal").marks(asked[:1])
        said = [r.getMessage() for r in caplog.records]
        assert said == ["the judging process ended abruptly: judging goes on here"]
    finally:
        judging.close()
