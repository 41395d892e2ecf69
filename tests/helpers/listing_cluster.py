"""A cluster of fixed job and file listings for RunObserver's tests: answers after a gate the test
opens, fails once on request, counts the requests; and a clock the test moves by hand."""

from __future__ import annotations

import asyncio
from typing import Any

from ci_runner.api import ApiError, JobStatus

OUT = "/w/run/output"


def status(job_id: str, state: str = "RUNNING") -> JobStatus:
    return JobStatus(job_id, state, None, None, None, None, None, None, name="ci-runner-run")


class ListingCluster:
    """Answers after `gate` (an event the test sets, when given), fails the next request when `fail_next`, counts the requests."""

    def __init__(self) -> None:
        self.jobs: list[JobStatus] = [status("1"), status("2")]
        self.files: dict[str, int] = {"a.1.out": 10, "b.2.out": 0}
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail_next = False

    async def _answer(self, what: str) -> None:
        self.calls.append(what)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ApiError(f"{what}: HTTP 503", 503)

    async def jobs_named(self, name: str) -> list[JobStatus]:
        await self._answer("jobs")
        return list(self.jobs)

    async def list_files(self, path: str, *, recursive: bool = False) -> list[dict[str, Any]]:
        await self._answer("ls")
        assert path == OUT and not recursive
        return [{"name": name, "type": "-", "size": str(size)} for name, size in self.files.items()] + [
            {"name": "subdir", "type": "d", "size": "4096"}]


class Clock:
    """Simulated time that moves only when the test sets `now`."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
