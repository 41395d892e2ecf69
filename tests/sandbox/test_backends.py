"""Behaviour of both sandbox job backends (real Slurm and local processes), driven through the same tests.

Every test waits on a condition with a deadline (Slurm jobs may queue behind other test runs on this
2-CPU machine) and the fixture cancels every job still active, even when a test fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.firecrest_clients import cancel_active, cancel_refused

from ci_runner.sandbox.backends import Backend, BackendError, pick_backend

QUEUE_SLACK = 120.0  # seconds a Slurm job may wait behind other developers' jobs
TERMINAL_PREFIXES = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY")

# "job_info completed" from /work/shared/firecrest-v2-examples.json (a real FirecREST v2 server on Slurm).
REAL_JOB = {
    "jobId": "12",
    "name": "sbatch",
    "status": {"state": "COMPLETED", "stateReason": "None", "exitCode": 0, "interruptSignal": 0},
    "tasks": [],
    "time": {"elapsed": 3, "start": 1795562134, "end": 1795562137, "suspended": 0, "limit": None},
    "account": "",
    "allocationNodes": 1,
    "cluster": "local",
    "group": "fireuser",
    "nodes": "vm",
    "partition": "debug",
    "killRequestUser": None,
    "user": "fireuser",
    "workingDirectory": "/home/fireuser/examples",
    "priority": 4294901748,
}


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend of each kind; the local one scales `--time` minutes to 3 s so TIMEOUT is quick."""
    chosen = pick_backend(request.param, tmp_path / "spool", slots=2, time_scale=0.05, kill_wait=0.5)
    try:
        yield chosen
    finally:
        try:
            cancel_active(chosen, tmp_path)
        finally:
            chosen.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work dir"  # a space, as users' paths have
    path.mkdir()
    return path


def job(backend: Backend, job_id: str) -> dict[str, Any]:
    found = backend.jobs([job_id])
    assert len(found) == 1, f"job {job_id} not found: {found}"
    return found[0]


def wait_for(
    backend: Backend, job_id: str, condition: Callable[[dict[str, Any]], bool], timeout: float = QUEUE_SLACK
) -> tuple[dict[str, Any], list[str]]:
    """Poll the job until `condition` holds; return it and every state seen on the way."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        current = job(backend, job_id)
        state = current["status"]["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if condition(current):
            return current, seen
        assert time.monotonic() < deadline, f"job {job_id} never reached the condition; states {seen}: {current}"
        time.sleep(0.2)


def is_terminal(current: dict[str, Any]) -> bool:
    return current["status"]["state"].startswith(TERMINAL_PREFIXES)


def is_running(current: dict[str, Any]) -> bool:
    return current["status"]["state"] == "RUNNING"


def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    return path.read_text()


def script(*lines: str) -> str:
    return "\n".join(["#!/bin/bash", *lines]) + "\n"


def shape(value: Any) -> Any:
    """Keys (recursively) of a job dict, to compare with the real server's."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    return None


def test_completed_job_goes_through_running_and_writes_its_output(backend: Backend, workdir: Path) -> None:
    job_id = backend.submit(
        script(
            "#SBATCH --output=out-%j.txt",
            "#SBATCH --time=5",
            "while [ ! -e go ]; do sleep 0.1; done",  # the test decides when the job may end
            "echo hello",
        ),
        str(workdir),
        {},
    )
    running, seen = wait_for(backend, job_id, is_running)
    assert seen[0] in ("PENDING", "RUNNING")
    assert running["status"]["exitCode"] == 0 and running["time"]["end"] is None
    assert running["time"]["start"] is not None
    (workdir / "go").touch()

    done, seen = wait_for(backend, job_id, is_terminal)

    assert seen[-1] == "COMPLETED" and "RUNNING" in seen
    assert done["status"] == {"state": "COMPLETED", "stateReason": "None", "exitCode": 0, "interruptSignal": 0}
    assert done["time"]["end"] >= done["time"]["start"]
    assert done["time"]["limit"] == 300
    assert done["workingDirectory"] == str(workdir)
    assert wait_for_file(workdir / f"out-{job_id}.txt") == "hello\n"


def test_nonzero_exit_is_failed_with_that_code(backend: Backend, workdir: Path) -> None:
    job_id = backend.submit(script("#SBATCH --time=5", "#SBATCH -o fail.out", "exit 3"), str(workdir), {})

    done, _ = wait_for(backend, job_id, is_terminal)

    assert done["status"] == {"state": "FAILED", "stateReason": "NonZeroExitCode", "exitCode": 3, "interruptSignal": 0}


def test_cancel_running_job_kills_its_process_tree(backend: Backend, workdir: Path) -> None:
    job_id = backend.submit(
        script("#SBATCH --time=5", "#SBATCH -o can.out", "sleep 300 &", "echo $! > child.pid", "wait"),
        str(workdir),
        {},
    )
    wait_for(backend, job_id, is_running)
    child = int(wait_for_file(workdir / "child.pid"))

    backend.cancel(job_id, 4321)
    done, _ = wait_for(backend, job_id, is_terminal)

    assert done["status"]["state"] == "CANCELLED by 4321"
    assert done["status"]["exitCode"] == 0
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{child}") and _state_of(child) not in ("Z", None):
        assert time.monotonic() < deadline, "the job's child process survived the cancel"
        time.sleep(0.1)


def _state_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def test_pending_delay_keeps_job_pending_with_begintime_then_cancel(backend: Backend, workdir: Path) -> None:
    """As measured on the real server: a job waiting for its begin time shows Slurm's estimate (start =
    begin time, end = begin + limit); cancelled, start = end = the cancel time and the limit stays."""
    submitted = int(time.time())
    job_id = backend.submit(script("#SBATCH --time=1", "#SBATCH -o never.out", "echo ran"), str(workdir), {}, 300)

    pending, _ = wait_for(backend, job_id, lambda j: j["status"]["stateReason"] == "BeginTime", timeout=30)
    assert pending["status"]["state"] == "PENDING"
    assert pending["status"]["exitCode"] is None
    times = pending["time"]
    assert submitted + 299 <= times["start"] <= int(time.time()) + 301
    assert (times["end"], times["elapsed"], times["suspended"], times["limit"]) == (times["start"] + 60, 0, None, 60)

    backend.cancel(job_id, 77)
    done, _ = wait_for(backend, job_id, is_terminal, timeout=30)

    assert done["status"]["state"] == "CANCELLED by 77"
    assert (done["status"]["exitCode"], done["status"]["interruptSignal"]) == (0, 0)
    assert done["time"]["start"] == done["time"]["end"] <= int(time.time())
    assert (done["time"]["elapsed"], done["time"]["suspended"], done["time"]["limit"]) == (0, 0, 60)
    assert not (workdir / "never.out").exists()
    with pytest.raises(BackendError) as again:
        backend.cancel(job_id, 77)
    assert again.value.message == cancel_refused(job_id, "Job/step already completing or completed")


@pytest.mark.slow  # waits out a time limit (2-4 s)
def test_time_limit_ends_job_as_timeout_with_signal_15(tmp_path: Path, workdir: Path) -> None:
    """The local backend's emulation of Slurm's TIMEOUT. Real Slurm's TIMEOUT (a one-minute minimum
    limit, ~65 s) is checked once through the API, in test_sandbox_jobs.test_time_limit_gives_timeout."""
    backend = pick_backend("local", tmp_path / "spool", slots=2, time_scale=0.05, kill_wait=0.5)
    try:
        _assert_time_limit_gives_timeout(backend, workdir)
    finally:
        backend.close()


def _assert_time_limit_gives_timeout(backend: Backend, workdir: Path) -> None:
    job_id = backend.submit(script("#SBATCH --time=1", "#SBATCH -o to.out", "sleep 300"), str(workdir), {})

    done, _ = wait_for(backend, job_id, is_terminal, timeout=QUEUE_SLACK + 120)

    assert done["status"] == {"state": "TIMEOUT", "stateReason": "TimeLimit", "exitCode": 0, "interruptSignal": 15}
    assert done["time"]["limit"] == 60


def test_job_dict_has_exactly_the_real_servers_shape(backend: Backend, workdir: Path) -> None:
    job_id = backend.submit(script("#SBATCH --time=5", "#SBATCH -o shape.out", "true"), str(workdir), {})
    pending = job(backend, job_id)
    done, _ = wait_for(backend, job_id, is_terminal)

    for current in (pending, done):
        assert shape(current) == shape(REAL_JOB)
        assert list(current) == list(REAL_JOB)
    assert done["jobId"] == job_id and done["name"] == "sbatch"
    assert isinstance(done["priority"], int) and isinstance(done["allocationNodes"], int)
    assert all(isinstance(done["time"][k], int) for k in ("elapsed", "start", "end", "suspended"))
    assert isinstance(done["user"], str) and done["user"] and done["partition"]


def test_metadata_expands_output_patterns_relative_to_working_dir(backend: Backend, workdir: Path) -> None:
    text = script("#SBATCH --job-name=meta", "#SBATCH --output=o-%x-%j.txt", "#SBATCH -e e-%j.txt", "#SBATCH -t 5",
                  "echo out; echo err >&2")
    job_id = backend.submit(text, str(workdir), {})

    meta = backend.metadata(job_id)

    assert meta == {
        "jobId": job_id,
        "script": text,
        "standardInput": "/dev/null",
        "standardOutput": str(workdir / f"o-meta-{job_id}.txt"),
        "standardError": str(workdir / f"e-{job_id}.txt"),
    }
    done, _ = wait_for(backend, job_id, is_terminal)
    assert done["name"] == "meta"
    assert wait_for_file(workdir / f"o-meta-{job_id}.txt") == "out\n"
    assert wait_for_file(workdir / f"e-{job_id}.txt") == "err\n"


def test_default_output_is_slurm_jobid_out_with_stderr_merged(backend: Backend, workdir: Path) -> None:
    job_id = backend.submit(script("#SBATCH -t 5", "echo out; echo err >&2"), str(workdir), {})

    meta = backend.metadata(job_id)
    wait_for(backend, job_id, is_terminal)

    assert meta is not None
    assert meta["standardOutput"] == meta["standardError"] == str(workdir / f"slurm-{job_id}.out")
    assert sorted(wait_for_file(workdir / f"slurm-{job_id}.out").splitlines()) == ["err", "out"]


def test_env_is_inherited_plus_given(backend: Backend, workdir: Path) -> None:
    job_id = backend.submit(
        script("#SBATCH -t 5", "#SBATCH -o env.out", 'echo "$GREETING|${PATH:+path}|$SLURM_JOB_ID"'),
        str(workdir),
        {"GREETING": "hi there"},
    )
    wait_for(backend, job_id, is_terminal)

    assert wait_for_file(workdir / "env.out") == f"hi there|path|{job_id}\n"


def test_env_value_with_comma_is_refused(backend: Backend, workdir: Path) -> None:
    with pytest.raises(BackendError) as caught:
        backend.submit(script("true"), str(workdir), {"LIST": "a,b"})
    assert caught.value.status == 400 and "LIST" in caught.value.message


def test_script_without_shebang_is_rejected_like_sbatch(backend: Backend, workdir: Path) -> None:
    with pytest.raises(BackendError) as caught:
        backend.submit("echo no interpreter\n", str(workdir), {})
    assert caught.value.status == 500
    assert caught.value.message.startswith("Unexpected Slurm command response.")
    assert "does not look like a batch script" in caught.value.message


def test_unknown_job_is_omitted_and_cannot_be_cancelled(backend: Backend) -> None:
    assert backend.jobs(["999999999"]) == []
    assert backend.metadata("999999999") is None
    with pytest.raises(BackendError) as unknown:
        backend.cancel("999999999", 1)
    assert (unknown.value.status, unknown.value.message) == (500, cancel_refused("999999999", "Invalid job id specified"))
    with pytest.raises(BackendError) as malformed:
        backend.cancel("abc", 1)
    assert (malformed.value.status, malformed.value.message) == (
        500, "Unexpected Slurm command response. exit_status:1 std_err:scancel: error: Invalid job id abc\n")


def test_listing_without_ids_shows_the_jobs_submitted_here(backend: Backend, workdir: Path) -> None:
    first = backend.submit(script("#SBATCH -t 5", "#SBATCH -o l1.out", "true"), str(workdir), {})
    second = backend.submit(script("#SBATCH -t 5", "#SBATCH -o l2.out", "true"), str(workdir), {})

    listed = [j["jobId"] for j in backend.jobs()]
    both = backend.jobs([second, "999999999", first])

    assert [job_id for job_id in listed if job_id in (first, second)] == [first, second]  # among the user's others
    assert [j["jobId"] for j in both] == [second, first]
    assert int(second) > int(first)
    for job_id in (first, second):
        wait_for(backend, job_id, is_terminal)
