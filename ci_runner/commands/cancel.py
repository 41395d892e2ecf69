"""`ci-runner cancel`: cancel the given job ids, or every unfinished job of a state file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Sequence

import click

from ci_runner import statefile
from ci_runner.commands.connect import ONE_SHOT_REQUESTS_PER_MINUTE, open_cluster
from ci_runner.errors import InfraError, UsageError

CANCEL_WAIT = 30.0  # seconds to wait for the jobs to leave the queue


def cancel(job_ids: Sequence[str], state_file: str | None, system: str | None) -> int:
    """`ci-runner cancel`: cancel ids, or every unfinished job of a state file; 0 once none is left running."""
    from ci_runner import cancel as cancel_module
    from ci_runner import ci as ci_module

    environ = dict(os.environ)
    handle = None
    if not job_ids:
        if state_file:
            path = Path(state_file)
        else:
            try:
                run_id = ci_module.detect(environ, Path.cwd()).run_id
            except UsageError:
                run_id = ""
            path = statefile.find(run_id, Path.cwd())
        handle = statefile.StateFile.open(path)
        system = system or handle.state.system
    system = system or environ.get("FIRECREST_SYSTEM")
    if not system:
        raise UsageError("no system: pass --system or set FIRECREST_SYSTEM")

    async def cancel_all() -> cancel_module.CancelReport:
        cluster = open_cluster(environ, system, ONE_SHOT_REQUESTS_PER_MINUTE)
        try:
            if handle is not None:
                return await cancel_module.cancel_recorded(cluster, handle, wait=CANCEL_WAIT)
            return await cancel_module.cancel_jobs(cluster, list(job_ids), wait=CANCEL_WAIT)
        finally:
            await cluster.close()

    report = asyncio.run(cancel_all())
    for line in report.lines:
        click.echo(f"ci-runner: {line}")
    if report.still_running:
        raise InfraError(f"still not finished after {CANCEL_WAIT:.0f} s: job(s) {', '.join(report.still_running)}")
    return 0
