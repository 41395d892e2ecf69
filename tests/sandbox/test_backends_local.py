"""What only the local backend does: slots, KillWait, forgetting old jobs, closing; and its #SBATCH parsing."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.waiting import wait_until

from ci_runner.sandbox.backends import BackendError, pick_backend
from ci_runner.sandbox.backends.local import LocalBackend
from ci_runner.sandbox.backends.sbatch_options import expand_pattern, parse_options, parse_time_limit


def script(*lines: str) -> str:
    return "\n".join(["#!/bin/bash", *lines]) + "\n"


def status_of(backend: LocalBackend, job_id: str) -> dict[str, Any]:
    return backend.jobs([job_id])[0]["status"]


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[Callable[..., LocalBackend]]:
    created: list[LocalBackend] = []

    def make(**options: Any) -> LocalBackend:
        backend = LocalBackend(tmp_path / "spool", **options)
        created.append(backend)
        return backend

    yield make
    for backend in created:
        backend.close()


def test_jobs_queue_for_free_slots_with_reason_resources(make_backend: Callable[..., LocalBackend], tmp_path: Path) -> None:
    backend = make_backend(slots=1)
    gate = script("while [ ! -e go ]; do sleep 0.05; done")
    first = backend.submit(gate, str(tmp_path), {})
    second = backend.submit(gate, str(tmp_path), {})

    wait_until(lambda: status_of(backend, first)["state"] == "RUNNING", 30, "the first job to run")
    wait_until(lambda: status_of(backend, second)["stateReason"] == "Resources", 30, "the second job to wait for Resources")
    assert status_of(backend, second)["state"] == "PENDING"

    (tmp_path / "go").touch()
    wait_until(lambda: status_of(backend, second)["state"] == "COMPLETED", 30, "the second job to complete")
    assert status_of(backend, first)["state"] == "COMPLETED"


def test_timeout_kills_a_job_ignoring_sigterm_after_kill_wait(make_backend: Callable[..., LocalBackend], tmp_path: Path) -> None:
    backend = make_backend(time_scale=0.01, kill_wait=0.3)
    job_id = backend.submit(
        script("#SBATCH -t 1", "trap 'echo ignored TERM' TERM", "while :; do sleep 0.05; done"), str(tmp_path), {}
    )

    wait_until(lambda: status_of(backend, job_id)["state"] == "TIMEOUT", 30, "the job to time out")
    wait_until(lambda: "ignored TERM" in (tmp_path / f"slurm-{job_id}.out").read_text(), 30, "the job to ignore TERM")
    wait_until(lambda: not backend._jobs[job_id].live, 30, "the job's slot to be free")  # the slot is free once SIGKILL took it

    assert status_of(backend, job_id)["exitCode"] == 0 and status_of(backend, job_id)["interruptSignal"] == 15


def test_finished_jobs_are_forgotten_after_min_job_age(make_backend: Callable[..., LocalBackend], tmp_path: Path) -> None:
    backend = make_backend(min_job_age=0.5)
    job_id = backend.submit(script("true"), str(tmp_path), {})

    wait_until(lambda: backend.jobs([job_id]) == [], 30, "the job to leave the list")

    assert backend.metadata(job_id) is None
    with pytest.raises(BackendError, match="Invalid job id specified"):
        backend.cancel(job_id, 1)


def test_cancelling_a_finished_job_fails_like_scancel_and_keeps_its_state(
        make_backend: Callable[..., LocalBackend], tmp_path: Path) -> None:
    backend = make_backend()
    job_id = backend.submit(script("true"), str(tmp_path), {})
    wait_until(lambda: status_of(backend, job_id)["state"] == "COMPLETED", 30, "the job to complete")

    with pytest.raises(BackendError, match="Job/step already completing or completed"):
        backend.cancel(job_id, 5)
    assert status_of(backend, job_id)["state"] == "COMPLETED"


def test_job_killed_by_a_signal_fails_with_that_signal(make_backend: Callable[..., LocalBackend], tmp_path: Path) -> None:
    backend = make_backend()
    job_id = backend.submit(script("kill -9 $$"), str(tmp_path), {})

    wait_until(lambda: status_of(backend, job_id)["state"] == "FAILED", 30, "the job to fail")

    assert status_of(backend, job_id)["exitCode"] == 0 and status_of(backend, job_id)["interruptSignal"] == 9


def test_missing_working_dir_runs_in_tmp_like_slurmstepd(make_backend: Callable[..., LocalBackend], tmp_path: Path) -> None:
    backend = make_backend()
    out = tmp_path / "nd.out"
    job_id = backend.submit(script(f"#SBATCH -o {out}", "pwd"), str(tmp_path / "missing"), {})

    wait_until(lambda: status_of(backend, job_id)["state"] == "COMPLETED", 30, "the job to complete")

    assert out.read_text().splitlines() == [
        f"slurmstepd: error: couldn't chdir to `{tmp_path / 'missing'}': No such file or directory: going to /tmp instead",
        "/tmp",
    ]


def test_close_kills_running_jobs(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "spool")
    job_id = backend.submit(script("sleep 300 & echo $! > child.pid; wait"), str(tmp_path), {})
    wait_until(lambda: (tmp_path / "child.pid").exists() and (tmp_path / "child.pid").read_text().strip() != "", 30,
               "the child's pid file")
    child = int((tmp_path / "child.pid").read_text())
    leader = backend._jobs[job_id].proc
    assert leader is not None

    backend.close()

    assert leader.returncode is not None
    wait_until(lambda: not os.path.exists(f"/proc/{child}") or "Z" in Path(f"/proc/{child}/stat").read_text().split(")")[1][:3],
               30, "the child to end")


def test_time_limit_is_reported_unscaled(make_backend: Callable[..., LocalBackend], tmp_path: Path) -> None:
    backend = make_backend(time_scale=0.001)
    job_id = backend.submit(script("#SBATCH --time=2-00:00:00", "true"), str(tmp_path), {})

    assert backend.jobs([job_id])[0]["time"]["limit"] == 2 * 86400


def test_pick_backend_by_name(tmp_path: Path) -> None:
    local = pick_backend("local", tmp_path)
    try:
        assert local.name == "local"
    finally:
        local.close()
    auto = pick_backend("auto", tmp_path)
    try:
        assert auto.name in ("slurm", "local")
    finally:
        auto.close()
    with pytest.raises(ValueError, match="unknown backend"):
        pick_backend("pbs", tmp_path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1", 60), ("90", 5400), ("1:30", 120), ("0:30", 60), ("01:00:00", 3600), ("2-0", 172800),
        ("1-2:3", 93780), ("1-02:03:04", 93840), ("0", None), ("UNLIMITED", None), ("infinite", None),
    ],
)  # fmt: skip
def test_time_limits_in_every_slurm_format(text: str, seconds: int | None) -> None:
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "-5", "1-"])
def test_invalid_time_is_an_sbatch_error(text: str) -> None:
    with pytest.raises(BackendError, match="Invalid --time specification"):
        parse_time_limit(text)


def test_header_options_in_every_spelling_until_the_first_command() -> None:
    options = parse_options(
        script(
            "",
            "# a comment",
            "#SBATCH --output=o.txt --error e.txt",
            "#SBATCH -J 'my job' -t1:00:00",
            "#SBATCH -i in.txt # trailing comment",
            "#SBATCHX --time=9",
            "echo first command",
            "#SBATCH --time=5",
        )
    )

    assert (options.output, options.error, options.job_name, options.input) == ("o.txt", "e.txt", "my job", "in.txt")
    assert options.time_limit == 3600


def test_later_header_lines_override_earlier_ones() -> None:
    assert parse_options(script("#SBATCH -o a", "#SBATCH --output=b")).output == "b"


def test_missing_option_argument_is_an_sbatch_error() -> None:
    with pytest.raises(BackendError, match="requires an argument"):
        parse_options(script("#SBATCH --output"))


def test_filename_patterns() -> None:
    assert expand_pattern("r-%j-%x-%u-%5j-%%-%N.out", "42", "build", "me") == "r-42-build-me-00042-%-%N.out"
