"""CI detection: simulated GitHub/GitLab/Jenkins environments, and real git repos for `local`."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ci_runner.ci import CIPaths, clean_url, detect, safe_id
from ci_runner.errors import UsageError

SHA = "0123456789abcdef0123456789abcdef01234567"
SAFE_ID = re.compile(r"[A-Za-z0-9._-]+")


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, capture_output=True, text=True, check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    (path / "f").write_text("x\n")
    git(path, "add", "f")
    git(path, "commit", "-q", "-m", "one")
    return path


def test_github(tmp_path: Path) -> None:
    environ = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_SHA": SHA,
        "GITHUB_REF": "refs/pull/7/merge",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "eth-cscs/ci-runner",
        "GITHUB_RUN_ID": "987654",
        "GITHUB_RUN_ATTEMPT": "2",
        "GITHUB_JOB": "tests",
        "GITHUB_OUTPUT": "/home/runner/_temp/out",
        "GITHUB_STEP_SUMMARY": "/home/runner/_temp/summary",
        "GITLAB_CI": "true",  # GitHub wins: checked first
    }
    ci = detect(environ, tmp_path)
    assert ci.provider == "github"
    assert ci.sha == SHA
    assert ci.ref == "refs/pull/7/merge"
    assert ci.repo_url == "https://github.com/eth-cscs/ci-runner.git"
    assert ci.run_id == "gh-987654-2-tests"
    assert ci.run_url == "https://github.com/eth-cscs/ci-runner/actions/runs/987654/attempts/2"
    assert ci.paths == CIPaths(
        github_output=Path("/home/runner/_temp/out"), github_step_summary=Path("/home/runner/_temp/summary")
    )
    assert ci.job_name == "tests"


def test_github_enterprise_and_odd_job_name(tmp_path: Path) -> None:
    environ = {
        "GITHUB_ACTIONS": "true", "GITHUB_SHA": SHA, "GITHUB_REF": "refs/heads/main",
        "GITHUB_SERVER_URL": "https://ghe.example.org/", "GITHUB_REPOSITORY": "o/r",
        "GITHUB_RUN_ID": "1", "GITHUB_JOB": "test (gcc, 4)",
    }
    ci = detect(environ, tmp_path)
    assert ci.repo_url == "https://ghe.example.org/o/r.git"
    assert ci.run_url == "https://ghe.example.org/o/r/actions/runs/1"
    assert SAFE_ID.fullmatch(ci.run_id) and ci.run_id.startswith("gh-1-1-test-gcc-4")


def test_github_missing_sha_is_a_usage_error(tmp_path: Path) -> None:
    environ = {"GITHUB_ACTIONS": "true", "GITHUB_REF": "x", "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "1"}
    with pytest.raises(UsageError, match="GITHUB_SHA is not set"):
        detect(environ, tmp_path)


def test_gitlab_strips_job_token(tmp_path: Path) -> None:
    environ = {
        "GITLAB_CI": "true",
        "CI_COMMIT_SHA": SHA,
        "CI_COMMIT_REF_NAME": "feature/x",
        "CI_REPOSITORY_URL": "https://gitlab-ci-token:glcbt-SECRET123@gitlab.example.org:8443/grp/proj.git",
        "CI_PIPELINE_ID": "555",
        "CI_JOB_ID": "9001",
        "CI_JOB_URL": "https://gitlab.example.org/grp/proj/-/jobs/9001",
        "CI_PROJECT_DIR": "/builds/grp/proj",
        "CI_SERVER_URL": "https://gitlab.example.org",
        "CI_JOB_NAME": "hpc tests",
    }
    ci = detect(environ, tmp_path)
    assert ci.provider == "gitlab"
    assert ci.repo_url == "https://gitlab.example.org:8443/grp/proj.git"
    assert "SECRET" not in repr(ci) and "gitlab-ci-token" not in repr(ci)
    assert (ci.sha, ci.ref, ci.run_id) == (SHA, "feature/x", "gl-555-9001")
    assert ci.run_url == "https://gitlab.example.org/grp/proj/-/jobs/9001"
    assert ci.paths.gitlab_project_dir == Path("/builds/grp/proj")


def test_jenkins_with_git_plugin_variables(tmp_path: Path) -> None:
    environ = {
        "JENKINS_URL": "https://jenkins.example.org/",
        "BUILD_TAG": "jenkins-team-proj-PR 12-34",
        "BUILD_URL": "https://jenkins.example.org/job/proj/34/",
        "GIT_COMMIT": SHA.upper(),
        "GIT_BRANCH": "origin/main",
        "GIT_URL": "https://builder:api-token-XYZ@git.example.org/proj.git",
        "WORKSPACE": "/var/jenkins/ws/proj",
        "JOB_NAME": "team/proj",
    }
    ci = detect(environ, tmp_path)
    assert ci.provider == "jenkins"
    assert ci.sha == SHA
    assert ci.ref == "origin/main"
    assert ci.repo_url == "https://git.example.org/proj.git"
    assert "XYZ" not in repr(ci)
    assert SAFE_ID.fullmatch(ci.run_id) and ci.run_id.startswith("jenkins-team-proj-PR-12-34-")
    assert ci.run_url == "https://jenkins.example.org/job/proj/34/"
    assert ci.paths.jenkins_workspace == Path("/var/jenkins/ws/proj")


def test_jenkins_without_git_variables_reads_the_workspace(repo: Path) -> None:
    ci = detect({"BUILD_TAG": "jenkins-p-3"}, repo)
    assert ci.provider == "jenkins"
    assert ci.sha == git(repo, "rev-parse", "HEAD")
    assert ci.ref == "refs/heads/main"
    assert ci.repo_url == repo.resolve().as_uri()
    assert ci.run_id == "jenkins-p-3"


def test_local_repo_with_origin(repo: Path) -> None:
    git(repo, "remote", "add", "origin", "https://user:hunter2@example.org/o/r.git")
    git(repo, "checkout", "-q", "-b", "topic")
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    ci = detect({}, repo, now=now)
    sha = git(repo, "rev-parse", "HEAD")
    assert ci.provider == "local"
    assert ci.sha == sha
    assert ci.ref == "refs/heads/topic"
    assert ci.repo_url == "https://example.org/o/r.git"
    assert ci.run_id == f"local-20240506T070809-{sha[:7]}"
    assert ci.run_url is None and ci.paths == CIPaths()


def test_local_detached_head_without_remote_uses_file_url(repo: Path) -> None:
    git(repo, "checkout", "-q", "--detach")
    ci = detect({}, repo / ".")
    assert ci.ref == "HEAD"
    assert ci.repo_url == repo.resolve().as_uri()


def test_local_outside_git_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # in case /tmp lies inside a repo
    with pytest.raises(UsageError, match="not a git repository"):
        detect({}, plain)


def test_local_repo_without_commits_is_a_usage_error(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    with pytest.raises(UsageError, match="not a git repository with a commit"):
        detect({}, tmp_path)


@pytest.mark.parametrize(
    "url, clean",
    [
        ("https://gitlab-ci-token:abc@gitlab.com/g/p.git", "https://gitlab.com/g/p.git"),
        ("https://ghp_token@github.com/o/r.git", "https://github.com/o/r.git"),
        ("http://u:p@[::1]:8080/r.git", "http://[::1]:8080/r.git"),
        ("ssh://git:pw@host:2222/r.git", "ssh://git@host:2222/r.git"),
        ("ssh://git@host/r.git", "ssh://git@host/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("file:///srv/repo", "file:///srv/repo"),
        ("https://example.org/r.git#frag", "https://example.org/r.git"),
    ],
)
def test_clean_url(url: str, clean: str) -> None:
    assert clean_url(url) == clean


@pytest.mark.parametrize(
    "url", ["", "-uhelp", "ext::sh -c touch% /tmp/x", "ext::sh", "https://h/r .git", "https://h/r\n.git", "ftp://h/r", "/just/a/path"]
)
def test_unusable_urls_are_rejected(url: str) -> None:
    with pytest.raises(UsageError):
        clean_url(url)


def test_safe_id_keeps_safe_ids_and_disambiguates_others() -> None:
    assert safe_id("gh-1-2-build") == "gh-1-2-build"
    a, b = safe_id("job a/b"), safe_id("job a b")
    assert a != b and SAFE_ID.fullmatch(a) and SAFE_ID.fullmatch(b)
    assert len(safe_id("x" * 500)) <= 100
    assert safe_id("..") not in (".", "..")


def test_local_clone_of_a_local_path_uses_its_file_url(repo: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    ci = detect({}, clone)
    assert ci.repo_url == repo.resolve().as_uri()
