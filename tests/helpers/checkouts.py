"""Git checkouts for tests that need a project as a user has it."""

from __future__ import annotations

import subprocess
from pathlib import Path

GIT = ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci"]


def git_checkout(path: Path, *, origin: str | None = None, tag: str | None = None) -> str:
    """Make `path` (created when missing) a git repository on `main` with one commit of all its files,
    with remote `origin` and tag `tag` when given; returns the commit's SHA."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run([*GIT, "-C", str(path), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(path), "commit", "-q", "--allow-empty", "-m", "example"], check=True)
    if origin:
        subprocess.run(["git", "-C", str(path), "remote", "add", "origin", origin], check=True)
    if tag:
        subprocess.run([*GIT, "-C", str(path), "tag", tag], check=True)
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
