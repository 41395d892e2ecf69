"""`ci-runner run` as a subprocess in simulated Jenkins and GitLab environments against the sandbox:
the exact log lines each CI gets and the report files it picks up (GitHub: tests/integration/test_action_steps.py
and tests/e2e/test_run_commands.py)."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.run_process import CI_RUNNER, git_repo, runner_env

from ci_runner.sandbox.server import Sandbox, SandboxOptions, start_sandbox

CONFIG = """\
version: 1
system: local
checkout: none
matrix:
  n: [1, 2]
script: |
  echo "entry {{ n }} says hi"
  exit $(( {{ n }} - 1 ))
"""


@pytest.fixture
def local_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with start_sandbox(SandboxOptions(root=tmp_path / "cluster", backend="local", port=0)) as sandbox:
        yield sandbox


def _project(tmp_path: Path) -> tuple[Path, str]:
    repo = git_repo(tmp_path / "repo")
    (repo / "ci.yml").write_text(CONFIG)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    return repo, sha


def _run(repo: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CI_RUNNER, "run", "--config", "ci.yml", "--requests-per-minute", "600", *extra],
                          cwd=repo, env=env, capture_output=True, timeout=120)
    # decoded by hand: text=True would turn the \r of GitLab's section markers into line breaks
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def test_jenkins_gets_plain_prefixed_lines_and_a_junit_file_in_the_workspace(
        tmp_path: Path, local_sandbox: Sandbox) -> None:
    repo, sha = _project(tmp_path)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    env = runner_env(local_sandbox, JENKINS_URL="https://jenkins.example.org/", BUILD_TAG="jenkins-proj-7",
                     GIT_COMMIT=sha, GIT_BRANCH="origin/main", GIT_URL="https://bot:tok3n@git.example.org/p.git",
                     WORKSPACE=str(workspace), TERM="xterm")
    env.pop("NO_COLOR")
    result = _run(repo, env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "\x1b" not in result.stdout, "no escape codes where the output is not a terminal"
    lines = result.stdout.splitlines()
    for n, status in (("1", 0), ("2", 1)):
        mine = [line for line in lines if line.startswith(f"[{n}] ")]
        assert mine == [f"[{n}] entry {n} says hi", f"[{n}] ci-runner: job script exited with status {status}"]
    assert "ci-runner: 2: FAILED (FAILED, exit code 1, ran " in result.stdout
    assert "ci-runner: 1: PASSED (COMPLETED, exit code 0, ran " in result.stdout
    assert lines[-1] == f"ci-runner: JUnit report: {workspace / 'ci-runner-junit.xml'}"
    suite = ET.parse(workspace / "ci-runner-junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["1"].find("failure") is None
    failure = cases["2"].find("failure")
    assert failure is not None and "entry 2 says hi" in (failure.text or "")
    state = next((repo / ".ci-runner-state").glob("*.json")).read_text()
    assert "tok3n" not in state and "tok3n" not in result.stdout


def test_gitlab_gets_a_section_per_entry_and_dotenv_and_junit_reports(tmp_path: Path, local_sandbox: Sandbox) -> None:
    repo, sha = _project(tmp_path)
    project_dir = tmp_path / "project-dir"
    project_dir.mkdir()
    env = runner_env(local_sandbox, GITLAB_CI="true", CI_COMMIT_SHA=sha, CI_COMMIT_REF_NAME="main",
                     CI_REPOSITORY_URL="https://gitlab-ci-token:glcbt-s3cret@gitlab.example.org/g/p.git",
                     CI_PIPELINE_ID="11", CI_JOB_ID="22", CI_PROJECT_DIR=str(project_dir),
                     CI_JOB_URL="https://gitlab.example.org/g/p/-/jobs/22")
    result = _run(repo, env, "--entry", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.split("\n")  # not splitlines(): the section markers hold a \r
    start = next(i for i, line in enumerate(lines) if "section_start:" in line)
    end = next(i for i, line in enumerate(lines) if "section_end:" in line)
    assert re.fullmatch(r"\x1b\[0Ksection_start:\d+:ci_runner_2\r\x1b\[0Kci-runner: 2 \(Slurm job \d+\)", lines[start])
    assert re.fullmatch(r"\x1b\[0Ksection_end:\d+:ci_runner_2\r\x1b\[0K", lines[end])
    assert lines[start + 2:end] == ["entry 2 says hi", "ci-runner: job script exited with status 1"]
    dotenv = (project_dir / "ci-runner.env").read_text().splitlines()
    assert dotenv[0] == "CI_RUNNER_EXIT_CODE=1" and "CI_RUNNER_STATE_2=FAILED" in dotenv
    assert any(line.startswith("CI_RUNNER_JOB_ID_2=") for line in dotenv)
    assert ET.parse(project_dir / "ci-runner-junit.xml").getroot().get("failures") == "1"
    assert "glcbt-s3cret" not in result.stdout + result.stderr
    assert "glcbt-s3cret" not in next((repo / ".ci-runner-state").glob("*.json")).read_text()
