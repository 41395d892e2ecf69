"""Cancellation under fire: the CI stops `ci-runner run` while the job is pending, running, or while the
submit request is still in flight, with SIGINT, SIGTERM, or SIGTERM then SIGKILL 2.5 s later (what
GitHub Actions does on cancel). Afterwards no Slurm job of the run may be left queued or running
(checked in Slurm itself). When the submit was in flight, the CI's cleanup step (`ci-runner cancel`
with the state file, as in `if: cancelled()` / GitLab `after_script`) must finish the job off.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from helpers.reliability_harness import (
    ACTIVE,
    CLI,
    SandboxProcess,
    api_request_times,
    finish,
    run_env,
    scancel_named,
    slurm_jobs_named,
    start_run,
    write_config,
)
from helpers.waiting import wait_until

from ci_runner.budget import max_in_window
from ci_runner.job_spec import job_name

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BUDGET = 30
KILL_AFTER = 2.5  # GitHub Actions: SIGINT/SIGTERM, then SIGKILL when the process is still alive
SIGNALS = {"SIGINT": [signal.SIGINT], "SIGTERM": [signal.SIGTERM], "SIGTERM+SIGKILL": [signal.SIGTERM, signal.SIGKILL],
           "SIGKILL": [signal.SIGKILL]}  # SIGKILL alone: a runner that dies without a word (OOM killer, lost VM)
PHASES = {
    "pending": ("--pending-delay", "300"),   # held PENDING (BeginTime) by the sandbox
    "running": (),
    "submit": ("--latency", "3"),          # every request takes 3 s: the signal lands while the submit is in flight
}


def state_of(path: Path) -> dict[str, object] | None:
    try:
        return dict(json.loads(path.read_text())["entries"]["default"])
    except (OSError, ValueError, KeyError):
        return None


def active_jobs(name: str) -> list[dict[str, str]]:
    return [j for j in slurm_jobs_named(name) if j.get("JobState") in ACTIVE]


CASES = [(s, p) for s in SIGNALS if s != "SIGKILL" for p in PHASES] + [("SIGKILL", "running"), ("SIGKILL", "submit")]


@pytest.mark.parametrize(("signals", "phase"), CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_cancel(signals: str, phase: str, tmp_path: Path, sandbox_factory: Callable[..., SandboxProcess],
                record_scenario: Callable[..., None]) -> None:
    sandbox = sandbox_factory(PHASES[phase])
    repo = tmp_path / "repo"
    write_config(repo, "echo started\nsleep 240\necho never\n")
    run_id = f"cx{abs(hash((signals, phase, time.time()))) % 10**9}"
    name = job_name(f"gh-{run_id}-1")
    state_path = repo / "state.json"
    env = run_env(sandbox, run_id)
    process = start_run(repo, env, ["--requests-per-minute", str(BUDGET), "--state-file", str(state_path)])
    record_scenario(expected=("killed" if signals == "SIGKILL" else "130") + ", no job left", budget=BUDGET)
    cleanup_used = False
    try:
        if phase == "pending":
            wait_until(lambda: [j for j in slurm_jobs_named(name) if j.get("JobState") == "PENDING"], 60, "a pending job",
                       interval=0.1)
            wait_until(lambda: (state_of(state_path) or {}).get("job_id"), 30, "the job id in the state file",
                       interval=0.1)
        elif phase == "running":
            wait_until(lambda: [j for j in slurm_jobs_named(name) if j.get("JobState") == "RUNNING"], 60, "a running job",
                       interval=0.1)
        else:
            wait_until(lambda: (state_of(state_path) or {}).get("state") == "SUBMITTING", 60, "the submit in flight",
                       interval=0.1)
            assert not slurm_jobs_named(name), "the submit should still be in flight (3 s latency)"
        sent = time.monotonic()
        process.send_signal(SIGNALS[signals][0])
        if len(SIGNALS[signals]) > 1:
            try:
                process.wait(max(0.0, sent + KILL_AFTER - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        result = finish(process, 60)
        killed = result.returncode == -signal.SIGKILL
        runner_left = len(active_jobs(name)) if phase == "submit" or killed else 0
        if phase == "submit" or killed:
            # the CI's cleanup step; it must succeed whatever the runner managed to do
            cleanup = subprocess.run([CLI, "cancel", "--state-file", str(state_path)], cwd=repo, env=env,
                                     capture_output=True, text=True, timeout=120, check=False)
            cleanup_used = True
            assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
            assert "Traceback" not in cleanup.stderr
        try:
            wait_until(lambda: not active_jobs(name), 20, "no queued or running job of the run", interval=0.1)
            left = "none"
        except AssertionError:
            left = ", ".join(f"{j['JobId']}:{j['JobState']}" for j in active_jobs(name))
        note = f"left: {left}"
        if cleanup_used:
            note += f" after ci-runner cancel (runner itself left {runner_left})"
        record_scenario(exit=result.returncode, note=note)
        assert left == "none", f"jobs left in Slurm: {left}\n{result.output[-3000:]}"
        assert "Traceback" not in result.output, result.output[-3000:]
        if not killed:
            assert result.returncode == 130, result.output[-3000:]
        if phase in ("pending", "running"):
            assert len(slurm_jobs_named(name)) == 1
            assert any(j["JobState"] == "CANCELLED" for j in slurm_jobs_named(name))
        if phase == "submit":
            assert len(slurm_jobs_named(name)) <= 1, "a second job was submitted"
        busiest = max_in_window(api_request_times(sandbox.requests()))
        record_scenario(**{"max req/60s": busiest})
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        scancel_named(name)
