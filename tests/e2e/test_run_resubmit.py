"""`resubmit`: a job that the cluster fails (NODE_FAIL) is submitted again and followed to its end; the
output of both attempts is printed, the first one's cut line ended. Local backend only: it is the one
whose node a test can fail (`LocalBackend.fail_node`); real Slurm's would take the machine down."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.run_process import cancel_jobs, ci_runner, git_repo, runner_env
from helpers.waiting import wait_until

from ci_runner.job_spec import JOB_END_LINE
from ci_runner.sandbox.server import SandboxOptions, start_sandbox

CONFIG = """\
version: 1
system: local
checkout: none
resubmit: {resubmit}
env:
  GATE: {gate}
script: |
  echo "attempt on job $SLURM_JOB_ID"
  printf 'waiting'
  for i in $(seq 1 600); do [ -e "$GATE" ] && break; sleep 0.1; done
  echo ' released'
"""


@pytest.mark.parametrize("resubmit", [1, 0])
def test_node_failure_is_resubmitted_when_allowed(tmp_path: Path, resubmit: int) -> None:
    root = tmp_path / "cluster"
    root.mkdir()
    repo = git_repo(tmp_path / "repo")
    gate = tmp_path / "gate"
    config = repo / "ci.yml"
    config.write_text(CONFIG.format(resubmit=resubmit, gate=gate))
    args = ["run", "--config", str(config), "--state-file", str(tmp_path / "state.json"),
            "--requests-per-minute", "600", "--workdir", f"{root}/ci"]
    with start_sandbox(SandboxOptions(root=root, backend="local", port=0)) as sandbox:
        try:
            with ci_runner(args, repo, runner_env(sandbox)) as run:
                run.wait_for(r"^attempt on job 1$", timeout=60)
                wait_until(lambda: sandbox.backend.fail_node("1"), 10, "job 1 to run")
                if resubmit:
                    run.wait_for(r"^ci-runner: warning: .*job 1 ended NODE_FAIL \(cluster failure\): "
                                 r"resubmitting \(0 resubmit\(s\) left\)$", timeout=60)
                    run.wait_for(r"^attempt on job 2$", timeout=60)
                gate.touch()
                code = run.finish(timeout=60)
                lines = run.lines()
        finally:
            cancel_jobs(sandbox, ["1", "2"])
        jobs = {job["jobId"]: job["status"]["state"] for job in sandbox.backend.jobs()}
    print("\n".join(lines))  # shown in full when an assertion fails
    output = lines[:lines.index("ci-runner: summary")]
    first = ["attempt on job 1", "waiting"]  # killed mid-line: the cut line is ended, nothing lost
    if resubmit:
        assert jobs == {"1": "NODE_FAIL", "2": "COMPLETED"}
        warning = output.index("ci-runner: warning: default: job 1 ended NODE_FAIL (cluster failure): "
                               "resubmitting (0 resubmit(s) left)")
        job_lines = [line for line in output if not line.startswith("ci-runner: ") or line == f"{JOB_END_LINE}0"]
        assert job_lines == [*first, "attempt on job 2", "waiting released", f"{JOB_END_LINE}0"]
        assert output.index("waiting") < warning < output.index("attempt on job 2")
        assert any(line.startswith("ci-runner: default: PASSED (COMPLETED, exit code 0") for line in output)
        assert code == 0
    else:
        assert jobs == {"1": "NODE_FAIL"}
        assert [line for line in output if not line.startswith("ci-runner: ")] == first
        assert any(line.startswith("ci-runner: default: INFRA (NODE_FAIL") for line in output)
        assert code == 3
