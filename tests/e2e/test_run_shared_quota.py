"""Two `ci-runner run` processes sharing one application quota (two fan-out legs with the same client
id): each believes it owns 10 requests a minute, the sandbox allows 10 for both together. The budgets'
AIMD (budget.py) halves each run's rate on its first 429, so the 429s stay few and both runs pass.

Real HTTP against one in-process sandbox (`Faults(quota_per_minute=10)`, what `ci-runner sandbox
--quota-per-minute 10` serves), local backend; the request log counts the 429s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.run_process import cancel_jobs, ci_runner, git_repo, recorded_jobs, runner_env

from ci_runner.budget import max_in_window
from ci_runner.sandbox.faults import Faults
from ci_runner.sandbox.server import SandboxOptions, start_sandbox

QUOTA = 10
# 2 s apart: a job of 90 s. After the start (both runs together, more requests than the quota, a 429
# pause of a minute) both runs poll side by side for half a minute: long enough for runs that do not
# lower their rate to meet more 429s (see the test), short enough to end before the rates creep back up.
LINES = 45
CONFIG = f"""\
version: 1
system: local
checkout: none
sbatch:
  time: 5m
script: |
  for i in $(seq 1 {LINES}); do echo "line $i"; sleep 2; done
"""


@pytest.mark.slow
def test_two_runs_sharing_one_quota_meet_few_429s(tmp_path: Path) -> None:
    """Both runs pass and the 429s stay few. Measured here (about 25 requests in 2 min): 2 429s, both
    when the two runs start together, then none (each run halved its rate to 5/min); with the budget's
    decrease switched off (`RequestBudget.throttled` a no-op: each run's pause after a 429 alone, as
    before AIMD) 7, two more every half minute or so once both runs poll."""
    root = tmp_path / "cluster"
    root.mkdir()
    options = SandboxOptions(root=root, backend="local", port=0, slots=2,
                             faults=Faults(quota_per_minute=QUOTA))
    legs = ("a", "b")
    state_files = {leg: tmp_path / f"state-{leg}.json" for leg in legs}
    with start_sandbox(options) as sandbox:
        env = runner_env(sandbox)
        try:
            with ci_runner(*_leg_args(tmp_path, sandbox, "a", state_files["a"]), env) as run_a, \
                    ci_runner(*_leg_args(tmp_path, sandbox, "b", state_files["b"]), env) as run_b:
                codes = {"a": run_a.finish(timeout=200), "b": run_b.finish(timeout=200)}
                lines = {"a": run_a.lines(), "b": run_b.lines()}
        finally:
            for state_file in state_files.values():
                cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
        records = [r for r in sandbox.request_log.records if not r.route.startswith("/auth")]
    throttled = sum(r.status == 429 for r in records)
    answered = [r.time for r in records if r.status != 429]
    start = min(r.time for r in records)
    print(f"{len(records)} requests in {max(answered) - start:.0f} s, {throttled} answered 429 (at "
          f"{[round(r.time - start) for r in records if r.status == 429]} s)")
    for leg in legs:
        assert codes[leg] == 0, (leg, lines[leg][-15:])
        assert [line for line in lines[leg] if line.startswith("line ")] == [f"line {i}" for i in range(1, LINES + 1)]
    assert max_in_window(answered, 60.0) <= QUOTA  # the sandbox enforced the shared quota
    assert throttled >= 1, "the runs never met the shared quota: the test shows nothing"
    assert throttled <= 4, throttled


def _leg_args(tmp_path: Path, sandbox: object, leg: str, state_file: Path) -> tuple[list[str], Path]:
    """`ci-runner run` of one leg (its own repo, state file and remote directory) and its working dir."""
    repo = git_repo(tmp_path / f"repo-{leg}")
    (repo / "ci.yml").write_text(CONFIG)
    args = ["run", "--config", "ci.yml", "--state-file", str(state_file), "--requests-per-minute", str(QUOTA),
            "--workdir", f"{sandbox.root}/ci-{leg}"]  # type: ignore[attr-defined]
    return args, repo
