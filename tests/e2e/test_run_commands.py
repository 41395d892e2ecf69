"""`ci-runner run --sandbox` (the README's main command), `ci-runner systems`, usage errors, and a
job FirecREST does not know yet right after submit. ci-runner runs as a subprocess."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.run_process import CI_RUNNER, cancel_jobs, ci_runner, git_repo, recorded_jobs, runner_env

from ci_runner.sandbox.faults import Faults
from ci_runner.sandbox.server import SandboxOptions, start_sandbox

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CI_RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _plain_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items()
            if not k.startswith("FIRECREST_") and k not in ("AUTH_TOKEN_URL", "GITHUB_ACTIONS", "GITLAB_CI",
                                                            "JENKINS_URL", "BUILD_TAG")}


@pytest.mark.slow
@pytest.mark.shares_slurm  # --sandbox picks this machine's Slurm when it works
def test_readme_command_runs_the_realistic_example_in_an_embedded_sandbox(tmp_path: Path) -> None:
    repo = tmp_path / "project"
    shutil.copytree(EXAMPLES, repo / "examples")
    git_repo(repo)  # commits README only; `checkout: upload` archives that commit
    result = _run(["run", "--sandbox", "--config", "examples/realistic.yml"], repo, _plain_env(), timeout=420)  # at the default 10/min: seconds (9 requests)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for entry in ("unit-1", "unit-2", "integration-1", "smoke-1"):
        assert f"ci-runner: {entry}: PASSED (COMPLETED, exit code 0" in result.stdout, result.stdout[-3000:]
    assert "all 4 entries passed; exit code 0" in result.stdout
    assert list((repo / ".ci-runner-state").glob("*.json")), "state file in the default place"
    for entry, cases in (("unit-1", 5), ("unit-2", 5), ("integration-1", 3), ("smoke-1", 1)):
        results = repo / "ci-runner-artifacts" / entry / "results"
        assert f'tests="{cases}" failures="0"' in (results / f"junit-{entry}.xml").read_text()
        assert (results / f"{entry}-cases.txt").read_text().count("\n") == cases  # one result line per case


def test_the_quick_start_fits_the_first_minute_of_a_10_per_minute_quota_with_a_request_to_spare(tmp_path: Path) -> None:
    """The README's example at the sandbox's default quota (what `run --sandbox` starts): 9 requests
    on the local backend, where every run takes the same path (systems, mkdir, upload, submit, the
    job list that sees it running, two reads, the job list that sees it final, the artifacts), so
    one more (a job still pending at the first look, an output file a moment late on Slurm) still
    fits the first minute. A packed job's stream read to its own end line is complete once its
    final state agrees: no listing for its final size (was a 10th request: 61 s in half of the
    quick starts on Slurm)."""
    repo = tmp_path / "project"
    shutil.copytree(EXAMPLES, repo / "examples")
    git_repo(repo)
    options = SandboxOptions(root=tmp_path / "cluster", backend="local", port=0, faults=Faults(quota_per_minute=10))
    (tmp_path / "cluster").mkdir()
    with start_sandbox(options) as sandbox:
        result = _run(["run", "--config", "examples/realistic.yml", "--workdir", f"{tmp_path}/cluster/ci"],
                      repo, runner_env(sandbox), timeout=300)
        served = [r for r in sandbox.request_log.records if r.route != "/auth/token"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "all 4 entries passed; exit code 0" in result.stdout
    assert (repo / "ci-runner-artifacts" / "smoke-1" / "results" / "junit-smoke-1.xml").is_file()
    assert [r.status for r in served if r.status == 429] == []
    endpoints = [f"{r.method} {r.route.rsplit('/', 1)[-1]}" for r in served]
    assert len(served) <= 9, endpoints
    assert "GET ls" not in endpoints, " ".join(endpoints)


def test_systems_reports_health(tmp_path: Path) -> None:
    with start_sandbox(SandboxOptions(root=tmp_path, backend="local", port=0)) as sandbox:
        env = runner_env(sandbox)
        ok = _run(["systems"], tmp_path, env)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("local: healthy")
        missing = _run(["systems", "--system", "daint"], tmp_path, env)
        assert missing.returncode == 3
        assert "no system named 'daint'" in missing.stderr and "local" in missing.stderr


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    config = repo / "ci.yml"
    config.write_text("version: 1\nsystem: local\ncheckout: none\nmatrix:\n  n: [1, 2]\nscript: echo hi\n")
    no_env = _run(["run", "--config", str(config)], repo, _plain_env())
    assert no_env.returncode == 2
    assert "FIRECREST_URL" in no_env.stderr and "Traceback" not in no_env.stderr
    with start_sandbox(SandboxOptions(root=tmp_path / "c", backend="local", port=0)) as sandbox:
        unknown = _run(["run", "--config", str(config), "--entry", "nope"], repo, runner_env(sandbox))
    assert unknown.returncode == 2
    assert "unknown entry 'nope'; valid entries: 1, 2" in unknown.stderr
    no_state = _run(["cancel", "--state-file", str(tmp_path / "missing.json")], repo, _plain_env())
    assert no_state.returncode == 2 and "state file not found" in no_state.stderr


def test_job_unknown_right_after_submit_is_tolerated(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    root.mkdir()
    repo = git_repo(tmp_path / "repo")
    config = repo / "ci.yml"
    config.write_text("version: 1\nsystem: local\ncheckout: none\nscript: echo done\n")
    state_file = tmp_path / "state.json"
    options = SandboxOptions(root=root, backend="local", port=0, faults=Faults(not_found_window=4))
    with start_sandbox(options) as sandbox:
        args = ["run", "--config", str(config), "--state-file", str(state_file), "--requests-per-minute", "600",
                "--workdir", f"{root}/ci"]
        try:
            with ci_runner(args, repo, runner_env(sandbox)) as run:
                code = run.finish(timeout=90)
                lines: list[Any] = run.lines()
        finally:
            cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
        records = sandbox.request_log.records
    submitted = [r.time for r in records if r.endpoint == "POST /compute/{system_name}/jobs" and r.status == 201]
    lists = [r.time for r in records if r.endpoint == "GET /compute/{system_name}/jobs"]
    assert code == 0, lines
    assert "done" in lines
    assert len(submitted) == 1 and any(0 <= t - submitted[0] < 4 for t in lists)  # the window was really hit


def test_unpushed_commit_fails_the_clone_as_infrastructure(tmp_path: Path) -> None:
    """`checkout: clone` of a commit the origin does not have: the job's checkout fails (exit 199) and
    the run reports infrastructure (3) with a reason, not a test failure (1)."""
    origin = git_repo(tmp_path / "origin")
    repo = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(origin), str(repo)], check=True, timeout=30)
    (repo / "ci.yml").write_text("version: 1\nsystem: local\ncheckout: clone\nscript: echo tests ran\n")
    subprocess.run(["git", "-C", str(repo), "add", "ci.yml"], check=True, timeout=30)
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m",
                    "not pushed"], check=True, timeout=30)
    with start_sandbox(SandboxOptions(root=tmp_path / "c", backend="local", port=0)) as sandbox:
        result = _run(["run", "--config", "ci.yml", "--requests-per-minute", "600"], repo, runner_env(sandbox))
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "checkout failed" in result.stdout
    assert "the checkout on the cluster failed" in result.stdout
    assert "tests ran" not in result.stdout


def test_github_masks_the_client_secret_and_every_access_token(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    (repo / "ci.yml").write_text("version: 1\nsystem: local\ncheckout: none\nscript: echo hello\n")
    output, summary = tmp_path / "out.txt", tmp_path / "summary.md"
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    github = {"GITHUB_ACTIONS": "true", "GITHUB_SHA": sha, "GITHUB_REF": "refs/heads/main",
              "GITHUB_REPOSITORY": "o/r", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_RUN_ID": "7",
              "GITHUB_RUN_ATTEMPT": "1", "GITHUB_JOB": "hpc", "GITHUB_OUTPUT": str(output),
              "GITHUB_STEP_SUMMARY": str(summary)}
    with start_sandbox(SandboxOptions(root=tmp_path / "c", backend="local", port=0, token_ttl=300)) as sandbox:
        env = runner_env(sandbox, **github)
        result = _run(["run", "--config", "ci.yml", "--requests-per-minute", "600"], repo, env)
        secret = sandbox.client_secret
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    masks = [line.removeprefix("::add-mask::") for line in result.stdout.splitlines()
             if line.startswith("::add-mask::")]
    assert secret in masks
    tokens = [m for m in masks if m.count(".") == 2 and len(m) > 40]  # the sandbox's JWT access tokens
    assert tokens, masks
    first_mask = result.stdout.index("::add-mask::")
    assert all(result.stdout.index(token) == result.stdout.index(f"::add-mask::{token}") + len("::add-mask::")
               for token in tokens), "a token appeared before it was masked"
    assert first_mask < result.stdout.index("hello")
