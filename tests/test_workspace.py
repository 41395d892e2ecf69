"""workspace: the source archive of a real git repo, artifact selection (globs, symlink confinement),
and preparing an entry directory over real HTTP against the sandbox."""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from ci_runner import workspace
from ci_runner.errors import InfraError, UsageError
from ci_runner.workspace import RemoteFile, SourceArchive, plan_artifacts


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.email", "ci@example.org")
    _git(path, "config", "user.name", "ci")
    (path / "src").mkdir()
    (path / "src" / "a.txt").write_text("committed\n")
    _git(path, "add", ".")
    _git(path, "commit", "-q", "-m", "one")
    return path


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_archive_is_exactly_the_commit_even_with_a_dirty_tree(repo: Path) -> None:
    sha = _git(repo, "rev-parse", "HEAD")
    clean = workspace.source_archive(repo, sha)
    assert not clean.dirty
    (repo / "src" / "a.txt").write_text("changed, not committed\n")
    (repo / "untracked.txt").write_text("new\n")
    dirty = workspace.source_archive(repo, sha)
    assert dirty.dirty
    assert _members(dirty.data) == {"src/a.txt": b"committed\n"}


def test_archive_of_an_unknown_commit_is_an_infrastructure_error(repo: Path) -> None:
    """The CI's checkout lacks the commit (a shallow clone): not the configuration's fault."""
    with pytest.raises(InfraError, match="cannot read commit 0{40} from the checkout .*: fatal: "):
        workspace.source_archive(repo, "0" * 40)


def test_oversized_archive_is_refused_with_advice() -> None:
    big = SourceArchive(sha="a" * 40, data=b"x" * (workspace.MAX_DIRECT_UPLOAD + 1), dirty=False)
    with pytest.raises(UsageError, match="checkout: clone"):
        workspace.check_uploadable(big)
    small = SourceArchive(sha="a" * 40, data=b"x" * 1000, dirty=False)
    workspace.check_uploadable(small)
    with pytest.raises(UsageError, match="only below 1000 bytes on this system"):
        workspace.check_uploadable(small, output_cap=1000)  # a site with a smaller max_ops_file_size
    workspace.check_uploadable(small, output_cap=1001)


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("results/*.xml", "results/a.xml", True),
        ("results/*.xml", "results/sub/a.xml", False),
        ("results/**/*.xml", "results/a.xml", True),
        ("results/**/*.xml", "results/x/y/a.xml", True),
        ("**/junit-?.xml", "deep/er/junit-1.xml", True),
        ("*.[ch]", "main.c", True),
        ("*.[!ch]", "main.c", False),
        ("./out.txt", "out.txt", True),
        ("a+b(1).txt", "a+b(1).txt", True),
    ],
)
def test_glob_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(workspace.glob_regex(pattern.removeprefix("./")).fullmatch(path)) is matches


ROOT = "/scratch/run/entry/src"


def test_plan_refuses_links_out_of_the_checkout_and_follows_links_inside() -> None:
    listing = [
        RemoteFile("results", "dir"),
        RemoteFile("results/ok.xml", "file", 10),
        RemoteFile("results/inside.xml", "link", link_target="ok.xml"),
        RemoteFile("results/chain.xml", "link", link_target="inside.xml"),
        RemoteFile("results/passwd.xml", "link", link_target="/etc/passwd"),
        RemoteFile("results/up.xml", "link", link_target="../../../../../etc/shadow"),
        RemoteFile("results/escape-chain.xml", "link", link_target="passwd.xml"),
        RemoteFile("results/dangling.xml", "link", link_target="missing.xml"),
        RemoteFile("results/loop.xml", "link", link_target="loop.xml"),
        RemoteFile("results/huge.xml", "file", workspace.MAX_DIRECT_DOWNLOAD + 1),
        RemoteFile("results/other.txt", "file", 1),
    ]
    plan = plan_artifacts(ROOT, listing, ["results/*.xml"])
    assert plan.files == ("results/chain.xml", "results/inside.xml", "results/ok.xml")
    refused = dict(plan.refused)
    assert set(refused) == {"results/passwd.xml", "results/up.xml", "results/escape-chain.xml",
                            "results/dangling.xml", "results/loop.xml", "results/huge.xml"}
    assert "outside the checkout" in refused["results/passwd.xml"]
    assert "bytes" in refused["results/huge.xml"]


def test_plan_refuses_path_tricks_in_names() -> None:
    listing = [RemoteFile("../x.xml", "file", 1), RemoteFile("a//b.xml", "file", 1)]
    plan = plan_artifacts(ROOT, listing, ["**"])
    assert plan.files == ()
    assert len(plan.refused) == 2


def test_remote_files_from_the_api_listing() -> None:
    listing = [
        {"name": "results", "type": "d", "linkTarget": None, "size": "4096"},
        {"name": "results/a.xml", "type": "-", "linkTarget": None, "size": "12"},
        {"name": "results/l.xml", "type": "l", "linkTarget": "/etc/passwd", "size": "11"},
    ]
    assert workspace.remote_files(listing) == [
        RemoteFile("results", "dir", 4096), RemoteFile("results/a.xml", "file", 12),
        RemoteFile("results/l.xml", "link", 11, "/etc/passwd"),
    ]


def test_local_destination_stays_inside(tmp_path: Path) -> None:
    base = tmp_path / "artifacts" / "entry"
    assert workspace.local_destination(base, "results/a.xml") == (base / "results" / "a.xml").resolve()
    with pytest.raises(InfraError):
        workspace.local_destination(base, "../../evil")
    base.mkdir(parents=True)
    (base / "link").symlink_to(tmp_path)  # a local symlink planted in the destination
    with pytest.raises(InfraError):
        workspace.local_destination(base, "link/evil")


def test_prepare_run_creates_the_output_dir_and_uploads_the_archive_once(repo: Path, tmp_path: Path) -> None:
    """Over real HTTP: one mkdir of <run>/output, then one upload of the archive at the run's
    layout.archive, whatever the number of entries; cleanup removes one entry's directory."""
    from ci_runner.budget import RequestBudget
    from ci_runner.cluster import Cluster, Credentials
    from ci_runner.layout import entry_layout
    from ci_runner.sandbox.server import SandboxOptions, start_sandbox

    root = tmp_path / "cluster"
    root.mkdir()
    archive = workspace.source_archive(repo, _git(repo, "rev-parse", "HEAD"))
    with start_sandbox(SandboxOptions(root=root, backend="local", port=0)) as sandbox:
        layout = entry_layout(f"{root}/ci", "run-1", "gcc-1")

        async def go() -> None:
            async with Cluster(Credentials.from_env(sandbox.env()), budget=RequestBudget(600)) as cluster:
                await workspace.prepare_run(cluster, layout.run, archive)
                assert {k: v for k, v in sandbox.request_log.counts.items() if "/filesystem/" in k} == {
                    "POST /filesystem/{system_name}/ops/mkdir": 1, "POST /filesystem/{system_name}/ops/upload": 1}
                await workspace.prepare_run(cluster, layout.run, None)  # again: idempotent, nothing uploaded
                Path(layout.src).mkdir(parents=True)  # what the job does
                await workspace.cleanup(cluster, layout)
                assert not Path(layout.root).exists()

        asyncio.run(go())
        assert Path(layout.working_dir).is_dir()
        assert Path(layout.archive).read_bytes() == archive.data
