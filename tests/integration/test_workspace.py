"""workspace: the source archive of a real git repo, artifact selection (globs, symlink confinement),
and preparing an entry directory over real HTTP against the sandbox."""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from ci_runner import transfer, workspace
from ci_runner.config_defaults import DEFAULT_MAX_ARTIFACT_SIZE
from ci_runner.errors import InfraError, UsageError
from ci_runner.artifact_selection import ListedFile, glob_regex, listed_files, local_destination, plan_artifacts
from ci_runner.source_archive import SourceArchive, source_archive


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
    clean = source_archive(repo, sha)
    assert not clean.dirty
    (repo / "src" / "a.txt").write_text("changed, not committed\n")
    (repo / "untracked.txt").write_text("new\n")
    dirty = source_archive(repo, sha)
    assert dirty.dirty
    assert _members(dirty.data) == {"src/a.txt": b"committed\n"}


def test_archive_of_an_unknown_commit_is_an_infrastructure_error(repo: Path) -> None:
    """The CI's checkout lacks the commit (a shallow clone): not the configuration's fault."""
    with pytest.raises(InfraError, match="cannot read commit 0{40} from the checkout .*: fatal: "):
        source_archive(repo, "0" * 40)


def test_archive_of_any_size_is_planned_in_parts_that_fit_one_upload() -> None:
    """An archive over the cap (refused before issue 14) becomes parts of at most cap - 1 bytes whose
    concatenation is the archive; the cache name carries the commit and the archive's sha256."""
    import hashlib

    from ci_runner.layout import run_layout
    from ci_runner.transfer import plan_source

    data = bytes(range(256)) * 40  # 10240 bytes
    archive = SourceArchive(sha="a" * 40, data=data, dirty=False)
    plan = plan_source(archive, run_layout("/w", "run-1"), output_cap=1000)
    assert [part.size for part in plan.parts] == [999] * 10 + [250]
    assert b"".join(data[p.offset:p.offset + p.size] for p in plan.parts) == data
    assert [part.name for part in plan.parts][:2] == ["source.tar.gz.part000", "source.tar.gz.part001"]
    assert all(p.sha256 == hashlib.sha256(data[p.offset:p.offset + p.size]).hexdigest() for p in plan.parts)
    assert plan.cached == f"/w/sources/{'a' * 40}-{hashlib.sha256(data).hexdigest()[:16]}.tar.gz"
    assert len(plan_source(archive, run_layout("/w", "run-1"), output_cap=5 * 1024 * 1024).parts) == 1
    with pytest.raises(UsageError, match="checkout: clone"):  # more than 999 parts
        plan_source(SourceArchive("a" * 40, b"x" * 10_000, False), run_layout("/w", "r"), output_cap=10)
    with pytest.raises(UsageError, match="reserved for the source cache"):
        run_layout("/w", "sources")


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
    assert bool(glob_regex(pattern.removeprefix("./")).fullmatch(path)) is matches


ROOT = "/scratch/run/entry/src"


def test_plan_refuses_links_out_of_the_checkout_and_follows_links_inside() -> None:
    listing = [
        ListedFile("results", "dir"),
        ListedFile("results/ok.xml", "file", 10),
        ListedFile("results/inside.xml", "link", link_target="ok.xml"),
        ListedFile("results/chain.xml", "link", link_target="inside.xml"),
        ListedFile("results/passwd.xml", "link", link_target="/etc/passwd"),
        ListedFile("results/up.xml", "link", link_target="../../../../../etc/shadow"),
        ListedFile("results/escape-chain.xml", "link", link_target="passwd.xml"),
        ListedFile("results/dangling.xml", "link", link_target="missing.xml"),
        ListedFile("results/loop.xml", "link", link_target="loop.xml"),
        ListedFile("results/big.xml", "file", transfer.MAX_DIRECT_DOWNLOAD + 1),  # fetched in parts
        ListedFile("results/huge.xml", "file", DEFAULT_MAX_ARTIFACT_SIZE + 1),
        ListedFile("results/other.txt", "file", 1),
    ]
    plan = plan_artifacts(ROOT, listing, ["results/*.xml"])
    assert plan.files == ("results/big.xml", "results/chain.xml", "results/inside.xml", "results/ok.xml")
    assert plan.sizes == {"results/big.xml": transfer.MAX_DIRECT_DOWNLOAD + 1, "results/chain.xml": 10,
                          "results/inside.xml": 10, "results/ok.xml": 10}
    refused = dict(plan.refused)
    assert set(refused) == {"results/passwd.xml", "results/up.xml", "results/escape-chain.xml",
                            "results/dangling.xml", "results/loop.xml", "results/huge.xml"}
    assert "outside the checkout" in refused["results/passwd.xml"]
    assert "over max_artifact_size (256 MiB)" in refused["results/huge.xml"]
    assert "results/big.xml" in plan_artifacts(ROOT, listing, ["results/*.xml"], max_size=4 * 1024 * 1024).files
    assert "results/big.xml" in dict(plan_artifacts(ROOT, listing, ["results/*.xml"], max_size=1024).refused)


def test_plan_refuses_path_tricks_in_names() -> None:
    listing = [ListedFile("../x.xml", "file", 1), ListedFile("a//b.xml", "file", 1)]
    plan = plan_artifacts(ROOT, listing, ["**"])
    assert plan.files == ()
    assert len(plan.refused) == 2


def test_remote_files_from_the_api_listing() -> None:
    listing = [
        {"name": "results", "type": "d", "linkTarget": None, "size": "4096"},
        {"name": "results/a.xml", "type": "-", "linkTarget": None, "size": "12"},
        {"name": "results/l.xml", "type": "l", "linkTarget": "/etc/passwd", "size": "11"},
    ]
    assert listed_files(listing) == [
        ListedFile("results", "dir", 4096), ListedFile("results/a.xml", "file", 12),
        ListedFile("results/l.xml", "link", 11, "/etc/passwd"),
    ]


def test_local_destination_stays_inside(tmp_path: Path) -> None:
    base = tmp_path / "artifacts" / "entry"
    assert local_destination(base, "results/a.xml") == (base / "results" / "a.xml").resolve()
    with pytest.raises(InfraError):
        local_destination(base, "../../evil")
    base.mkdir(parents=True)
    (base / "link").symlink_to(tmp_path)  # a local symlink planted in the destination
    with pytest.raises(InfraError):
        local_destination(base, "link/evil")


def test_an_archive_of_one_part_is_uploaded_without_a_look_into_the_cache(repo: Path, tmp_path: Path) -> None:
    """One part: the upload costs the one request a `stat` would, so there is no `stat` (a cache miss
    costs one request, not two; a hit still one)."""
    from ci_runner.budget import RequestBudget
    from ci_runner.cluster import Cluster
    from ci_runner.credentials import Credentials
    from ci_runner.layout import entry_layout
    from ci_runner.sandbox.server import SandboxOptions, start_sandbox
    from ci_runner.transfer import plan_source

    root = tmp_path / "cluster"
    root.mkdir()
    archive = source_archive(repo, _git(repo, "rev-parse", "HEAD"))
    with start_sandbox(SandboxOptions(root=root, backend="local", port=0)) as sandbox:
        layout = entry_layout(f"{root}/ci", "run-1", "gcc-1")
        plan = plan_source(archive, layout.run, 5 * 1024 * 1024)
        assert len(plan.parts) == 1

        async def go() -> None:
            async with Cluster(Credentials.from_env(sandbox.env()), budget=RequestBudget(600)) as cluster:
                await workspace.prepare_run(cluster, layout.run, plan, lambda message: None)

        asyncio.run(go())
        counts = {k.rsplit("/", 1)[1]: v for k, v in sandbox.request_log.counts.items() if "/filesystem/" in k}
    assert counts == {"mkdir": 1, "upload": 1}
    assert Path(plan.parts[0].path).read_bytes() == archive.data


def test_prepare_run_creates_the_output_dir_and_uploads_the_parts_once(repo: Path, tmp_path: Path) -> None:
    """Over real HTTP: one mkdir of <run>/output, one stat of the source cache, one upload per part
    (the parts together are the archive), whatever the number of entries; once the archive is in the
    cache the stat finds it and nothing is uploaded; cleanup removes one entry's directory."""
    from ci_runner.budget import RequestBudget
    from ci_runner.cluster import Cluster
    from ci_runner.credentials import Credentials
    from ci_runner.layout import entry_layout
    from ci_runner.sandbox.server import SandboxOptions, start_sandbox
    from ci_runner.transfer import plan_source

    root = tmp_path / "cluster"
    root.mkdir()
    (repo / "noise.bin").write_bytes(__import__("os").urandom(5000))
    _git(repo, "add", "noise.bin")
    _git(repo, "commit", "-q", "-m", "noise")
    archive = source_archive(repo, _git(repo, "rev-parse", "HEAD"))
    with start_sandbox(SandboxOptions(root=root, backend="local", port=0, max_ops_size=2048)) as sandbox:
        layout = entry_layout(f"{root}/ci", "run-1", "gcc-1")
        plan = plan_source(archive, layout.run, 2048)
        assert len(plan.parts) >= 3
        said: list[str] = []

        def fs_counts() -> dict[str, int]:
            return {k.rsplit("/", 1)[1]: v for k, v in sandbox.request_log.counts.items() if "/filesystem/" in k}

        async def go() -> None:
            async with Cluster(Credentials.from_env(sandbox.env()), budget=RequestBudget(600)) as cluster:
                await workspace.prepare_run(cluster, layout.run, plan, said.append)
                assert fs_counts() == {"mkdir": 1, "stat": 1, "upload": len(plan.parts)}
                assert f"{len(plan.parts)} parts" in said[-1] and f"{len(archive.data)} bytes" in said[-1]
                joined = b"".join(Path(part.path).read_bytes() for part in plan.parts)
                assert joined == archive.data
                Path(plan.cached).parent.mkdir(parents=True)
                Path(plan.cached).write_bytes(joined)  # what the first job does
                sandbox.request_log.reset()
                await workspace.prepare_run(cluster, layout.run, plan, said.append)
                assert fs_counts() == {"mkdir": 1, "stat": 1}
                assert "nothing uploaded" in said[-1]
                Path(layout.src).mkdir(parents=True)  # what the job does
                await workspace.cleanup(cluster, layout)
                assert not Path(layout.root).exists()

        asyncio.run(go())
        assert Path(layout.working_dir).is_dir()
