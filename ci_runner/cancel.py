"""Cancelling a run's jobs: `ci-runner cancel` (job ids, or every unfinished entry of a state file)
and the run's own cancel when the CI cancels it (SIGINT/SIGTERM).

The run's cancel sends one DELETE per unfinished job, in parallel, through a second `Cluster` with
its own small budget and short retries (`urgent_cluster`), i.e. bypassing the run's pacing: a CI
gives a cancelled job a few seconds before it kills the runner, so a cancel must not queue behind a
minute of polling budget. One request per job (plus retries), once per run, is a deliberate exception
to the budget: a leaked job on a shared cluster costs more than a brief excess over the quota (a 429
would still be honoured). Entries whose submit was in flight have no recorded job id: their job is
looked up by the run's job name and the entry's output file (`find_lost_job`). Everything cancelled is
recorded in the state file, so a later `ci-runner cancel` does not try again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ci_runner import statefile, slurm_states
from ci_runner.layout import array_of, is_array_output, job_found, output_prefix, split_task_id
from ci_runner.slurm_states import Outcome

if TYPE_CHECKING:
    from ci_runner.cluster import Cluster
    from ci_runner.statefile import EntryState, StateFile


@dataclass(frozen=True)
class CancelReport:
    """What `ci-runner cancel` did: lines for the log, and jobs still not final after the wait."""

    lines: tuple[str, ...]
    still_running: tuple[str, ...]


async def cancel_jobs(cluster: Cluster, job_ids: Sequence[str], wait: float = 30.0, *,
                      arrays: Collection[str] = (),
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> CancelReport:
    """Cancel `job_ids` in parallel, then wait (at most `wait` seconds of `clock`, looking every
    second) until each is final or unknown to Slurm.

    Idempotent: a finished, already cancelled or forgotten job is reported, not an error. The ids in
    `arrays` stand for job arrays: they are cancelled whatever their own record says (on a Slurm
    without accounting it is one of the tasks, perhaps finished while the others run).
    """
    lines: list[str] = []

    async def cancel_one(job_id: str) -> None:
        status = await cluster.job(job_id)
        if job_id not in arrays and (status is None or slurm_states.is_terminal(status.state)):
            lines.append(f"job {job_id}: " + ("not known to Slurm (finished long ago?)" if status is None
                                               else f"already {status.state}"))
            return
        what = f"job array {job_id}" if job_id in arrays else f"job {job_id}"
        if await cluster.cancel(job_id):
            was = f" (was {status.state})" if status is not None and job_id not in arrays else ""  # one task's record
            lines.append(f"{what}: cancel requested{was}")
        else:
            lines.append(f"{what}: had already ended")

    await asyncio.gather(*(cancel_one(job_id) for job_id in job_ids))
    deadline = clock() + wait
    remaining = list(job_ids)
    while remaining:
        statuses = await asyncio.gather(*(cluster.job(job_id) for job_id in remaining))
        remaining = [job_id for job_id, status in zip(remaining, statuses)
                     if status is not None and not slurm_states.is_terminal(status.state)]
        if not remaining or clock() >= deadline:
            break
        await sleep(1.0)
    return CancelReport(tuple(lines), tuple(remaining))


async def cancel_recorded(cluster: Cluster, handle: StateFile, wait: float = 30.0, *,
                          clock: Callable[[], float] = time.monotonic,
                          sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> CancelReport:
    """Cancel every unfinished job of a state file, also those whose id was never recorded (by job name).
    A task of a job array (`A_i`) is cancelled as its array A: every unfinished task of it goes."""
    lines: list[str] = []
    ids: dict[str, str] = {}
    in_arrays: set[str] = set()  # entries that are tasks of a job array
    for name, entry in handle.state.unfinished().items():
        job_id = await recorded_job(cluster, entry)
        if job_id is None:
            lines.append(f"{name}: never submitted")
            handle.update(name, finished=True, state=statefile.NOT_SUBMITTED)
            continue
        ids[name] = job_id
        if split_task_id(job_id) is not None or (entry.output_path and is_array_output(entry.output_path)):
            in_arrays.add(name)
    targets = {name: array_of(job_id) for name, job_id in ids.items()}
    arrays = {targets[name] for name in in_arrays}
    report = await cancel_jobs(cluster, list(dict.fromkeys(targets.values())), wait=wait, arrays=arrays,
                               clock=clock, sleep=sleep)
    for name, job_id in ids.items():
        if targets[name] not in report.still_running:
            handle.update(name, job_id=job_id, finished=True, state="CANCELLED", outcome=Outcome.CANCELLED.value)
    if not ids and not lines:
        lines.append(f"nothing to cancel in {handle.path}")
    return CancelReport(tuple(lines) + report.lines, report.still_running)


async def cancel_unfinished(cluster: Cluster, handle: StateFile, deadline: float,
                            target: Callable[[str], str] = array_of) -> dict[str, BaseException]:
    """The run's cancel: the job of every unfinished entry of the state file, at once and in parallel
    through an urgent client (every request sent within about `deadline` seconds), recorded as
    CANCELLED. `target(job_id)`: the id to cancel (an array task's own id once the run knows it).
    Returns the entries whose cancel failed, with the error."""
    names = [name for name, entry in handle.state.entries.items() if not entry.finished]
    if not names:
        return {}
    # entries sharing a recorded job (the steps of a packed job) cancel it once
    groups: dict[str, list[str]] = {}
    for name in names:
        job_id = handle.state.entries[name].job_id
        groups.setdefault(f"job {job_id}" if job_id is not None else f"entry {name}", []).append(name)
    urgent = urgent_cluster(cluster, len(groups), deadline)
    try:
        done = await asyncio.gather(*(_cancel_entries(urgent, handle, group, target) for group in groups.values()),
                                    return_exceptions=True)
    finally:
        await urgent.close()
    return {name: failure for group, failure in zip(groups.values(), done) if isinstance(failure, BaseException)
            for name in group}


async def _cancel_entries(urgent: Cluster, handle: StateFile, names: list[str], target: Callable[[str], str]) -> None:
    """Cancel the job of `names` (one entry, or the entries of one packed job), recorded as CANCELLED."""
    job_id = await recorded_job(urgent, handle.state.entries[names[0]])
    if job_id is None:
        handle.update_all(names, finished=True, state=statefile.NOT_SUBMITTED, outcome=Outcome.CANCELLED.value)
        return
    await urgent.cancel(target(job_id))
    handle.update_all(names, job_id=job_id, finished=True, state="CANCELLED", outcome=Outcome.CANCELLED.value)


async def recorded_job(cluster: Cluster, entry: EntryState) -> str | None:
    """The job id of a recorded entry: as recorded, or, for a submit that was in flight, looked up
    by name (`find_lost_job`; for a task of a job array, the array's id); None when it was never submitted."""
    if entry.job_id is None and entry.state == statefile.SUBMITTING:
        return await find_lost_job(cluster, entry.job_name, entry.remote_dir, entry.output_path)
    return entry.job_id


def urgent_cluster(cluster: Cluster, jobs: int, deadline: float) -> Cluster:
    """A second client for cancelling `jobs` jobs now: its own budget (not paced behind the run's) and
    retries that end within about `deadline` seconds."""
    from ci_runner.budget import RequestBudget
    from ci_runner.cluster import Cluster as ClusterClass
    from ci_runner.cluster import RetryPolicy

    policy = RetryPolicy(max_attempts=4, max_total=deadline, base_delay=0.1, max_delay=0.5,
                         max_retry_after=deadline, request_timeout=deadline, token_timeout=deadline)
    return ClusterClass(cluster.credentials, cluster.system, budget=RequestBudget(max(10, 4 * jobs)), retry=policy,
                        on_secret=cluster.on_secret)


async def find_lost_job(cluster: Cluster, name: str, entry_root: str, output_pattern: str | None = None) -> str | None:
    """Id of the job of the entry whose directory is `entry_root`, among this run's jobs named `name`
    (a submit whose answer was lost), or None. `output_pattern`: the entry's output file with `%j`
    (recorded at the submit); for a task of a job array (`array+<k>.%j.out`) the id of the array."""
    prefix = output_pattern.split("%j", 1)[0] if output_pattern and "%j" in output_pattern else (
        output_prefix(entry_root))
    return await cluster.find_job(name, prefix, job_of=job_found(prefix))
