"""cancel.py against a simulated cluster (tests/helpers/fake_cluster.py) on simulated time: `ci-runner cancel`
by job id and from a state file, and the run's cancel of every unfinished entry. The real thing, with
signals and Slurm, is tests/reliability/test_cancel.py and tests/e2e/test_run_cancel.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.fake_cluster import FakeCluster, FakeJob
from helpers.virtual_time import VirtualTimeLoop, run_simulated

from ci_runner import cancel, statefile
from ci_runner.api import ApiError
from ci_runner.layout import entry_layout
from ci_runner.job_spec import job_name
from ci_runner.statefile import EntryState, RunState, StateFile
from ci_runner.slurm_states import Outcome

WORKDIR, RUN_ID = "/scratch/ci", "run-1"


def simulated() -> tuple[VirtualTimeLoop, FakeCluster]:
    loop = VirtualTimeLoop()
    return loop, FakeCluster(loop.time)


def job(cluster: FakeCluster, job_id: str, entry: str, state: str = "RUNNING") -> FakeJob:
    path = entry_layout(WORKDIR, RUN_ID, entry).output_path(job_id)
    return cluster.add(FakeJob(job_id, path, states=[(0.0, state)]))


def state_file(tmp_path: Path, **entries: EntryState) -> StateFile:
    return StateFile.create(tmp_path / "state.json", RunState(run_id=RUN_ID, system="local", workdir=WORKDIR,
                                                              entries=entries))


def recorded(entry: str, job_id: str | None, state: str) -> EntryState:
    return EntryState(job_name=job_name(RUN_ID), remote_dir=entry_layout(WORKDIR, RUN_ID, entry).root,
                      system="local", job_id=job_id, state=state)


class IgnoresCancels(FakeCluster):
    """Accepts the cancel of job 3 but never ends it (a node that does not answer)."""

    async def cancel(self, job_id: str) -> bool:
        return True if job_id == "3" else await super().cancel(job_id)


def test_cancel_by_id_reports_each_job_and_waits_until_they_are_final() -> None:
    loop = VirtualTimeLoop()
    cluster = IgnoresCancels(loop.time)
    job(cluster, "1", "a")
    job(cluster, "2", "b", state="COMPLETED")
    job(cluster, "3", "c")
    started = loop.time()
    report = run_simulated(cancel.cancel_jobs(cluster, ["1", "2", "3", "4"], wait=30.0, clock=loop.time), loop)
    assert sorted(report.lines) == ["job 1: cancel requested (was RUNNING)", "job 2: already COMPLETED",
                                    "job 3: cancel requested (was RUNNING)",
                                    "job 4: not known to Slurm (finished long ago?)"]
    assert report.still_running == ("3",)
    assert 30.0 <= loop.time() - started <= 32.0  # waited its 30 s for job 3, looking every second


def test_cancel_from_a_state_file_finds_a_job_whose_submit_answer_was_lost(tmp_path: Path) -> None:
    loop, cluster = simulated()
    job(cluster, "7", "a")
    job(cluster, "8", "b")  # submitted, but the runner died before it learnt the id
    handle = state_file(tmp_path, a=recorded("a", "7", "RUNNING"), b=recorded("b", None, statefile.SUBMITTING),
                        c=recorded("c", None, statefile.NOT_SUBMITTED))
    report = run_simulated(cancel.cancel_recorded(cluster, handle, wait=5.0, clock=loop.time), loop)
    assert "c: never submitted" in report.lines and not report.still_running
    entries = StateFile.open(handle.path).state.entries
    assert (entries["a"].state, entries["a"].outcome) == ("CANCELLED", Outcome.CANCELLED.value)
    assert (entries["b"].job_id, entries["b"].state) == ("8", "CANCELLED")
    assert all(entry.finished for entry in entries.values())
    assert all(j.state(loop.time()).startswith("CANCELLED") for j in cluster.jobs.values())


def test_the_runs_cancel_sends_every_cancel_at_once_and_reports_the_ones_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, cluster = simulated()
    for job_id, entry in (("1", "a"), ("2", "b"), ("3", "c")):
        job(cluster, job_id, entry)
    handle = state_file(tmp_path, a=recorded("a", "1", "RUNNING"), b=recorded("b", "2", "RUNNING"),
                        c=recorded("c", "3", "RUNNING"), d=recorded("d", None, statefile.SUBMITTING))
    handle.update("c", finished=True)  # already over: left alone
    urgent: list[int] = []

    def urgent_cluster(run_cluster: FakeCluster, jobs: int, deadline: float) -> FakeCluster:
        urgent.append(jobs)
        return run_cluster

    monkeypatch.setattr(cancel, "urgent_cluster", urgent_cluster)
    original = cluster.cancel

    async def cancel_or_fail(job_id: str) -> bool:
        if job_id == "2":
            raise ApiError("cancelling job 2: HTTP 503", 503)
        return await original(job_id)

    cluster.cancel = cancel_or_fail  # type: ignore[method-assign]
    started = loop.time()
    failures = run_simulated(cancel.cancel_unfinished(cluster, handle, deadline=2.0), loop)
    assert urgent == [3] and list(failures) == ["b"]
    cancels = cluster.requests("cancel")
    assert [r.detail for r in cancels] == ["1"] and cancels[0].sent - started < 0.5
    entries = StateFile.open(handle.path).state.entries
    assert entries["a"].state == "CANCELLED" and entries["d"].state == statefile.NOT_SUBMITTED
    assert not entries["b"].finished and cluster.jobs["3"].state(loop.time()) == "RUNNING"
