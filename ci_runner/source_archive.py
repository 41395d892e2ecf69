"""The source of `checkout: upload`: a `git archive` of the exact commit (never the working tree)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ci_runner.ci import git_argv
from ci_runner.errors import InfraError, UsageError


@dataclass(frozen=True)
class SourceArchive:
    """A gzipped tar of one commit. `dirty`: the local tree had uncommitted changes (not included)."""

    sha: str
    data: bytes
    dirty: bool


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([*git_argv(repo), *args], capture_output=True, timeout=300, check=False)
    except FileNotFoundError as error:
        raise UsageError("checkout: upload needs `git` on PATH") from error
    except subprocess.TimeoutExpired as error:
        raise InfraError(f"git {args[0]} took longer than 300 s in {repo}") from error


def source_archive(repo: Path, sha: str) -> SourceArchive:
    """`git archive --format=tar.gz <sha>` of `repo`: exactly the commit, whatever the working tree holds.

    A checkout that cannot be read (the commit is missing from a shallow clone, the directory is not
    a repository, git refuses it) is an InfraError: the CI's checkout failed, not the configuration.
    """
    result = _git(repo, "archive", "--format=tar.gz", sha)
    if result.returncode != 0:
        lines = [line for line in result.stderr.decode("utf-8", "replace").strip().splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith("fatal:")), lines[-1] if lines else "git failed")
        raise InfraError(
            f"checkout: upload: cannot read commit {sha} from the checkout {repo}: {reason} (is the CI's "
            "checkout complete, e.g. not too shallow for this commit?)"
        )
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return SourceArchive(sha=sha, data=result.stdout, dirty=bool(status.stdout.strip()))
