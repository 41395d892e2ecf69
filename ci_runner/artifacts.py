"""Fetching a job's artifacts back: list its source directory, download the matching files (a file
too large for one download is joined from the parts its job wrote, transfer.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from ci_runner import transfer
from ci_runner.artifact_selection import listed_files, local_destination, plan_artifacts
from ci_runner.config_defaults import DEFAULT_MAX_ARTIFACT_SIZE
from ci_runner.errors import CIRunnerError
from ci_runner.api import SERVER_OUTPUT_CAP

if TYPE_CHECKING:
    from ci_runner.cluster import Cluster


async def fetch_artifacts(cluster: Cluster, src: str, patterns: Sequence[str], destination: Path,
                          warn: Callable[[str], None] | None = None, *, parts_dir: str | None = None,
                          output_cap: int = SERVER_OUTPUT_CAP,
                          max_size: int = DEFAULT_MAX_ARTIFACT_SIZE) -> list[str]:
    """List `src` recursively, download the files matching `patterns` into `destination`; their relative paths.

    Links leaving `src`, non-regular files and files over `max_size` are refused (reported through
    `warn`). A file too large for one direct download on a system with `output_cap` is joined from
    the parts its job wrote into `parts_dir` and kept only when its size and sha256 match
    (transfer.py); when that fails it is reported and skipped.
    """
    listing = listed_files(await cluster.list_files(src, recursive=True))
    plan = plan_artifacts(src, listing, patterns, max_size)
    say = warn or (lambda message: None)
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
