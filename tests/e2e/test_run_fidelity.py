"""`ci-runner run` against the sandbox answering as the real FirecREST v2 server does (the same cases
as test_real_firecrest.py, fast): a `tail` of a large backlog times out (408) instead of answering
413, sbatch's refusal is a 500 with its stderr, a cancel of a finished job is a 500 "already
completed", the job record's start time tells the queue time.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.run_process import (
    cancel_jobs,
    ci_runner,
    git_repo,
    job_state,
    recorded_jobs,
    run_to_end,
    runner_env,
)
from helpers.waiting import wait_until

from ci_runner.sandbox.faults import Faults
from ci_runner.sandbox.server import Sandbox, SandboxOptions, start_sandbox

JOBS = "/compute/{system_name}/jobs"
READS = ("/filesystem/{system_name}/ops/tail", "/filesystem/{system_name}/ops/view")


@pytest.fixture
def fast_timeout_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """The local backend with a 0.5 s command timeout: a `tail` of a rest over the cap answers 408 fast."""
    root = tmp_path / "cluster"
    root.mkdir()
    with start_sandbox(SandboxOptions(root=root, backend="local", port=0, command_timeout=0.5)) as sandbox:
        yield sandbox


def _project(sandbox: Sandbox, tmp_path: Path, config: str, *extra: str) -> tuple[Path, Path, list[str]]:
    """A repo with `config` as ci.yml, its state file, and the `ci-runner run` arguments."""
    repo = git_repo(tmp_path / "repo")
    (repo / "ci.yml").write_text(config)
    state_file = tmp_path / "state.json"
    args = ["run", "--config", "ci.yml", "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci", *extra]
    return repo, state_file, args


def _run(sandbox: Sandbox, tmp_path: Path, config: str, *extra: str) -> tuple[int, list[str]]:
    repo, state_file, args = _project(sandbox, tmp_path, config, *extra)
    code, process = run_to_end(args, repo, runner_env(sandbox), sandbox, state_file)
    return code, process.lines()


def _statuses(sandbox: Sandbox, routes: tuple[str, ...]) -> list[int]:
    return [r.status for r in sandbox.request_log.records if r.route in routes]


def test_a_20_mib_backlog_written_before_the_first_read_prints_exactly_without_timeouts(
    fast_timeout_sandbox: Sandbox, tmp_path: Path
) -> None:
    config = """\
version: 1
system: local
checkout: none
api_retry_limit: 20s
script: |
  python3 -I -c 'import sys
  for n in range(200000): sys.stdout.write("%06d " % n + "x" * 97 + "\\u20ac\\n")'
  echo done
"""
    code, lines = _run(fast_timeout_sandbox, tmp_path, config)
    assert code == 0, lines[-10:]
    numbered = [int(line[:6]) for line in lines if re.fullmatch(r"\d{6} x{97}€", line)]
    assert numbered == list(range(200000))
    statuses = _statuses(fast_timeout_sandbox, READS)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))


@pytest.mark.parametrize("option, value, says", [
    ("partition", "nosuch", "invalid partition specified: nosuch"),
    ("bogus-opt", "1", "unrecognized option '--bogus-opt=1'"),
])
def test_a_job_sbatch_rejects_is_a_config_error_at_once(sandbox: Any, tmp_path: Path, option: str, value: str,
                                                         says: str) -> None:
    config = f"version: 1\nsystem: local\ncheckout: none\nsbatch:\n  {option}: {value}\nscript: echo never\n"
    code, lines = _run(sandbox, tmp_path, config)
    assert code == 2, lines[-10:]
    assert any(says in line and f"--{option}" in line and "CONFIG" in line for line in lines), lines[-10:]
    assert sandbox.request_log.count("POST", JOBS) == 1  # not retried, not looked up
    assert sandbox.request_log.count("GET", JOBS) == 0


def test_unreadable_output_of_a_finished_job_keeps_its_exit_code_and_says_what_is_missing(
    tmp_path: Path
) -> None:
    """The job takes the read permission off its output file: reading the rest fails (403, as the real
    server answers) after the job ended. The exit code follows COMPLETED, a warning names the file and
    what is missing, and the finished job is not cancelled."""
    root = tmp_path / "cluster"
    root.mkdir()
    config = """\
version: 1
system: local
checkout: none
script: |
  echo first
  sleep 2
  for i in $(seq 1 50); do echo "more $i"; done
  chmod 000 "$CI_RUNNER_OUTPUT"
"""
    with start_sandbox(SandboxOptions(root=root, backend="local", port=0)) as sandbox:
        code, lines = _run(sandbox, tmp_path, config)
        deletes = sandbox.request_log.count("DELETE", JOBS + "/{job_id}")
    assert code == 0, lines[-10:]
    warning = next((line for line in lines if "output is incomplete" in line), "")
    assert "not printed" in warning and re.search(r"output/default\.\d+\.out", warning), lines[-10:]
    assert deletes == 0


def test_the_queue_time_is_slurms_not_when_the_runner_saw_the_job(tmp_path: Path) -> None:
    """The job waits 8 s in the queue, then runs 5 s while the runner is stopped (SIGSTOP: a runner
    starved of CPU or of its request budget looks late): the runner sees the end of the wait only after
    the job ended, 13 s or more after the submit; the log says the job record's figure."""
    root = tmp_path / "cluster"
    root.mkdir()
    options = SandboxOptions(root=root, backend="local", port=0, faults=Faults(pending_delay=8.0))
    with start_sandbox(options) as sandbox:
        repo, state_file, args = _project(sandbox, tmp_path, "version: 1\nsystem: local\ncheckout: none\n"
                                          "script: |\n  echo ran\n  sleep 5\n")
        try:
            with ci_runner(args, repo, runner_env(sandbox)) as run:
                run.wait_for(r"default: PENDING\b.*waiting for", timeout=60)
                job_id = recorded_jobs(state_file)["default"]
                run.send(signal.SIGSTOP)
                try:
                    wait_until(lambda: (job_state(sandbox, job_id) or "").startswith("COMPLETED"), 60,
                               "the job to end while the runner is stopped")
                finally:
                    run.send(signal.SIGCONT)
                code = run.finish(timeout=60)
                lines = run.lines()
        finally:
            cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    assert code == 0, lines[-10:]
    line = next(line for line in lines if "in the queue" in line)
    match = re.search(r"after (?:(\d+)m )?(\d+)s in the queue", line)
    assert match, line
    assert 6 <= int(match.group(1) or 0) * 60 + int(match.group(2)) <= 11, line
