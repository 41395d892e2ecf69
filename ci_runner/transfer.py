"""Files larger than one FirecREST request, moved in parts that each fit the site's direct cap.

FirecREST's direct transfers (`ops/upload`, `ops/download`) are limited by the system's
`max_ops_file_size` (5 MiB by default; `ops/download` is base64 inside that buffer, so about 3/4 of
it), and it has no ranged binary read (`ops/view` decodes text) and no direct rename (`ops/mv` does
not exist; `transfer/mv` is a staged Slurm job). So the cluster side of every split or join is done
by the job itself (render.py writes the commands); this module owns the sizes, the names and the
runner's side:

- Sources: the `git archive` is cut into parts of at most `upload_part_size(cap)` bytes, uploaded
  as `<run>/source.tar.gz.partNNN`; the job checks each part's sha256 (a mismatch names the part),
  joins them under a temporary name in `<workdir>/sources/` and renames the verified whole to
  `<workdir>/sources/<commit>-<sha256[:16]>.tar.gz` (plus `.sha256`). The name says what is inside,
  so runs whose git produced other bytes for the same commit do not meet, and the rename makes it
  appear complete or not at all: `upload_source` finds it with one `stat` and then uploads nothing
  (an archive of one part is uploaded without that `stat`: the same one request on a hit, one less on
  a miss).
- Artifacts: a matching file over `download_part_size(cap)` is split by the job after the user's
  script into `<entry>/artifact-parts/<path>.partNNNN` with its sha256 in `<path>.sha256`;
  `fetch_in_parts` downloads the parts, joins them and keeps the file only when size and sha256 match.
  When every file the patterns may match is a regular file of one download at most, the job also
  packs them into `<entry>/artifacts.tar` (when that fits one download too): the runner then fetches
  all of them with one request instead of a listing and one download per file (artifacts.py). A
  packed job packs its entries' tars into one more after its steps: one request for all its entries.

Staged (S3) transfers are not used: each costs a queued Slurm transfer job (minutes on a busy site).
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ci_runner.api import MAX_DIRECT_DOWNLOAD, MAX_DIRECT_UPLOAD, RemoteFileMissing
from ci_runner.errors import InfraError, UsageError
from ci_runner.layout import PACK_PREFIX
from ci_runner.units import format_size

if TYPE_CHECKING:
    from ci_runner.cluster import Cluster
    from ci_runner.layout import EntryLayout, RunLayout
    from ci_runner.source_archive import SourceArchive

CACHE_RETENTION_DAYS = 7       # cached source archives not used for this long are removed by the jobs
PARALLEL_TRANSFERS = 4         # parts in flight at once (each is still one request of the shared budget)
PART_SUFFIX = ".part"          # + 3 (sources) or 4 (artifacts) decimal digits
ARTIFACT_PART_DIGITS = 4
ARTIFACT_PARTS_DIR = "artifact-parts"
ARTIFACT_BUNDLE = "artifacts.tar"
_COMMIT = re.compile(r"[0-9a-f]{7,64}")


def upload_part_size(output_cap: int) -> int:
    """The largest part one direct `ops/upload` takes on a system whose `max_ops_file_size` is `output_cap`."""
    return max(1, min(MAX_DIRECT_UPLOAD, output_cap - 1))


def download_part_size(output_cap: int) -> int:
    """The largest part one direct `ops/download` returns: its base64 text must stay below `output_cap`."""
    return max(3, min(MAX_DIRECT_DOWNLOAD, (output_cap - 1) // 4 * 3))


# --- sources --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourcePart:
    """One uploaded piece of the archive: bytes [offset, offset + size) as file `path`."""

    path: str
    offset: int
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


@dataclass(frozen=True)
class SourcePlan:
    """Where the archive of one commit lives on the cluster and how it gets there."""

    archive: SourceArchive
    sha256: str                    # of the whole archive
    cached: str                    # <workdir>/sources/<commit>-<sha256[:16]>.tar.gz, complete or absent
    parts: tuple[SourcePart, ...]  # <run>/source.tar.gz.partNNN, uploaded on a cache miss

    @property
    def sha(self) -> str:
        return self.archive.sha

    @property
    def dirty(self) -> bool:
        return self.archive.dirty

    @property
    def size(self) -> int:
        return len(self.archive.data)

    @property
    def checksum_file(self) -> str:
        return f"{self.cached}.sha256"


def plan_source(archive: SourceArchive, layout: RunLayout, output_cap: int) -> SourcePlan:
    """Cut `archive` into parts that each fit one direct upload on a system with `output_cap`. Pure."""
    if not _COMMIT.fullmatch(archive.sha):
        raise UsageError(f"checkout: upload: {archive.sha!r} is not a commit id (hexadecimal)")
    data = archive.data
    digest = hashlib.sha256(data).hexdigest()
    step = upload_part_size(output_cap)
    count = max(1, -(-len(data) // step))
    if count > 999:
        raise UsageError(
            f"checkout: upload: the source archive of {archive.sha[:12]} is {len(data) / 1048576:.1f} MiB, "
            f"{count} parts of {format_size(step)} (the most is 999); use `checkout: clone`, or exclude large "
            "files from the archive with `export-ignore` in .gitattributes")
    parts = tuple(
        SourcePart(path=f"{layout.archive}{PART_SUFFIX}{index:03d}", offset=index * step,
                   size=len(data[index * step:(index + 1) * step]),
                   sha256=hashlib.sha256(data[index * step:(index + 1) * step]).hexdigest())
        for index in range(count))
    return SourcePlan(archive=archive, sha256=digest, parts=parts,
                      cached=f"{layout.sources}/{archive.sha}-{digest[:16]}.tar.gz")


async def upload_source(cluster: Cluster, plan: SourcePlan, info: Callable[[str], None] | None = None) -> int:
    """Upload the parts of `plan` unless the cluster already caches its archive (one `stat`); the
    number of parts uploaded. An archive of one part is uploaded without asking: the upload costs the
    one request the `stat` would, and a cache miss saves the second (its job takes the cached archive
    when there is one and leaves the part in the run's directory). `info` hears what was done."""
    say = info or (lambda message: None)
    if len(plan.parts) > 1 and await cluster.stat_size(plan.cached) == plan.size:
        say(f"source archive of {plan.sha[:12]} ({_mib(plan.size)}) found in the cluster's cache "
            f"{plan.cached}; nothing uploaded")
        return 0
    slots = asyncio.Semaphore(PARALLEL_TRANSFERS)

    async def send(part: SourcePart) -> None:
        directory, filename = posixpath.split(part.path)
        async with slots:
            await cluster.upload(plan.archive.data[part.offset:part.offset + part.size], directory, filename)

    await asyncio.gather(*(send(part) for part in plan.parts))
    say(f"source archive of {plan.sha[:12]}: {plan.size} bytes ({_mib(plan.size)}) uploaded in "
        f"{len(plan.parts)} part{'s' if len(plan.parts) != 1 else ''} of at most "
        f"{max(part.size for part in plan.parts)} bytes; the jobs join and verify them into {plan.cached}")
    return len(plan.parts)


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB"


# --- artifacts ------------------------------------------------------------------------------------


def artifact_parts_dir(layout: EntryLayout) -> str:
    """Where the job puts the parts of its large artifacts (outside the checkout)."""
    return f"{layout.root}/{ARTIFACT_PARTS_DIR}"


def artifact_bundle(layout: EntryLayout) -> str:
    """Where the job packs its artifacts when they all fit one download (outside the checkout)."""
    return f"{layout.root}/{ARTIFACT_BUNDLE}"


def artifact_bundle_name(layout: EntryLayout) -> str:
    """`artifact_bundle` relative to the run's directory: its name in the packed job's tar of them."""
    return posixpath.relpath(artifact_bundle(layout), layout.run.root)


def pack_artifact_bundle(layout: EntryLayout) -> str:
    """Where a packed job, after its steps, packs its entries' tars into one (`<run>/pack+<k>.artifacts.tar`)."""
    assert layout.pack is not None
    return f"{layout.run.root}/{PACK_PREFIX}{layout.pack[0]}.{ARTIFACT_BUNDLE}"


def artifact_part(parts_dir: str, relative: str, index: int) -> str:
    """Part `index` of artifact `relative` (as `split -d -a 4` names it)."""
    return f"{parts_dir}/{relative}{PART_SUFFIX}{index:0{ARTIFACT_PART_DIGITS}d}"


def artifact_checksum(parts_dir: str, relative: str) -> str:
    """The job's `sha256sum` line of the whole artifact `relative`."""
    return f"{parts_dir}/{relative}.sha256"


async def fetch_in_parts(cluster: Cluster, parts_dir: str, relative: str, size: int, part_size: int,
                         target: Path) -> int:
    """Download the job's parts of artifact `relative` (`size` bytes, parts of `part_size`) into
    `target`, keeping it only when size and sha256 match the job's; the number of parts. InfraError
    (nothing written at `target`) when a part is missing or the joined file does not match."""
    count = max(1, -(-size // part_size))
    try:
        expected = (await cluster.download(artifact_checksum(parts_dir, relative))).decode("ascii", "replace").split()
    except RemoteFileMissing:
        raise InfraError(f"{size} bytes, and its job left no parts of it in {parts_dir} (it did not reach "
                         "its end, or could not split the file)") from None
    if not expected or not re.fullmatch(r"[0-9a-f]{64}", expected[0]):
        raise InfraError(f"the job wrote no usable sha256 for its parts in {parts_dir}")
    partial = target.with_name(target.name + ".ci-runner-partial")
    digest = hashlib.sha256()
    written = 0
    try:
        with partial.open("wb") as handle:
            for index in range(count):
                data = await cluster.download(artifact_part(parts_dir, relative, index))
                digest.update(data)
                handle.write(data)
                written += len(data)
        if written != size or digest.hexdigest() != expected[0]:
            raise InfraError(f"its {count} parts joined give {written} bytes with sha256 "
                             f"{digest.hexdigest()[:16]}…, expected {size} bytes with {expected[0][:16]}…")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return count
