"""Cancellation and restarts of `ci-runner run`: SIGTERM, `ci-runner cancel` from the state file,
`--attach` after SIGKILL. Real HTTP against the sandbox, ci-runner as a subprocess."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from helpers.run_process import (
    CI_RUNNER,
    cancel_jobs,
    ci_runner,
    git_repo,
    job_state,
    recorded_jobs,
    runner_env,
)
from helpers.waiting import wait_until


SLEEPER = """\
version: 1
system: local
checkout: none
script: |
  echo started
  sleep 300
"""

GATED = """\
version: 1
system: local
checkout: none
env:
  GATE: {gate}
script: |
  for i in $(seq 1 20); do echo "line $i"; done
  for i in $(seq 1 900); do [ -e "$GATE" ] && break; sleep 0.1; done
  for i in $(seq 21 40); do echo "line $i"; done
"""



def _setup(sandbox: Any, tmp_path: Path, config_text: str) -> tuple[Path, Path, list[str]]:
    repo = git_repo(tmp_path / "repo")
    config = repo / "ci.yml"
    config.write_text(config_text)
    state_file = tmp_path / "state.json"
    args = ["--config", str(config), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci"]
    return repo, state_file, args


def _cancelled(sandbox: Any, job_id: str) -> bool:
    return (job_state(sandbox, job_id) or "").startswith("CANCELLED")


def test_sigterm_cancels_the_job_within_two_seconds_and_exits_130(sandbox: Any, tmp_path: Path) -> None:
    repo, state_file, args = _setup(sandbox, tmp_path, SLEEPER)
    try:
        with ci_runner(["run", *args], repo, runner_env(sandbox)) as run:
            run.wait_for(r"^started$", timeout=60)
            job_id = recorded_jobs(state_file)["default"]
            assert (job_state(sandbox, job_id) or "").startswith("RUNNING")
            run.send(signal.SIGTERM)
            # The acceptance bound itself: the scheduler shows the job cancelled within 2 s of the signal.
            wait_until(lambda: _cancelled(sandbox, job_id), 2.0, "the job to be CANCELLED in the scheduler")
            code = run.finish(timeout=30)
            lines = run.lines()
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    assert code == 130, lines
    assert any(re.match(r"default\s+CANCELLED\s", line) for line in lines), lines
    recorded = json.loads(state_file.read_text())["entries"]["default"]
    assert recorded["finished"] and recorded["state"] == "CANCELLED"


def _cancel(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CI_RUNNER, "cancel", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_cancel_from_the_state_file_after_the_runner_was_killed(sandbox: Any, tmp_path: Path) -> None:
    repo, state_file, args = _setup(sandbox, tmp_path, SLEEPER)
    env = runner_env(sandbox)
    try:
        with ci_runner(["run", *args], repo, env) as run:
            run.wait_for(r"^started$", timeout=60)
            run.kill()  # SIGKILL: no chance to cancel anything
        job_id = recorded_jobs(state_file)["default"]
        assert (job_state(sandbox, job_id) or "").startswith("RUNNING")
        first = _cancel(repo, env, "--state-file", str(state_file))
        assert first.returncode == 0, first.stderr
        assert _cancelled(sandbox, job_id)
        again = _cancel(repo, env, "--state-file", str(state_file))  # idempotent
        assert again.returncode == 0, again.stderr
        by_id = _cancel(repo, env, job_id)
        assert by_id.returncode == 0 and f"job {job_id}: already CANCELLED" in by_id.stdout, by_id
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))


def test_cancel_finds_a_job_whose_id_was_never_recorded(sandbox: Any, tmp_path: Path) -> None:
    """A runner killed between submit and recording the id leaves SUBMITTING: cancel looks the job up by name."""
    repo, state_file, args = _setup(sandbox, tmp_path, SLEEPER)
    env = runner_env(sandbox)
    try:
        with ci_runner(["run", *args], repo, env) as run:
            run.wait_for(r"^started$", timeout=60)
            run.kill()
        job_id = recorded_jobs(state_file)["default"]
        document = json.loads(state_file.read_text())
        document["entries"]["default"].update(job_id=None, output_path=None, state="SUBMITTING")
        state_file.write_text(json.dumps(document))
        result = _cancel(repo, env, "--state-file", str(state_file))
        assert result.returncode == 0, result.stderr
        assert _cancelled(sandbox, job_id)
        assert json.loads(state_file.read_text())["entries"]["default"]["job_id"] == job_id
    finally:
        cancel_jobs(sandbox, [job_id] if "job_id" in locals() else [])


def _printed_offset(state_file: Path) -> int:
    return int(json.loads(state_file.read_text())["entries"]["default"]["offset"]) if state_file.exists() else -1


def test_attach_after_sigkill_resumes_without_duplication(sandbox: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    repo, state_file, args = _setup(sandbox, tmp_path, GATED.format(gate=gate))
    env = runner_env(sandbox)
    first_part = "".join(f"line {i}\n" for i in range(1, 21)).encode()
    try:
        with ci_runner(["run", *args], repo, env) as run:
            run.wait_for(r"^line 20$", timeout=60)
            # The offset is saved right after each print; wait for it, then kill without warning.
            wait_until(lambda: _printed_offset(state_file) == len(first_part), 10, "the printed offset")
            run.kill()
            before = [line for line in run.lines() if re.fullmatch(r"line \d+", line)]
        gate.touch()
        with ci_runner(["run", "--attach", *args], repo, env) as attached:
            code = attached.finish(timeout=120)
            after = [line for line in attached.lines() if re.fullmatch(r"line \d+", line)]
            lines = attached.lines()
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    assert code == 0, lines
    assert before == [f"line {i}" for i in range(1, 21)]
    assert after == [f"line {i}" for i in range(21, 41)], lines
    assert any("attaching to Slurm job" in line for line in lines)
