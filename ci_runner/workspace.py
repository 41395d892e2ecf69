"""The remote work directory of each entry, and the source that goes into it.

Layout (layout.py): `<workdir>/<run-id>/` with `output/` (every job's output file), the parts of
the source archive (checkout: upload, on a cache miss) and `<entry>/src/` (the checkout, made by the
job; the user's script runs there); `<workdir>/sources/` caches one archive per commit.

- `checkout: clone`: nothing to send; the job script (render.py) clones the exact SHA on the cluster.
  No credentials ever go into the script, so a private repository needs `checkout: upload`.
- `checkout: upload`: `git archive` of the exact commit (never the working tree), kept once per commit
  in the cluster's source cache (`<workdir>/sources/`): a run finds it there with one request, or
  uploads it in parts that each fit one direct upload (transfer.py); each entry's job joins and
  verifies the parts into the cache if needed and extracts the archive into its `src/`.
- `checkout: none`: the script brings its own sources.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

from ci_runner import transfer
from ci_runner.ci import git_argv
from ci_runner.config import DEFAULT_MAX_ARTIFACT_SIZE, format_size
from ci_runner.errors import InfraError, UsageError

if TYPE_CHECKING:
    from ci_runner.cluster import Cluster
    from ci_runner.layout import EntryLayout, RunLayout
    from ci_runner.transfer import SourcePlan

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


async def prepare_run(cluster: Cluster, layout: RunLayout, source: SourcePlan | None,
                      info: Callable[[str], None] | None = None) -> None:
    """Create the run's output directory (and the run's, with parents) and, for `checkout: upload`,
    make sure the commit's archive reaches the cluster: one `stat` of the source cache, and on a
    miss one upload per part; whatever the number of entries (each job makes its own entry
    directory and takes the shared archive). `info` hears how many parts and bytes were sent.

    The output directory must exist before submit: it is every job's working directory, and Slurm
    cannot open the output file of a job whose directory is missing.
    """
    await cluster.mkdir(layout.output_dir)
    if source is not None:
        await transfer.upload_source(cluster, source, info)


async def cleanup(cluster: Cluster, layout: EntryLayout) -> None:
    """Remove the entry's directory (config `cleanup: true`, after success only)."""
    await cluster.rm(layout.root)


# --- artifacts: fetched back from `src/` after the job ------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One entry of a recursive listing of the checkout. `path` is relative to `src/`, '/'-separated."""

    path: str
    kind: str                      # "file", "dir", "link" or "other"
    size: int = 0
    link_target: str | None = None  # as stored in the link (relative to the link's directory, or absolute)


_KINDS = {"-": "file", "d": "dir", "l": "link"}


def remote_files(listing: Sequence[Mapping[str, object]]) -> list[RemoteFile]:
    """FirecREST `ops/ls` entries (`name` relative to the listed dir, `type` "-"/"d"/"l", `linkTarget`, `size`)."""
    files = []
    for item in listing:
        try:
            size = int(str(item.get("size") or 0))
        except ValueError:
            size = 0
        link = item.get("linkTarget")
        files.append(RemoteFile(path=str(item.get("name", "")), kind=_KINDS.get(str(item.get("type")), "other"),
                                size=size, link_target=str(link) if link else None))
    return files


def glob_tokens(pattern: str) -> Iterator[tuple[str, str]]:
    """A path glob as (kind, text) tokens: kind "**/" (any directories), "**" (anything), "*", "?",
    "[" (a character class; text = its body, a leading `!` kept) or "" (the literal character text)."""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i) or pattern.startswith("**", i):
            kind = "**/" if pattern.startswith("**/", i) else "**"
            yield kind, kind
            i += len(kind)
            continue
        if char == "[":
            end = pattern.find("]", i + 2 if pattern.startswith("[!", i) or pattern.startswith("[]", i) else i + 1)
            if end != -1:
                yield "[", pattern[i + 1:end]
                i = end + 1
                continue
        yield (char if char in "*?" else ""), char
        i += 1


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob: `*` and `?` stay inside one path segment, `**/` spans directories, `[...]` classes."""
    out: list[str] = []
    for kind, text in glob_tokens(pattern):
        if kind == "[":
            body = "^" + text[1:] if text.startswith("!") else text
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
        else:
            out.append({"**/": "(?:[^/]+/)*", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(kind) or re.escape(text))
    return re.compile("".join(out))


def _resolve_link(root: str, path: str, by_path: Mapping[str, RemoteFile], depth: int = 0) -> RemoteFile | None:
    """Follow links inside the listing; None when a link leaves `root` (the checkout), dangles or loops."""
    entry = by_path.get(path)
    if entry is None or depth > 20:
        return None
    if entry.kind != "link":
        return entry
    target = entry.link_target or ""
    absolute = posixpath.normpath(target if target.startswith("/") else posixpath.join(root, posixpath.dirname(path), target))
    if absolute != root and not absolute.startswith(root + "/"):
        return None
    return _resolve_link(root, posixpath.relpath(absolute, root), by_path, depth + 1)


@dataclass(frozen=True)
class ArtifactPlan:
    """Which files to download (relative paths under `src/`, with their sizes) and which were refused, with why."""

    files: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]
    sizes: Mapping[str, int] = field(default_factory=dict)  # of every file in `files` (its link's target)


def plan_artifacts(
    root: str, listing: Sequence[RemoteFile], patterns: Sequence[str], max_size: int = DEFAULT_MAX_ARTIFACT_SIZE
) -> ArtifactPlan:
    """Match `patterns` against the listing of `root`; refuse links leaving `root`, and files over
    `max_size` (`max_artifact_size`).

    Pure. `root` is the absolute remote checkout (`layout.src`); a symlink counts as the file it points to,
    only while every hop stays inside `root`.
    """
    regexes = [glob_regex(pattern.removeprefix("./")) for pattern in patterns]
    by_path = {entry.path: entry for entry in listing}
    files: list[str] = []
    sizes: dict[str, int] = {}
    refused: list[tuple[str, str]] = []
    for entry in sorted(listing, key=lambda e: e.path):
        if entry.kind == "dir" or not any(regex.fullmatch(entry.path) for regex in regexes):
            continue
        parts = entry.path.split("/")
        if entry.path.startswith("/") or any(part in ("", ".", "..") for part in parts):
            refused.append((entry.path, "not a plain relative path"))
            continue
        target = _resolve_link(root, entry.path, by_path)
        if target is None:
            refused.append((entry.path, "symbolic link pointing outside the checkout (or dangling)"))
        elif target.kind != "file":
            refused.append((entry.path, f"not a regular file ({target.kind})"))
        elif target.size > max_size:
            refused.append((entry.path, f"{target.size} bytes, over max_artifact_size ({format_size(max_size)})"))
        else:
            files.append(entry.path)
            sizes[entry.path] = target.size
    return ArtifactPlan(files=tuple(files), refused=tuple(refused), sizes=sizes)


def local_destination(base: Path, relative: str) -> Path:
    """`base/relative`, refusing anything that would land outside `base` (also through local symlinks)."""
    target = (base / relative).resolve()
    if not target.is_relative_to(base.resolve()):
        raise InfraError(f"artifact {relative!r} would be written outside {base}")
    return target
