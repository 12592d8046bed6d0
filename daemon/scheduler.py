"""The service's turns: jobs that each say when they are due and do one step.

As in huey's consumer, the loop does one unit of work per turn and the
periodic chores come round on their own clocks. A `Job` is a name, when it
is due, and its step. Each `Scheduler.loop` is one turn: every due job of
`before` steps, then the first due job of `work` (in order of priority:
one unit of work, so that an arrival never waits long), then every due job
of `after`. The service starts, stops and signals; the jobs do the rest.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def never() -> bool:
    return False


def always(now: float) -> bool:
    return True


@dataclass(frozen=True)
class Job:
    name: str
    due: Callable[[float], bool]  # whether it has a step to do at `now`
    step: Callable[[float], None]  # one step, at `now`
    busy: Callable[[], bool] = never  # whether work is left (then no turn waits)


class Scheduler:
    def __init__(self, before: list[Job], work: list[Job], after: list[Job]) -> None:
        self.before = before
        self.work = work
        self.after = after

    def loop(self, now: float) -> bool:
        """One turn at `now`; whether work is left (then the next turn should come at once)."""
        for job in self.before:
            if job.due(now):
                job.step(now)
        for job in self.work:
            if job.due(now):
                job.step(now)
                break
        for job in self.after:
            if job.due(now):
                job.step(now)
        return any(job.busy() for job in self.work)
