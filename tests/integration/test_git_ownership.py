"""A checkout owned by another uid (the runner image's user is not the one that cloned): git refuses
such a repository by default (safe.directory); ci-runner's own git calls trust the checkout they were
pointed at, so `ci-runner run` reads it. Needs root to hand the checkout to another uid."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers.checkouts import git_checkout

from ci_runner import ci, source_archive

OTHER_UID = 54321


@pytest.fixture
def foreign_checkout(tmp_path: Path) -> tuple[Path, str]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root (see .ci/run); this test needs it to chown the checkout")
        pytest.skip("needs root to give the checkout to another uid")
    repo = tmp_path / "checkout"
    repo.mkdir()
    (repo / "a.txt").write_text("a\n")
    sha = git_checkout(repo)
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, OTHER_UID, OTHER_UID)
    refused = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             env={**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"})
    assert refused.returncode != 0 and "dubious ownership" in refused.stderr  # what plain git does here
    return repo, sha


def test_a_checkout_of_another_uid_is_read(foreign_checkout: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo, sha = foreign_checkout
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")  # no safe.directory of this machine's own
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    context = ci.detect({}, repo, now=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert context.sha == sha and context.provider == "local"
    archive = source_archive.source_archive(repo, sha)
    assert archive.sha == sha and archive.data and not archive.dirty
