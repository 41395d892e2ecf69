"""The example .gitlab-ci.yml, with the component included locally, run by gitlab-ci-local (shell
executor) against the sandbox: one GitLab job per entry (parallel:matrix), JUnit and dotenv reports.

Needs node/npm, rsync and gitlab-ci-local@4.62.0 in ~/.cache/ci-runner-npm (installed here when npm is
available). Skipped only when node, npm or rsync is missing and CI is not set; in CI it fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = "4.62.0"
NPM_CACHE = Path(os.environ.get("CI_RUNNER_NPM_DIR", Path.home() / ".cache" / "ci-runner-npm"))
GITLAB_CI_LOCAL = NPM_CACHE / "node_modules" / ".bin" / "gitlab-ci-local"


def gitlab_ci_local() -> Path:
    missing = [tool for tool in ("node", "npm", "rsync") if shutil.which(tool) is None]
    if missing:  # gitlab-ci-local runs on node and copies the project with rsync
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} needed in CI (see .ci/run)")
        pytest.skip(f"{', '.join(missing)} missing")
    if not GITLAB_CI_LOCAL.exists():
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "i", "--no-audit", "--no-fund", f"gitlab-ci-local@{VERSION}"], cwd=NPM_CACHE,
                       check=True, capture_output=True, timeout=300)
    return GITLAB_CI_LOCAL


def project(tmp_path: Path) -> Path:
    """A git project as a user would have it: the example files plus a copy of the component."""
    repo = tmp_path / "project"
    (repo / "gitlab-templates").mkdir(parents=True)
    for name in (".gitlab-ci.yml", ".ci-runner.yml"):
        shutil.copy(ROOT / "examples" / "gitlab" / name, repo / name)
    shutil.copy(ROOT / "gitlab-templates" / "ci-runner.yml", repo / "gitlab-templates" / "ci-runner.yml")
    git = ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "example"], check=True)
    return repo


def test_example_pipeline_runs_against_the_sandbox(tmp_path: Path, sandbox: object) -> None:
    tool = gitlab_ci_local()
    repo = project(tmp_path)
    variables = {
        "GITLAB_CI": "true",  # gitlab-ci-local says "false"; ci-runner detects GitLab by "true"
        "FIRECREST_URL": sandbox.url,                      # type: ignore[attr-defined]
        "AUTH_TOKEN_URL": sandbox.token_url,               # type: ignore[attr-defined]
        "FIRECREST_CLIENT_ID": sandbox.client_id,          # type: ignore[attr-defined]
        "FIRECREST_CLIENT_SECRET": sandbox.client_secret,  # type: ignore[attr-defined]
        "CI_RUNNER_REQUESTS_PER_MINUTE": "600",
        "CI_RUNNER_WORKDIR": f"{sandbox.root}/ci",         # type: ignore[attr-defined]
    }
    command = [str(tool), "--force-shell-executor", "--concurrency", "1", "--no-color"]
    for key, value in variables.items():
        command += ["--variable", f"{key}={value}"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("GITHUB_ACTIONS", None)
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        log = process.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        log = process.communicate(timeout=60)[0]
        pytest.fail(f"gitlab-ci-local did not finish:\n{log}")
    assert process.returncode == 0, log
    assert " PASS  cluster-tests: [unit]" in log and " PASS  cluster-tests: [integration]" in log, log
    # What the jobs exported (artifacts:paths and artifacts:reports), per job. The shell executor runs
    # the jobs one after another in the project directory (--concurrency 1; --shell-isolation does not
    # export these reports in 4.62.0), so each export holds that job's own report files.
    artifacts = repo / ".gitlab-ci-local" / "artifacts"
    for entry in ("unit", "integration"):
        (job_dir,) = [d for d in artifacts.iterdir() if entry in d.name]
        dotenv = (job_dir / ".gitlab-ci-reports" / "dotenv" / "ci-runner.env").read_text()
        assert dotenv.startswith("CI_RUNNER_EXIT_CODE=0\n")
        assert f"CI_RUNNER_STATE_{entry.upper()}=COMPLETED\n" in dotenv
        junit = (job_dir / "ci-runner-junit.xml").read_text()
        assert f'name="{entry}"' in junit and junit.count("<testcase") == 1 + 2
        job_log = next((repo / ".gitlab-ci-local" / "output").glob(f"*{entry}*.log")).read_text()
        # gitlab-ci-local's log file keeps the markers (its log file turns the carriage return into a newline).
        assert re.search(rf"\x1b\[0Ksection_start:\d+:ci_runner_{entry}[\r\n]?\x1b\[0Kci-runner: {entry} \(Slurm job \d+\)",
                         job_log), job_log
        assert re.search(rf"\x1b\[0Ksection_end:\d+:ci_runner_{entry}[\r\n]?\x1b\[0K", job_log), job_log
