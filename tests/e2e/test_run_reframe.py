"""examples/reframe end to end on real Slurm: `ci-runner run` (as a GitLab job would run it) against the
sandbox's `slurm` backend. Each entry's job installs ReFrame from the package index into the cached
venv under the workdir (or reuses it), runs both checks as job steps, and the run's merged JUnit
report holds every ReFrame test case with its outcome; a second run reuses the venv.

Measured here (2 CPUs): 18 s for the first run (one entry installs reframe-hpc, the other waits on the
lock and reuses it), 5-7 s for the second; 25 s for the whole test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers.run_process import git_repo, run_to_end, runner_env

from ci_runner.sandbox.server import SandboxOptions, start_sandbox

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reframe"
CONFIG = "examples/reframe/.ci-runner.yml"
VERSION = "4.10.4"  # the example's REFRAME_VERSION
ENTRIES = ("builtin", "gnu")
CHECK_FILE = "examples/reframe/checks/example_checks.py"
FAILURE = "sanity: sanity error: 6 * 7 printed 42, expected 43"


def _project(tmp_path: Path) -> tuple[Path, str]:
    """A git repository holding a copy of examples/reframe at the same path; its HEAD sha."""
    repo = git_repo(tmp_path / "repo")
    shutil.copytree(EXAMPLE, repo / "examples" / "reframe", ignore=shutil.ignore_patterns("__pycache__"))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                              timeout=30).stdout.strip()

    git("add", "examples")
    git("commit", "-q", "-m", "the ReFrame example")
    return repo, git("rev-parse", "HEAD")


def _gitlab_env(sandbox: object, sha: str, job_id: str, project_dir: Path) -> dict[str, str]:
    """A GitLab job's environment (the reporter writes ci-runner-junit.xml into CI_PROJECT_DIR), asking
    the example to show a failure."""
    return runner_env(sandbox, GITLAB_CI="true", CI_COMMIT_SHA=sha, CI_COMMIT_REF_NAME="main",
                      CI_REPOSITORY_URL="https://gitlab.example.org/g/p.git", CI_PIPELINE_ID="7",
                      CI_JOB_ID=job_id, CI_PROJECT_DIR=str(project_dir), REFRAME_SHOW_FAILURE="1")


def _install_lines(lines: list[str]) -> dict[str, str]:
    """entry -> 'installing' or 'reusing', from the job's own `ReFrame <version>: ...` line."""
    found = {}
    for line in lines:
        match = re.match(rf"^\[([\w.-]+)\] ReFrame {re.escape(VERSION)}: (installing into|reusing) (\S+)$", line)
        if match:
            found[match.group(1)] = match.group(2).split()[0]
    return found


def _json_results(repo: Path) -> dict[str, dict[str, str]]:
    """entry -> {check name: result} from ReFrame's JSON report, as fetched into ./ci-runner-artifacts."""
    found = {}
    for entry in ENTRIES:
        report = json.loads((repo / "ci-runner-artifacts" / entry / "reframe-report" / "report.json").read_text())
        found[entry] = {case["name"]: case["result"] for run in report["runs"] for case in run["testcases"]}
        shutil.rmtree(repo / "ci-runner-artifacts" / entry)  # the next run fetches its own
    return found


def _venv_identity(venv: Path) -> tuple[int, int, int]:
    """(inode of the venv directory, inode and mtime of its `.complete` marker): a reinstall changes them
    (`rm -rf` of the venv, a new venv, a new marker)."""
    marker = (venv / ".complete").stat()
    return venv.stat().st_ino, marker.st_ino, marker.st_mtime_ns


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_reframe_example_reports_each_check_and_reuses_its_venv(tmp_path: Path) -> None:
    repo, sha = _project(tmp_path)
    root = tmp_path / "cluster"
    root.mkdir()
    workdir = root / "ci"
    venv = workdir / ".cache" / f"reframe-venv-{VERSION}"
    durations = []
    with start_sandbox(SandboxOptions(root=root, backend="slurm", port=0)) as sandbox:
        runs = []
        for job_id in ("101", "102"):
            project_dir = tmp_path / f"project-{job_id}"
            project_dir.mkdir()
            state_file = tmp_path / f"state-{job_id}.json"
            args = ["run", "--config", CONFIG, "--state-file", str(state_file), "--requests-per-minute", "600",
                    "--workdir", str(workdir)]
            started = time.monotonic()
            code, run = run_to_end(args, repo, _gitlab_env(sandbox, sha, job_id, project_dir), sandbox, state_file,
                                   timeout=600)
            durations.append(time.monotonic() - started)
            runs.append((code, run.lines(), project_dir, _json_results(repo)))
            if job_id == "101":
                assert venv.is_dir(), run.lines()[-20:]
                first_install = _venv_identity(venv)
        second_install = _venv_identity(venv)
    print(f"ci-runner runs took {durations[0]:.0f} s and {durations[1]:.0f} s")

    for code, lines, project_dir, json_results in runs:
        assert code == 1, lines[-30:]  # ReFrame exits 1: ProductCheck failed in both entries
        report = ET.parse(project_dir / "ci-runner-junit.xml").getroot()
        cases = {(case.get("classname"), case.get("name")): case for case in report.iter("testcase")}
        for entry in ENTRIES:
            assert cases[("ci-runner", entry)].find("failure") is not None  # the entry's own verdict
            hostname = cases[(f"{entry}.{CHECK_FILE}", f"HostnameCheck @cluster:alloc+{entry}")]
            assert hostname.find("failure") is None and hostname.find("error") is None
            product = cases[(f"{entry}.{CHECK_FILE}", f"ProductCheck @cluster:alloc+{entry}")]
            failure = product.find("failure")
            assert failure is not None and failure.get("message") == FAILURE, ET.tostring(product)
            assert product.get("file") == CHECK_FILE  # GitHub annotates the check's file
            assert json_results[entry] == {"HostnameCheck": "pass", "ProductCheck": "fail"}  # kept as an artifact
        assert len(cases) == 2 + 2 * len(ENTRIES), sorted(cases)
        assert (report.get("tests"), report.get("failures")) == ("6", "4")

    first, second = (_install_lines(lines) for _, lines, _, _ in runs)
    # First run: the entries start together; one installs, the other waits on the lock and reuses.
    assert sorted(first.values()) == ["installing", "reusing"], first
    assert second == {entry: "reusing" for entry in ENTRIES}, second
    assert second_install == first_install  # the venv and its marker are the ones the first run made
    assert os.access(venv / "bin" / "reframe", os.X_OK)
