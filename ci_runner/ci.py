"""Which CI runs us, and what it tells us: commit, ref, clone URL, run id, report files.

This is the only module that reads CI environment variables (GITHUB_*, CI_*, JENKINS_URL, BUILD_*,
GIT_*). Detection order: GitHub Actions, GitLab CI, Jenkins, else `local` (the git checkout in the
current directory). Clone URLs never carry credentials: userinfo is stripped from http(s) URLs
(GitLab's `gitlab-ci-token:...@`, Jenkins' `user:token@`), passwords from any other URL.
Run ids are filesystem-safe (`[A-Za-z0-9._-]`) and unique per CI run (and per job of a run).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Mapping
from urllib.parse import urlsplit, urlunsplit

from ci_runner.errors import UsageError

Provider = Literal["github", "gitlab", "jenkins", "local"]

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 object names, full length
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]+")
_MAX_ID = 100
_URL_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCP_LIKE = re.compile(r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:(?!:|//)\S+")  # git@host:o/r.git, not helper::x
_GIT_TIMEOUT = 30.0


@dataclass(frozen=True)
class CIPaths:
    """Report files and directories the CI gives us (None when not running there)."""

    github_output: Path | None = None        # GITHUB_OUTPUT: step outputs (key=value)
    github_step_summary: Path | None = None  # GITHUB_STEP_SUMMARY: Markdown job summary
    gitlab_project_dir: Path | None = None   # CI_PROJECT_DIR: artifacts and JUnit reports must live below
    jenkins_workspace: Path | None = None    # WORKSPACE: the job's checkout


@dataclass(frozen=True)
class CIContext:
    """What the job scripts and reporters need to know about the CI run."""

    provider: Provider
    sha: str                        # full commit SHA to test
    ref: str                        # the ref as the provider names it (refs/heads/x, x, origin/x; "HEAD" if detached)
    repo_url: str                   # clone URL without credentials
    run_id: str                     # filesystem-safe, unique per CI run and job
    run_url: str | None = None      # link to the CI run/job page
    paths: CIPaths = field(default_factory=CIPaths)
    server_url: str | None = None   # https://github.com, CI_SERVER_URL, JENKINS_URL
    job_name: str | None = None     # GITHUB_JOB, CI_JOB_NAME, JOB_NAME


def detect(environ: Mapping[str, str], cwd: Path, now: datetime | None = None) -> CIContext:
    """The CI context from `environ`; `local` reads the git checkout at `cwd`.

    `now` (default: the current UTC time) only shapes the run id of local runs.
    Raises UsageError when a required variable is missing or `cwd` is not a git checkout.
    """
    found = provider(environ)
    if found == "github":
        return _github(environ)
    if found == "gitlab":
        return _gitlab(environ)
    if found == "jenkins":
        return _jenkins(environ, cwd)
    return _local(cwd, now or datetime.now(timezone.utc))


def provider(environ: Mapping[str, str]) -> Provider:
    """Which CI runs us: GitHub Actions, GitLab CI, Jenkins, else `local`. Never fails."""
    if environ.get("GITHUB_ACTIONS") == "true":
        return "github"
    if environ.get("GITLAB_CI") == "true":
        return "gitlab"
    if environ.get("JENKINS_URL") or environ.get("BUILD_TAG"):
        return "jenkins"
    return "local"


def report_paths(environ: Mapping[str, str]) -> CIPaths:
    """The report files of the CI that runs us. Never fails: it also serves to report an error
    that came before `detect` (a configuration error)."""
    found = provider(environ)
    if found == "github":
        return CIPaths(github_output=_path(environ, "GITHUB_OUTPUT"),
                       github_step_summary=_path(environ, "GITHUB_STEP_SUMMARY"))
    if found == "gitlab":
        return CIPaths(gitlab_project_dir=_path(environ, "CI_PROJECT_DIR"))
    if found == "jenkins":
        return CIPaths(jenkins_workspace=_path(environ, "WORKSPACE"))
    return CIPaths()


def _github(environ: Mapping[str, str]) -> CIContext:
    server = environ.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
    repository = _require(environ, "GITHUB_REPOSITORY", "github")
    run = _require(environ, "GITHUB_RUN_ID", "github")
    attempt = environ.get("GITHUB_RUN_ATTEMPT", "1")
    job = environ.get("GITHUB_JOB")
    run_url = f"{server}/{repository}/actions/runs/{run}"
    if "GITHUB_RUN_ATTEMPT" in environ:
        run_url += f"/attempts/{attempt}"
    # Matrix legs of one job share GITHUB_JOB; they run different entries (`run --entry`), and the
    # entry name is part of every remote path, so they stay apart.
    return CIContext(
        provider="github",
        sha=_sha(_require(environ, "GITHUB_SHA", "github"), "GITHUB_SHA"),
        ref=_require(environ, "GITHUB_REF", "github"),
        repo_url=clean_url(f"{server}/{repository}.git"),
        run_id=safe_id("-".join(p for p in ("gh", run, attempt, job) if p)),
        run_url=run_url,
        paths=report_paths(environ),
        server_url=server,
        job_name=job,
    )


def _gitlab(environ: Mapping[str, str]) -> CIContext:
    url = environ.get("CI_REPOSITORY_URL")
    if not url:
        project = _require(environ, "CI_PROJECT_URL", "gitlab")
        url = project.rstrip("/") + ".git"
    pipeline = _require(environ, "CI_PIPELINE_ID", "gitlab")
    job = _require(environ, "CI_JOB_ID", "gitlab")
    return CIContext(
        provider="gitlab",
        sha=_sha(_require(environ, "CI_COMMIT_SHA", "gitlab"), "CI_COMMIT_SHA"),
        ref=_require(environ, "CI_COMMIT_REF_NAME", "gitlab"),
        repo_url=clean_url(url),
        run_id=safe_id(f"gl-{pipeline}-{job}"),
        run_url=environ.get("CI_JOB_URL") or None,
        paths=report_paths(environ),
        server_url=environ.get("CI_SERVER_URL") or None,
        job_name=environ.get("CI_JOB_NAME") or None,
    )


def _jenkins(environ: Mapping[str, str], cwd: Path) -> CIContext:
    """Jenkins: the git plugin's GIT_* variables; whatever is missing comes from the checkout at `cwd`."""
    tag = environ.get("BUILD_TAG") or "jenkins-{}-{}".format(
        environ.get("JOB_NAME", "job"), _require(environ, "BUILD_NUMBER", "jenkins")
    )
    sha, ref, url = environ.get("GIT_COMMIT"), environ.get("GIT_BRANCH"), environ.get("GIT_URL")
    if not (sha and ref and url):
        local = _git_checkout(cwd, hint="set GIT_COMMIT, GIT_BRANCH and GIT_URL (the git plugin does)")
        sha, ref, url = sha or local.sha, ref or local.ref, url or local.repo_url
    return CIContext(
        provider="jenkins",
        sha=_sha(sha, "GIT_COMMIT"),
        ref=ref,
        repo_url=clean_url(url),
        run_id=safe_id(tag),
        run_url=environ.get("BUILD_URL") or None,
        paths=report_paths(environ),
        server_url=environ.get("JENKINS_URL") or None,
        job_name=environ.get("JOB_NAME") or None,
    )


def _local(cwd: Path, now: datetime) -> CIContext:
    checkout = _git_checkout(cwd, hint="run inside your project's git checkout")
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return CIContext(
        provider="local",
        sha=checkout.sha,
        ref=checkout.ref,
        repo_url=checkout.repo_url,
        run_id=safe_id(f"local-{stamp}-{checkout.sha[:7]}"),
    )


@dataclass(frozen=True)
class _Checkout:
    sha: str
    ref: str
    repo_url: str


def _git_checkout(cwd: Path, hint: str) -> _Checkout:
    """HEAD, its symbolic ref ("HEAD" if detached) and origin's URL (else the checkout as a file URL)."""
    sha = _git(cwd, "rev-parse", "--verify", "HEAD^{commit}")
    if sha is None:
        raise UsageError(f"not a git repository with a commit: {cwd} ({hint})")
    ref = _git(cwd, "symbolic-ref", "-q", "HEAD") or "HEAD"
    url = _git(cwd, "config", "--get", "remote.origin.url")
    top = Path(_git(cwd, "rev-parse", "--show-toplevel") or str(cwd))
    if not url:
        url = top.resolve().as_uri()
    elif "://" not in url and not _SCP_LIKE.fullmatch(url):
        url = (top / url).resolve().as_uri()  # origin is a local path (a clone of a clone): git resolves it from the top
    return _Checkout(sha=_sha(sha, "git rev-parse HEAD"), ref=ref, repo_url=clean_url(url))


def git_argv(repo: Path) -> list[str]:
    """The start of every git command ci-runner runs in the checkout `repo`.

    CI checkouts are often owned by another uid than the one running ci-runner (a container image's
    user and the runner's clone), and git then refuses the repository ("detected dubious ownership",
    its safe.directory check). ci-runner was pointed at this checkout to read it, so it trusts exactly
    this directory, for its own calls only (`-c safe.directory=`; nothing is written to any config).
    """
    return ["git", "-c", f"safe.directory={repo.resolve()}", "-C", str(repo)]


def _git(cwd: Path, *args: str) -> str | None:
    """stdout of `git args` in `cwd`, stripped; None if git fails or is missing."""
    try:
        done = subprocess.run(
            [*git_argv(cwd), *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT, check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
        )
    except FileNotFoundError as error:
        if error.filename == "git":
            raise UsageError("git is not installed (needed to read the local checkout)") from error
        return None
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def clean_url(url: str) -> str:
    """`url` without credentials; UsageError if it is not a git URL we can hand to `git fetch`.

    http(s): all userinfo goes (a user name there is often a token). Other schemes keep the
    user name (ssh://git@host) and drop a password. scp-like `user@host:path` has no password.
    """
    url = url.strip()
    if not url or url.startswith("-") or any(c.isspace() or ord(c) < 32 for c in url):
        raise UsageError(f"unusable repository URL {url!r}")
    if _SCP_LIKE.fullmatch(url) and "://" not in url:
        return url
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as error:
        raise UsageError(f"unusable repository URL {url!r}: {error}") from error
    if parts.scheme not in _URL_SCHEMES:
        raise UsageError(
            f"repository URL scheme {parts.scheme or '(none)'!r} not supported; use one of {', '.join(_URL_SCHEMES)}"
        )
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    if parts.username and parts.scheme not in ("http", "https"):
        host = f"{parts.username}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def safe_id(text: str) -> str:
    """`text` if it is a safe, short id; else a sanitized form with a hash of the original (no collisions)."""
    if _SAFE_ID.fullmatch(text) and len(text) <= _MAX_ID and text not in (".", ".."):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[: _MAX_ID - 11]
    return f"{cleaned}-{digest}" if cleaned else digest


def _sha(value: str, source: str) -> str:
    value = value.strip().lower()
    if not _SHA.fullmatch(value):
        raise UsageError(f"{source}: {value!r} is not a full commit SHA")
    return value


def _require(environ: Mapping[str, str], name: str, provider: str) -> str:
    value = environ.get(name)
    if not value:
        raise UsageError(f"{name} is not set although this looks like {provider} CI; is the job environment complete?")
    return value


def _path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name)
    return Path(value) if value else None
