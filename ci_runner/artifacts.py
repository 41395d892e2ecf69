"""Fetching a job's artifacts back: list its source directory, download the matching files (a file
too large for one download is joined from the parts its job wrote, transfer.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from ci_runner import transfer
from ci_runner.artifact_selection import ListedFile, listed_files, local_destination, plan_artifacts
from ci_runner.config_defaults import DEFAULT_MAX_ARTIFACT_SIZE
from ci_runner.errors import CIRunnerError
from ci_runner.api import SERVER_OUTPUT_CAP, RemoteFileMissing

if TYPE_CHECKING:
    from ci_runner.cluster import Cluster


async def fetch_artifacts(cluster: Cluster, src: str, patterns: Sequence[str], destination: Path,
                          warn: Callable[[str], None] | None = None, *, parts_dir: str | None = None,
                          bundle: str | None = None, packed: dict[str, bytes] | None = None,
                          output_cap: int = SERVER_OUTPUT_CAP, max_size: int = DEFAULT_MAX_ARTIFACT_SIZE) -> list[str]:
    """Download the files of `src` matching `patterns` into `destination`; their relative paths.

    From `packed` (the job's tar as its packed job passed it on, `bundle_members`), else from the
    job's tar at `bundle` when it left one (every candidate a regular file that fits one download),
    else from a recursive listing of `src`. Links leaving `src`, non-regular files and
    files over `max_size` are refused (reported through `warn`). A file too large for one direct
    download on a system with `output_cap` is joined from the parts its job wrote into `parts_dir`
    and kept only when its size and sha256 match (transfer.py); when that fails it is reported and
    skipped.
    """
    say = warn or (lambda message: None)
    if packed is None and bundle is not None:
        try:
            packed = bundle_members(await cluster.download(bundle))
        except RemoteFileMissing:
            packed = None  # the job packs one only when it can
    if packed is not None:
        return _write_bundled(packed, src, patterns, destination, say, max_size)
    listing = listed_files(await cluster.list_files(src, recursive=True))
    plan = plan_artifacts(src, listing, patterns, max_size)
    for path, why in plan.refused:
        say(f"artifact {path} not fetched: {why}")
    part_size = transfer.download_part_size(output_cap)
    fetched: list[str] = []
    for relative in plan.files:
        target = local_destination(destination, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = plan.sizes.get(relative, 0)
        if size <= part_size:
            target.write_bytes(await cluster.download(f"{src}/{relative}"))
        elif parts_dir is None:
            say(f"artifact {relative} not fetched: {size} bytes, over one direct download ({part_size} bytes)")
            continue
        else:
            try:
                await transfer.fetch_in_parts(cluster, parts_dir, relative, size, part_size, target)
            except CIRunnerError as error:
                say(f"artifact {relative} not fetched: {error}")
                continue
        fetched.append(relative)
    return fetched


def bundle_members(data: bytes) -> dict[str, bytes] | None:
    """The regular files of a tar by their names; None when `data` is not a tar of regular files only."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                content = archive.extractfile(member) if member.isreg() else None
                if content is None:
                    return None
                files[member.name] = content.read()
    except (tarfile.TarError, OSError):
        return None
    return files


def _write_bundled(files: dict[str, bytes], src: str, patterns: Sequence[str], destination: Path,
                   say: Callable[[str], None], max_size: int) -> list[str]:
    """Write the bundled files that match `patterns` (the job packed a superset), by the same rules
    as a listing: `plan_artifacts` decides."""
    listing = [ListedFile(path=path, kind="file", size=len(content)) for path, content in files.items()]
    plan = plan_artifacts(src, listing, patterns, max_size)
    for path, why in plan.refused:
        say(f"artifact {path} not fetched: {why}")
    for relative in plan.files:
        target = local_destination(destination, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[relative])
    return list(plan.files)
