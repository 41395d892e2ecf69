"""Sources and artifacts larger than one FirecREST request (issue 14), end to end: a real git repo,
the sandbox with a 1 MiB `max_ops_file_size` over real HTTP (local backend), ci-runner as a subprocess.

The 20 MiB source archive goes up in parts that each fit one direct upload, is joined and verified by
the job into the per-commit cache, and a second run of the same commit uploads nothing; a damaged
part fails as infrastructure naming the part; a 12 MiB binary artifact comes back in parts, exact;
two runs of the same commit started at once both pass and leave one complete cached archive.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.run_process import cancel_jobs, ci_runner, git_repo, recorded_jobs, run_to_end, runner_env

from ci_runner.sandbox.faults import Faults
from ci_runner.sandbox.server import SandboxOptions, start_sandbox
from ci_runner.transfer import upload_part_size

CAP = 1024 * 1024
UPLOAD = "/filesystem/{system_name}/ops/upload"
DOWNLOAD = "/filesystem/{system_name}/ops/download"
SOURCE_MIB = 20

CONFIG = """\
version: 1
system: local
checkout: upload
sbatch:
  time: 5m
script: |
  sha256sum data/*.bin
{extra}"""


def _big_repo(path: Path) -> tuple[Path, dict[str, str]]:
    """A repository with SOURCE_MIB MiB of incompressible files; their sha256 by name."""
    repo = git_repo(path)
    (repo / "data").mkdir()
    sums = {}
    for index in range(SOURCE_MIB // 4):
        content = os.urandom(4 * 1024 * 1024)
        (repo / "data" / f"blob{index}.bin").write_bytes(content)
        sums[f"data/blob{index}.bin"] = hashlib.sha256(content).hexdigest()
    subprocess.run(["git", "-C", str(repo), "add", "data"], check=True, timeout=60)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "big"], check=True, timeout=60)
    return repo, sums


def _sums_in(lines: list[str]) -> dict[str, str]:
    """`sha256sum` lines the job printed (`<hex>  data/x.bin`), possibly prefixed `[entry] `."""
    found = {}
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[-1].startswith("data/") and len(words[-2]) == 64:
            found[words[-1]] = words[-2]
    return found


def _run(repo: Path, tmp_path: Path, sandbox: Any, name: str, extra: str = "",
         timeout: float = 300) -> tuple[int, list[str]]:
    return _run_config(repo, tmp_path, sandbox, name, CONFIG.format(extra=extra), timeout)


def _run_config(repo: Path, tmp_path: Path, sandbox: Any, name: str, text: str,
                timeout: float = 300) -> tuple[int, list[str]]:
    """`ci-runner run` of the configuration `text` (as `<name>.yml`) to its end; exit code and lines."""
    config = tmp_path / f"{name}.yml"
    config.write_text(text)
    state_file = tmp_path / f"{name}.json"
    args = ["run", "--config", str(config), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci"]
    code, run = run_to_end(args, repo, runner_env(sandbox), sandbox, state_file, timeout=timeout)
    return code, run.lines()


def _cache(sandbox: Any) -> list[str]:
    sources = sandbox.root / "ci" / "sources"
    return sorted(p.name for p in sources.iterdir()) if sources.is_dir() else []


def test_a_20_mib_source_goes_up_in_parts_once_and_a_rerun_uploads_nothing(tmp_path: Path) -> None:
    repo, sums = _big_repo(tmp_path / "repo")
    with start_sandbox(SandboxOptions(root=tmp_path / "cluster", backend="local", port=0,
                                      max_ops_size=CAP)) as sandbox:
        code, lines = _run(repo, tmp_path, sandbox, "first")
        assert code == 0, lines[-20:]
        assert _sums_in(lines) == sums  # the job saw byte-identical files
        first_uploads = sandbox.request_log.count("POST", UPLOAD)
        archive_size = sum(p.stat().st_size for p in (sandbox.root / "ci" / "sources").glob("*.tar.gz"))
        expected_parts = -(-archive_size // upload_part_size(CAP))
        assert archive_size > SOURCE_MIB * 1024 * 1024 and first_uploads == expected_parts >= 20
        assert any(f"uploaded in {expected_parts} parts" in line and f"{archive_size} bytes" in line
                   for line in lines), lines[:10]
        assert len(_cache(sandbox)) == 2  # <sha>-<sha256>.tar.gz and its .sha256, no temporary file
        assert not list((sandbox.root / "ci").glob("*/source.tar.gz.part*"))  # the job removed the parts

        sandbox.request_log.reset()
        code, lines = _run(repo, tmp_path, sandbox, "second")
        assert code == 0, lines[-20:]
        assert _sums_in(lines) == sums
        assert sandbox.request_log.count("POST", UPLOAD) == 0
        assert any("found in the cluster's cache" in line and "nothing uploaded" in line for line in lines)
        print(f"upload requests: first run {first_uploads}, second run 0")


def test_a_corrupted_part_is_an_infrastructure_failure_naming_the_part(tmp_path: Path) -> None:
    repo, _ = _big_repo(tmp_path / "repo")
    faults = Faults(corrupt_uploads=("source.tar.gz.part003",))
    with start_sandbox(SandboxOptions(root=tmp_path / "cluster", backend="local", port=0, max_ops_size=CAP,
                                      faults=faults)) as sandbox:
        code, lines = _run(repo, tmp_path, sandbox, "corrupt")
        assert code == 3, lines[-20:]
        assert any("checkout failed: source part source.tar.gz.part003 of " in line and "is corrupt" in line
                   for line in lines), lines[-20:]
        assert not [name for name in _cache(sandbox) if name.endswith(".tar.gz")]  # nothing cached


def test_a_12_mib_binary_artifact_comes_back_byte_identical(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    extra = ("  mkdir -p out && head -c 12582912 /dev/urandom > out/blob.bin && sha256sum out/blob.bin\n"
             "artifacts: [out/*.bin]\n")
    with start_sandbox(SandboxOptions(root=tmp_path / "cluster", backend="local", port=0,
                                      max_ops_size=CAP)) as sandbox:
        code, lines = _run_config(repo, tmp_path, sandbox, "artifact",
                                  CONFIG.format(extra=extra).replace("sha256sum data/*.bin\n", ""))
        assert code == 0, lines[-20:]
        remote = next((sandbox.root / "ci").glob("*/*/src/out/blob.bin")).read_bytes()
        fetched = next((repo / "ci-runner-artifacts").glob("*/out/blob.bin")).read_bytes()
        assert len(fetched) == 12 * 1024 * 1024 and fetched == remote
        assert not any("not fetched" in line for line in lines), lines[-20:]
        assert sandbox.request_log.count("GET", DOWNLOAD) >= 16  # parts of about 768 KiB, plus the sha256


def test_two_runs_of_the_same_commit_at_once_both_pass_and_leave_one_cached_archive(tmp_path: Path) -> None:
    """Both runs miss the cache and upload (their jobs are held PENDING until both are up), then
    their jobs join the same commit into the cache at about the same time."""
    repo, sums = _big_repo(tmp_path / "repo")
    with start_sandbox(SandboxOptions(root=tmp_path / "cluster", backend="local", port=0, max_ops_size=CAP,
                                      faults=Faults(pending_delay=4.0))) as sandbox:
        runs, states, envs = [], [], []
        for name in ("left", "right"):
            envs.append(runner_env(sandbox, BUILD_TAG=f"jenkins-{name}"))  # two CI jobs: two run ids
            config = tmp_path / f"{name}.yml"
            config.write_text(CONFIG.format(extra=""))
            states.append(tmp_path / f"{name}.json")
            runs.append(["run", "--config", str(config), "--state-file", str(states[-1]),
                         "--requests-per-minute", "600", "--workdir", f"{sandbox.root}/ci"])
        try:
            with ci_runner(runs[0], repo, envs[0]) as left, ci_runner(runs[1], repo, envs[1]) as right:
                codes = [left.finish(timeout=300), right.finish(timeout=300)]
                outputs = [left.lines(), right.lines()]
        finally:
            for state in states:
                cancel_jobs(sandbox, list(recorded_jobs(state).values()))
        assert codes == [0, 0], [lines[-15:] for lines in outputs]
        assert [_sums_in(lines) for lines in outputs] == [sums, sums]
        archive_size = sum(p.stat().st_size for p in (sandbox.root / "ci" / "sources").glob("*.tar.gz"))
        assert sandbox.request_log.count("POST", UPLOAD) == 2 * -(-archive_size // upload_part_size(CAP))
        cache = _cache(sandbox)
        assert len(cache) == 2 and cache[1] == cache[0] + ".sha256", cache
        archive = sandbox.root / "ci" / "sources" / cache[0]
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        assert (archive.parent / cache[1]).read_text().split()[0] == digest and cache[0].endswith(
            f"-{digest[:16]}.tar.gz")


@pytest.mark.parametrize("pack", [False, True])
def test_each_entry_s_small_artifacts_come_back_in_one_download(tmp_path: Path, pack: bool) -> None:
    """Three entries with three small artifacts each: one download per entry (the job's tar) and no
    listing of the checkout. An entry whose artifacts include a link gets them as before, from a
    listing and one download per file, the link followed to the file it names. Packed, the entries'
    tars come in one download of the packed job's tar of them (c's is not in it)."""
    repo = git_repo(tmp_path / "repo")
    top = "version: 1\nsystem: local\ncheckout: none\nsbatch:\n  time: 5m\n" + ("pack: true\n" if pack else "")
    text = (top +
            "matrix:\n  n: [a, b, c]\n"
            "script: |\n  mkdir -p results/deep\n  echo \"{{ n }} one\" > results/1.txt\n"
            "  echo \"{{ n }} two\" > results/deep/2.txt\n  echo '<testsuites/>' > results/junit.xml\n"
            "  echo skipped > results/other.log\n"
            "  if [ {{ n }} = c ]; then ln -s 1.txt results/link.txt; fi\n"
            "artifacts: [\"results/**/*.txt\"]\njunit: [\"results/*.xml\"]\n")
    with start_sandbox(SandboxOptions(root=tmp_path / "cluster", backend="local", port=0)) as sandbox:
        code, lines = _run_config(repo, tmp_path, sandbox, "bundle", text, timeout=120)
        assert code == 0, lines[-20:]
        downloads = [r for r in sandbox.request_log.records if r.route == DOWNLOAD]
    fetched = repo / "ci-runner-artifacts"
    for entry in "abc":
        assert (fetched / entry / "results/1.txt").read_text() == f"{entry} one\n"
        assert (fetched / entry / "results/deep/2.txt").read_text() == f"{entry} two\n"
        assert (fetched / entry / "results/junit.xml").exists()
        assert not (fetched / entry / "results/other.log").exists()
    assert (fetched / "c/results/link.txt").read_text() == "c one\n"
    assert not (fetched / "a/results/link.txt").exists()
    # a and b: their tars (packed: the packed job's one tar of both); c: a try for its tar, then its
    # four files one by one after one listing of src
    assert len(downloads) == (1 if pack else 2) + 1 + 4, [(r.status, r.bytes) for r in downloads]
    assert sum(1 for r in downloads if r.status == 404) == 1
