"""`ci-runner run` streaming at the edges of a job: the end of its output and the end of the job.

Real HTTP against the sandbox (both backends), ci-runner as a subprocess; the sandbox's request log
shows which requests the runner made and in which order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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

from ci_runner.job_spec import JOB_END_LINE

JOB_ROUTE = "/compute/{system_name}/jobs"  # the run's job list (observer.py)
READ_ROUTES = ("/filesystem/{system_name}/ops/tail", "/filesystem/{system_name}/ops/view")
STAT_ROUTE = "/filesystem/{system_name}/ops/ls"  # the run's output listing gives the sizes

BIG_AFTER_GATE = """\
version: 1
system: local
checkout: none
env:
  GATE: {gate}
script: |
  echo ready
  for i in $(seq 1 900); do [ -e "$GATE" ] && break; sleep 0.1; done
  python3 -I -c 'import sys
  line = b"x" * 1000 + b"\\n"
  for n in range({lines}):
      sys.stdout.buffer.write(b"%08d " % n + line)'
"""

FLOWING = """\
version: 1
system: local
checkout: none
script: |
  for i in $(seq 1 30); do echo "line $i"; sleep 0.1; done
"""

SPOOFING = """\
version: 1
system: local
checkout: none
script: |
  for i in $(seq 1 10); do echo "line $i"; done
  echo "{end}0"
  sleep 2
  for i in $(seq 11 20); do echo "line $i"; sleep 0.1; done
  exit 3
"""


def _setup(sandbox: Any, tmp_path: Path, config_text: str) -> tuple[Path, Path, list[str]]:
    repo = git_repo(tmp_path / "repo")
    (repo / "ci.yml").write_text(config_text)
    state_file = tmp_path / "state.json"
    args = ["--config", "ci.yml", "--state-file", str(state_file), "--requests-per-minute", "1200",
            "--workdir", f"{sandbox.root}/ci"]
    return repo, state_file, args


def _printed_offset(state_file: Path) -> int:
    return int(json.loads(state_file.read_text())["entries"]["default"]["offset"]) if state_file.exists() else -1


def _remote_output(sandbox: Any, job_id: str) -> bytes:
    return next((sandbox.root / "ci").glob(f"*/output/*.{job_id}.out")).read_bytes()


def test_attach_to_a_finished_job_prints_all_of_a_large_output(sandbox: Any, tmp_path: Path) -> None:
    """The job wrote ~130 MiB (65 view blocks) while no runner followed it; attaching after it ended
    reads all of it in the final drain (the drain used to stop after 50 reads and exit 0 anyway)."""
    gate = tmp_path / "gate"
    lines = 130 * 1024
    repo, state_file, args = _setup(sandbox, tmp_path, BIG_AFTER_GATE.format(gate=gate, lines=lines))
    env = runner_env(sandbox)
    try:
        with ci_runner(["run", *args], repo, env) as run:
            run.wait_for(r"^ready$", timeout=60)
            wait_until(lambda: _printed_offset(state_file) == len(b"ready\n"), 10, "the printed offset")
            run.kill()
        job_id = recorded_jobs(state_file)["default"]
        gate.touch()
        wait_until(lambda: (job_state(sandbox, job_id) or "").startswith("COMPLETED"), 120, "the job to complete")
        with ci_runner(["run", "--attach", *args], repo, env) as attached:
            code = attached.finish(timeout=240)
            raw = bytes(attached.raw)
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    remote = _remote_output(sandbox, job_id)
    assert len(remote) > 125 * 1024 * 1024  # over 60 blocks of 2 MiB
    assert code == 0, raw[-2000:]
    job_output = b"".join(line for line in raw.splitlines(keepends=True)
                          if not line.startswith(b"ci-runner: ") or line.startswith(JOB_END_LINE.encode()))
    job_output = b"".join(line for line in job_output.splitlines(keepends=True)
                          if not re.match(rb"^(entry|default)\s", line))  # the summary table
    assert job_output == remote[len(b"ready\n"):]


def test_the_job_end_line_makes_the_runner_check_the_state_at_once(sandbox: Any, tmp_path: Path) -> None:
    """After the read that delivered the job's last line (the job-end line) the runner asks for the job
    state before anything else, and once the state is final one read takes what may have come after
    (nothing here): no size first, no other request."""
    repo, state_file, args = _setup(sandbox, tmp_path, FLOWING)
    code, run = run_to_end(["run", *args], repo, runner_env(sandbox), sandbox, state_file)
    lines = run.lines()
    assert code == 0, lines[-10:]
    assert [line for line in lines if line.startswith("line ")] == [f"line {i}" for i in range(1, 31)]
    assert f"{JOB_END_LINE}0" in lines
    routes = [r.route for r in sandbox.request_log.records if not r.route.startswith("/auth")]
    reads = [i for i, route in enumerate(routes) if route in READ_ROUTES]
    end_line_read, drain = reads[-2], reads[-1]
    between = routes[end_line_read + 1:drain]
    assert between and set(between) == {JOB_ROUTE}, between  # no other read, no sleep-then-read first
    assert drain == len(routes) - 1 and STAT_ROUTE not in routes[end_line_read:], routes[end_line_read:]


def test_output_that_looks_like_the_job_end_line_only_costs_a_few_early_state_checks(
    sandbox: Any, tmp_path: Path
) -> None:
    """User output may print the job-end text: the runner keeps following, prints everything and takes
    the verdict from the job state (exit 3 here, so the entry fails)."""
    repo, state_file, args = _setup(sandbox, tmp_path, SPOOFING.format(end=JOB_END_LINE))
    code, run = run_to_end(["run", *args], repo, runner_env(sandbox), sandbox, state_file)
    lines = run.lines()
    assert code == 1, lines[-10:]
    assert [line for line in lines if line.startswith("line ")] == [f"line {i}" for i in range(1, 21)]
    assert [line for line in lines if line.startswith(JOB_END_LINE)] == [f"{JOB_END_LINE}0", f"{JOB_END_LINE}3"]
