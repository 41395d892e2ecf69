"""Job arrays end to end: entries with the same sbatch options are one submit (one Slurm job array),
each task's output goes to its own entry exactly once, outcomes stay per entry, SIGTERM leaves no
task behind and `--attach` after SIGKILL resumes every task. Both sandbox backends (real Slurm: 2
CPUs, so two of the four tasks wait for the others inside the array's queue)."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

from helpers.run_process import cancel_jobs, ci_runner, entry_lines, git_repo, recorded_jobs, runner_env
from helpers.waiting import wait_until

from ci_runner import slurm_states
from ci_runner.job_spec import JOB_END_LINE

KINDS = ("alpha", "beta", "gamma", "delta")
LINES = 12
SUBMIT = "POST /compute/{system_name}/jobs"

CONFIG = """\
version: 1
system: local
checkout: none
sbatch:
  time: 2m
matrix:
  kind: [alpha, beta, gamma, delta]
env:
  GATE: {gate}
script: |
  for i in $(seq 1 {lines}); do echo "{{{{ kind }}}} line $i é€😀"; sleep 0.1; done
  for i in $(seq 1 600); do [ -e "$GATE" ] && break; sleep 0.1; done
  printf '{{{{ kind }}}} no newline'
  [ {{{{ kind }}}} != beta ] || exit 3
"""


def _expected(kind: str) -> list[str]:
    # the job script's own last line follows the unfinished line in the same file, byte for byte
    return [f"{kind} line {i} é€😀" for i in range(1, LINES + 1)] + [
        f"{kind} no newline{JOB_END_LINE}{3 if kind == 'beta' else 0}"]


def _setup(tmp_path: Path, sandbox: Any, gate_open: bool = True) -> tuple[Path, Path, Path, list[str]]:
    repo = git_repo(tmp_path / "repo")
    gate = tmp_path / "gate"
    if gate_open:
        gate.touch()
    config = repo / "ci.yml"
    config.write_text(CONFIG.format(gate=gate, lines=LINES))
    state_file = tmp_path / "state.json"
    args = ["run", "--config", str(config), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci"]
    return repo, gate, state_file, args


def _offsets(state_file: Path) -> dict[str, int]:
    return {name: int(e["offset"]) for name, e in json.loads(state_file.read_text())["entries"].items()}


def _printed_bytes(lines: list[str]) -> dict[str, int]:
    return {kind: sum(len(f"{line}\n".encode()) for line in entry_lines(lines, kind)) for kind in KINDS}


def _array_tasks(sandbox: Any, state_file: Path) -> list[dict[str, Any]]:
    """Every job the backend lists that belongs to the run (the array's id and its tasks' own ids)."""
    ids = set(recorded_jobs(state_file).values())
    return [job for job in sandbox.backend.jobs() if job["jobId"] in ids]


def test_a_matrix_with_equal_options_is_one_submit_and_every_line_reaches_its_entry(
        sandbox: Any, tmp_path: Path) -> None:
    repo, _, state_file, args = _setup(tmp_path, sandbox)
    try:
        with ci_runner(args, repo, runner_env(sandbox)) as run:
            code = run.finish(timeout=240)
            lines = run.lines()
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    assert sandbox.request_log.counts.get(SUBMIT) == 1, sandbox.request_log.counts
    submitted = [line for line in lines if "submitted as Slurm job" in line]
    array_ids = {line.rsplit("Slurm job ", 1)[1].split("_")[0] for line in submitted}
    assert len(submitted) == 4 and len(array_ids) == 1, submitted
    for kind in KINDS:
        assert entry_lines(lines, kind) == _expected(kind), kind
    # Four tasks, each its own Slurm job: all final, the failing one FAILED with its own exit code.
    jobs = recorded_jobs(state_file)
    assert len(set(jobs.values())) == 4, jobs
    summary = lines[lines.index("ci-runner: summary"):]
    assert any(line.split()[:3] == ["beta", "FAILED", "3"] for line in summary), summary
    assert all(any(line.split()[:3] == [k, "COMPLETED", "0"] for line in summary) for k in KINDS if k != "beta")
    assert code == 1, lines[-8:]


def test_sigterm_cancels_every_task_of_the_array_also_those_still_pending(sandbox: Any, tmp_path: Path) -> None:
    repo, _, state_file, args = _setup(tmp_path, sandbox, gate_open=False)
    try:
        with ci_runner(args, repo, runner_env(sandbox)) as run:
            run.wait_for(r"^\[(alpha|beta|gamma|delta)\] \1 line 3 ", timeout=120)
            run.send(signal.SIGTERM)
            code = run.finish(timeout=30)
            lines = run.lines()
        assert code == 130, lines[-8:]

        def all_final() -> bool:
            listed = _array_tasks(sandbox, state_file)
            return bool(listed) and all(slurm_states.is_terminal(job["status"]["state"]) for job in listed)

        wait_until(all_final, 10, "every task of the array to be final")
        assert all(job["status"]["state"].startswith("CANCELLED") for job in _array_tasks(sandbox, state_file))
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))


def test_attach_after_sigkill_resumes_every_task_without_loss_or_duplication(sandbox: Any, tmp_path: Path) -> None:
    repo, gate, state_file, args = _setup(tmp_path, sandbox, gate_open=False)
    env = runner_env(sandbox)
    try:
        with ci_runner(args, repo, env) as run:
            run.wait_for(rf"^\[(alpha|beta|gamma|delta)\] \1 line {LINES} ", timeout=120)
            # Output is printed, then its offset recorded: kill once the records caught up (the jobs
            # wait at the gate), so that what is printed twice would be the runner's fault.
            wait_until(lambda: _offsets(state_file) == _printed_bytes(run.lines()), 10, "the printed offsets")
            run.kill()  # SIGKILL: the jobs go on
            before = run.lines()
        gate.touch()
        with ci_runner(["run", "--attach", *args[1:]], repo, env) as attached:
            code = attached.finish(timeout=240)
            after = attached.lines()
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    for kind in KINDS:
        assert entry_lines(before, kind) + entry_lines(after, kind) == _expected(kind), (kind, after[-20:])
    assert sandbox.request_log.counts.get(SUBMIT) == 1
    assert code == 1, after[-8:]


def test_cancel_from_the_state_file_cancels_the_whole_array_after_the_runner_was_killed(
        sandbox: Any, tmp_path: Path) -> None:
    """`ci-runner cancel --state-file`: the recorded task ids `A_i` are cancelled as their array, so the
    tasks still pending (which FirecREST cannot address alone) go too."""
    repo, _, state_file, args = _setup(tmp_path, sandbox, gate_open=False)
    env = runner_env(sandbox)
    try:
        with ci_runner(args, repo, env) as run:
            run.wait_for(r"^\[(alpha|beta|gamma|delta)\] \1 line 2 ", timeout=120)
            run.kill()  # SIGKILL: no chance to cancel anything
        with ci_runner(["cancel", "--state-file", str(state_file)], repo, env) as cancel:
            code = cancel.finish(timeout=60)
            lines = cancel.lines()
        assert code == 0, lines
        assert any(re.fullmatch(r"ci-runner: job array \d+: cancel requested", line) for line in lines), lines
        listed = _array_tasks(sandbox, state_file)
        assert listed and all(job["status"]["state"].startswith("CANCELLED") for job in listed), listed
        assert all(json.loads(state_file.read_text())["entries"][k]["finished"] for k in KINDS)
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
