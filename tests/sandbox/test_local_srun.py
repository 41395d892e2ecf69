"""Job steps (`srun` inside a batch job) on the local backend's srun shim, and the same scripts on real
Slurm 22.05 to show the shim prints what srun prints: the output, the waiting for CPUs, the refusals,
the exit statuses and the time limit and cancel messages.

Every wait has a deadline; the fixture cancels every job still active, even when a test fails.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.firecrest_clients import QUEUE_SLACK, cancel_active
from helpers.waiting import wait_until

from ci_runner.sandbox.backends import Backend, pick_backend
from ci_runner.sandbox.backends.sbatch_options import parse_time_limit
from ci_runner.sandbox.backends.srun import SrunError, parse_time

TERMINAL = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY")
STEP = "srun --quiet --exact --nodes=1 --ntasks=1"  # how pack mode starts a step


@pytest.fixture
def backend(backend_name: str, tmp_path: Path) -> Iterator[Backend]:
    """The local backend with `--time` minutes scaled to 3 s, or real Slurm."""
    chosen = pick_backend(backend_name, tmp_path / "spool", slots=2, time_scale=0.05, kill_wait=0.5)
    try:
        yield chosen
    finally:
        try:
            cancel_active(chosen, tmp_path)
        finally:
            chosen.close()


def script(*lines: str) -> str:
    return "\n".join(["#!/bin/bash", "#SBATCH --output=out-%j.txt", "#SBATCH --time=5", *lines]) + "\n"


def state(backend: Backend, job_id: str) -> str:
    return str(backend.jobs([job_id])[0]["status"]["state"])


def run_job(backend: Backend, workdir: Path, text: str) -> tuple[str, list[str]]:
    """Submit `text`, wait for its end; its id and the lines of its output file."""
    job_id = backend.submit(text, str(workdir), {})
    wait_until(lambda: state(backend, job_id).startswith(TERMINAL), QUEUE_SLACK, f"the end of job {job_id}", 0.1)
    return job_id, (workdir / f"out-{job_id}.txt").read_text().splitlines()


def test_steps_run_in_order_with_their_ids_and_their_output_reaches_the_job_output(
        backend: Backend, tmp_path: Path) -> None:
    job_id, lines = run_job(backend, tmp_path, script(
        f"{STEP} /bin/bash -c 'echo first $SLURM_STEP_ID $SLURM_NTASKS; echo to-stderr >&2'",
        f"{STEP} --cpus-per-task=1 --mem=10M /bin/bash -c 'echo outer $SLURM_STEP_ID; "
        "SLURM_OVERLAP=1 srun --quiet /bin/bash -c \"echo inner \\$SLURM_STEP_ID\"'",
        "echo status=$?",
    ))
    assert state(backend, job_id) == "COMPLETED"
    assert "to-stderr" in lines  # srun relays stderr apart from stdout: its place among them may vary
    assert [line for line in lines if line != "to-stderr"] == ["first 0 1", "outer 1", "inner 2", "status=0"]


@pytest.mark.slow  # steps that run for seconds (2-4 s)
def test_a_two_cpu_job_runs_at_most_two_one_cpu_steps_at_once(backend: Backend, tmp_path: Path) -> None:
    job_id, lines = run_job(backend, tmp_path, script(
        "#SBATCH --ntasks=2",
        "for i in 1 2 3; do",
        "  srun --exact --nodes=1 --ntasks=1 --cpus-per-task=1 /bin/bash -c "
        "'echo span $(date +%s.%N) $(sleep 2; date +%s.%N)' &",
        "done",
        "wait",
    ))
    spans = [(float(start), float(end)) for _, start, end in (line.split() for line in lines if line.startswith("span"))]
    assert len(spans) == 3, lines
    most = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert most == 2, spans
    assert f"srun: Job {job_id} step creation temporarily disabled, retrying (Requested nodes are busy)" in lines
    assert f"srun: Step created for job {job_id}" in lines


def test_a_step_over_the_allocation_fails_at_once(backend: Backend, tmp_path: Path) -> None:
    job_id, lines = run_job(backend, tmp_path, script(
        "#SBATCH --ntasks=2",
        "start=$SECONDS",
        f"{STEP} --cpus-per-task=3 /bin/true",
        "echo status=$? seconds=$((SECONDS - start))",
        "srun --quiet --bogus /bin/true",
        "echo status=$?",
    ))
    refusal = f"srun: error: Unable to create step for job {job_id}: More processors requested than permitted"
    assert lines[0] == refusal
    assert re.fullmatch(r"status=1 seconds=[0-2]", lines[1]), lines
    assert lines[2:] == ["srun: unrecognized option '--bogus'", 'Try "srun --help" for more information', "status=255"]


def test_exit_codes_and_signals_give_sruns_status_and_messages(backend: Backend, tmp_path: Path) -> None:
    _, lines = run_job(backend, tmp_path, script(
        f"{STEP} /bin/bash -c 'exit 3'; echo status=$?",
        f"{STEP} /bin/bash -c 'kill -TERM $$'; echo status=$?",
        f"{STEP} /bin/bash -c 'kill -KILL $$'; echo status=$?",
        f"{STEP} /bin/bash -c 'kill -SEGV $$'; echo status=$?",
    ))
    node = r"\S+"
    patterns = ["Exited with exit code 3", "status=3", "Terminated", "status=143", "Killed", "status=137",
                "Segmentation fault", "status=139"]
    assert len(lines) == len(patterns), lines
    for line, expected in zip(lines, patterns):
        pattern = re.escape(expected) if expected.startswith("status") else f"srun: error: {node}: task 0: {expected}"
        assert re.fullmatch(pattern, line), (line, lines)


@pytest.mark.slow  # waits out a time limit (2-4 s)
def test_a_step_past_its_time_limit_is_ended_with_the_time_limit_messages(backend: Backend, tmp_path: Path) -> None:
    """A one-minute step (3 s with time_scale 0.05): slurmstepd's TIME LIMIT line, SIGTERM, srun's lines."""
    job_id, lines = run_job(backend, tmp_path, script(
        "srun --exact --nodes=1 --ntasks=1 --time=1 sleep 300",
        "echo status=$?",
    ))
    assert state(backend, job_id) == "COMPLETED"
    assert re.fullmatch(rf"slurmstepd-\S+: error: \*\*\* STEP {job_id}\.0 ON \S+ CANCELLED AT "
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d DUE TO TIME LIMIT \*\*\*", lines[0]), lines
    assert re.fullmatch(r"srun: error: \S+: task 0: Terminated", lines[1]), lines
    assert lines[2:] == [f"srun: Force Terminated StepId={job_id}.0", "status=143"]


def test_cancelling_the_job_ends_its_steps(backend: Backend, tmp_path: Path) -> None:
    job_id = backend.submit(script(f"{STEP} /bin/bash -c 'echo $$ > step.pid; exec sleep 300'", "echo after"),
                            str(tmp_path), {})
    pid_file = tmp_path / "step.pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(), QUEUE_SLACK, "the step's start",
               0.1)
    pid = int(pid_file.read_text())
    backend.cancel(job_id, os.getuid())
    wait_until(lambda: not _alive(pid), 30, f"the end of the step's process {pid}", 0.1)
    output = tmp_path / f"out-{job_id}.txt"
    wait_until(lambda: "task 0: Terminated" in output.read_text(), 30, f"srun's last line in {output}", 0.1)
    lines = output.read_text().splitlines()
    # the shim names the step; real Slurm the step, or the job when its stepd sees the job's cancel first
    cancelled = rf"STEP {job_id}\.0" if backend.name == "local" else rf"(STEP {job_id}\.0|JOB {job_id})"
    assert any(re.fullmatch(rf"slurmstepd-\S+: error: \*\*\* {cancelled} ON \S+ CANCELLED AT \S+ \*\*\*", line)
               for line in lines), lines
    assert "after" not in lines


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (where /proc tells)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" if Path("/proc").is_dir() else True
    except OSError:
        return False


@pytest.mark.parametrize("text", ["0", "1", "61", "1:30", "0:59", "1:00:01", "2-3", "1-0:5", "1-2:3:4", "UNLIMITED"])
def test_the_shims_time_parser_agrees_with_sbatch(text: str) -> None:
    assert parse_time(text) == parse_time_limit(text)


def test_the_shim_refuses_a_bad_time_like_srun() -> None:
    with pytest.raises(SrunError) as refused:
        parse_time("soon")
    assert (refused.value.message, refused.value.status) == ("srun: error: Invalid --time specification\n", 255)
