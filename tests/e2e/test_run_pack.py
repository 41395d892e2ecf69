"""Pack mode end to end: the matrix runs as the steps of ONE Slurm job (one submit, one job in the
queue), every line of every entry reaches that entry exactly once, outcomes stay per entry, SIGTERM
leaves no job and `--attach` after SIGKILL resumes the stream without loss or duplication. Both
sandbox backends (real Slurm: 2 CPUs and an allocation of 2, so two of the four steps wait inside
it for the others)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers.run_process import cancel_jobs, ci_runner, entry_lines, git_repo, recorded_jobs, run_to_end, runner_env
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
pack: true
sbatch:
  ntasks: 2
  time: 4m
matrix:
  kind: [{kinds}]
{include}
env:
  GATE: {gate}
script: |
  for i in $(seq 1 {lines}); do echo "{{{{ kind }}}} line $i é€😀"; sleep 0.1; done
  for i in $(seq 1 600); do [ -e "$GATE" ] && break; sleep 0.1; done
  printf '{{{{ kind }}}} no newline'
  [ {{{{ kind }}}} != beta ] || exit 3
  [ {{{{ kind }}}} != delta ] || sleep 300
"""
DELTA_TIME_LIMIT = """\
  include:
    - kind: delta
      sbatch: {time: 1m}
"""


def _expected(kind: str) -> list[str]:
    # the entry's own job-end line follows its unfinished last line, byte for byte, as in a job of its own
    return [f"{kind} line {i} é€😀" for i in range(1, LINES + 1)] + [
        f"{kind} no newline{JOB_END_LINE}{3 if kind == 'beta' else 0}"]


def _setup(tmp_path: Path, sandbox: Any, gate_open: bool = True, include: str = "",
           kinds: tuple[str, ...] = KINDS) -> tuple[Path, Path, Path, list[str]]:
    repo = git_repo(tmp_path / "repo")
    gate = tmp_path / "gate"
    if gate_open:
        gate.touch()
    config = repo / "ci.yml"
    config.write_text(CONFIG.format(gate=gate, lines=LINES, include=include, kinds=", ".join(kinds)))
    state_file = tmp_path / "state.json"
    args = ["run", "--config", str(config), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci"]
    return repo, gate, state_file, args


def _offsets(state_file: Path) -> set[int]:
    return {int(e["offset"]) for e in json.loads(state_file.read_text())["entries"].values()}


def _run_jobs(sandbox: Any, state_file: Path) -> list[dict[str, Any]]:
    ids = set(recorded_jobs(state_file).values())
    return [job for job in sandbox.backend.jobs() if job["jobId"] in ids]


def _summary(lines: list[str]) -> list[list[str]]:
    return [line.split() for line in lines[lines.index("ci-runner: summary"):]]


def test_a_packed_matrix_is_one_job_and_every_line_reaches_its_entry(sandbox: Any, tmp_path: Path) -> None:
    kinds = ("alpha", "beta", "gamma", "epsilon")  # four one-CPU steps in 2 CPUs (delta sleeps on: below)
    repo, _, state_file, args = _setup(tmp_path, sandbox, kinds=kinds)
    try:
        with ci_runner(args, repo, runner_env(sandbox)) as run:
            code = run.finish(timeout=240)
            lines = run.lines()
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    assert sandbox.request_log.counts.get(SUBMIT) == 1, sandbox.request_log.counts
    assert ("ci-runner: packed job 0 (system local): 4 entries as the steps of one allocation of 2 CPUs; together "
            "they need 4: steps that do not fit wait inside it for the others") in lines, lines[:5]
    jobs = recorded_jobs(state_file)
    assert len(jobs) == 4 and len(set(jobs.values())) == 1, jobs  # one Slurm job for the whole matrix
    assert len(_run_jobs(sandbox, state_file)) == 1
    for kind in kinds:
        assert entry_lines(lines, kind) == _expected(kind), (kind, lines[-30:])
    summary = _summary(lines)
    assert any(row[:3] == ["beta", "FAILED", "3"] for row in summary), summary
    assert all(any(row[:3] == [k, "COMPLETED", "0"] for row in summary) for k in kinds if k != "beta"), summary
    assert code == 1, lines[-8:]


ARTIFACTS = """\
version: 1
system: local
checkout: none
pack: true
sbatch: {ntasks: 2, time: 4m}
matrix:
  kind: [alpha, beta]
artifacts: ["result.txt"]
script: |
  for i in $(seq 1 15); do echo "{{ kind }} line $i"; sleep 0.2; done
  echo "{{ kind }} passed" > result.txt
"""


def test_a_packed_job_read_to_its_own_end_line_ends_with_the_job_list_that_shows_it_final(
        sandbox: Any, tmp_path: Path) -> None:
    """With artifacts its follower waits for the job's final state. Its stream was read to the job's
    own end line, so the job list that shows it final (COMPLETED, the line's status) ends the stream:
    then only the artifacts' download, no listing or read for its final size."""
    repo = git_repo(tmp_path / "repo")
    (repo / "ci.yml").write_text(ARTIFACTS)
    state_file = tmp_path / "state.json"
    args = ["run", "--config", str(repo / "ci.yml"), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci"]
    code, run = run_to_end(args, repo, runner_env(sandbox), sandbox, state_file, timeout=240)
    lines = run.lines()
    assert code == 0, lines[-12:]
    for kind in ("alpha", "beta"):
        assert entry_lines(lines, kind) == [f"{kind} line {i}" for i in range(1, 16)] + [f"{JOB_END_LINE}0"], kind
        assert (repo / "ci-runner-artifacts" / kind / "result.txt").read_text() == f"{kind} passed\n"
    routes = [r.route.rsplit("/", 1)[-1] for r in sandbox.request_log.records]
    final = max(i for i, route in enumerate(routes) if route == "jobs")
    assert routes[final + 1:] == ["download"], routes


@pytest.mark.parametrize("backend, time_scale", [
    pytest.param("local", 0.05, id="local"),  # 1m -> 3 s (the allocation's 4m -> 12 s)
    pytest.param("slurm", 1.0, id="slurm", marks=[pytest.mark.slurm, pytest.mark.slow])])
def test_a_step_over_its_own_time_limit_is_that_entry_s_timeout_and_the_others_go_on(
        tmp_path: Path, backend: str, time_scale: float) -> None:
    """delta's step has `time: 1m` and sleeps on: delta is TIMEOUT (exit 4, worse than beta's FAILED 1),
    the other entries keep their own outcomes, all from the one job."""
    from ci_runner.sandbox.server import SandboxOptions, start_sandbox

    root = tmp_path / "cluster"
    root.mkdir()
    with start_sandbox(SandboxOptions(root=root, backend=backend, port=0, local_time_scale=time_scale)) as sandbox:
        repo, _, state_file, args = _setup(tmp_path, sandbox, include=DELTA_TIME_LIMIT)
        try:
            with ci_runner(args, repo, runner_env(sandbox)) as run:
                code = run.finish(timeout=300)
                lines = run.lines()
        finally:
            cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    assert len(set(recorded_jobs(state_file).values())) == 1
    for kind in ("alpha", "beta", "gamma"):
        assert entry_lines(lines, kind) == _expected(kind), kind
    summary = _summary(lines)
    assert any(row[:2] == ["delta", "TIMEOUT"] for row in summary), summary
    assert any(row[:3] == ["beta", "FAILED", "3"] for row in summary), summary
    assert code == slurm_states.Outcome.TIMEOUT.exit_code, lines[-8:]


def test_sigterm_cancels_the_packed_job(sandbox: Any, tmp_path: Path) -> None:
    repo, _, state_file, args = _setup(tmp_path, sandbox, gate_open=False, kinds=KINDS[:3])
    try:
        with ci_runner(args, repo, runner_env(sandbox)) as run:
            run.wait_for(r"^\[(alpha|beta)\] \1 line 3 ", timeout=120)
            run.send(signal.SIGTERM)
            code = run.finish(timeout=30)
            lines = run.lines()
        assert code == 130, lines[-8:]

        def final() -> bool:
            listed = _run_jobs(sandbox, state_file)
            return bool(listed) and all(slurm_states.is_terminal(job["status"]["state"]) for job in listed)

        wait_until(final, 10, "the packed job to be final")
        assert [job["status"]["state"].split()[0] for job in _run_jobs(sandbox, state_file)] == ["CANCELLED"]
        assert all(json.loads(state_file.read_text())["entries"][k]["finished"] for k in KINDS[:3])
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))


def test_attach_after_sigkill_resumes_the_stream_without_loss_or_duplication(sandbox: Any, tmp_path: Path) -> None:
    repo, gate, state_file, args = _setup(tmp_path, sandbox, gate_open=False, kinds=KINDS[:2])
    env = runner_env(sandbox)
    try:
        with ci_runner(args, repo, env) as run:
            run.wait_for(r"^\[alpha\] alpha line 12 ", timeout=120)
            run.wait_for(r"^\[beta\] beta line 12 ", timeout=60)
            # Output is printed, then its offset recorded: kill once the record caught up with the whole
            # stream (the steps wait at the gate), so that what is printed twice would be the runner's fault.
            stream = next(Path(sandbox.root).rglob("output/pack+0.*.out"))
            wait_until(lambda: _offsets(state_file) == {stream.stat().st_size}, 10, "the stream offset")
            run.kill()  # SIGKILL: the job goes on
            before = run.lines()
        gate.touch()
        with ci_runner(["run", "--attach", *args[1:]], repo, env) as attached:
            code = attached.finish(timeout=240)
            after = attached.lines()
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    for kind in ("alpha", "beta"):
        assert entry_lines(before, kind) + entry_lines(after, kind) == _expected(kind), (kind, after[-20:])
    assert sandbox.request_log.counts.get(SUBMIT) == 1
    assert code == 1, after[-8:]


RESUBMIT = """\
version: 1
system: local
checkout: none
pack: true
resubmit: 1
sbatch: {{ntasks: 2}}
matrix:
  kind: [quick, slow]
env:
  GATE: {gate}
script: |
  echo "{{{{ kind }}}} on job $SLURM_JOB_ID"
  [ {{{{ kind }}}} = quick ] && exit 0
  for i in $(seq 1 600); do [ -e "$GATE" ] && break; sleep 0.1; done
  echo released
"""


def test_a_resubmit_after_a_node_failure_runs_again_only_the_entries_that_had_not_finished(tmp_path: Path) -> None:
    """Local backend (the one whose node a test can fail): `quick` ends, then the packed job's node
    fails while `slow` waits; the job is submitted again with `slow`'s step alone; `quick` keeps its result."""
    from ci_runner.sandbox.server import SandboxOptions, start_sandbox

    root = tmp_path / "cluster"
    root.mkdir()
    repo = git_repo(tmp_path / "repo")
    gate = tmp_path / "gate"
    (repo / "ci.yml").write_text(RESUBMIT.format(gate=gate))
    state_file = tmp_path / "state.json"
    args = ["run", "--config", str(repo / "ci.yml"), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{root}/ci"]
    with start_sandbox(SandboxOptions(root=root, backend="local", port=0)) as sandbox:
        try:
            with ci_runner(args, repo, runner_env(sandbox)) as run:
                run.wait_for(r"^ci-runner: quick: PASSED", timeout=60)
                run.wait_for(r"^\[slow\] slow on job 1$", timeout=60)
                wait_until(lambda: sandbox.backend.fail_node("1"), 10, "job 1 to run")
                run.wait_for(r"^\[slow\] slow on job 2$", timeout=60)
                gate.touch()
                code = run.finish(timeout=60)
                lines = run.lines()
        finally:
            cancel_jobs(sandbox, ["1", "2"])
        jobs = {job["jobId"]: job["status"]["state"] for job in sandbox.backend.jobs()}
    assert jobs == {"1": "NODE_FAIL", "2": "COMPLETED"}, jobs
    assert entry_lines(lines, "quick") == ["quick on job 1", f"{JOB_END_LINE}0"]  # not run again
    assert entry_lines(lines, "slow") == ["slow on job 1", "slow on job 2", "released", f"{JOB_END_LINE}0"]
    assert any("packed job 1 ended NODE_FAIL (cluster failure): resubmitting the entries that did not finish" in line
               for line in lines), lines
    assert code == 0, lines[-8:]
