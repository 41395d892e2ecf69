"""Which files of a job's `src/` are its artifacts: the directory listing, the glob patterns, links
confined to `src/`, the size limit, and where each file lands on the runner. Pure."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from ci_runner.config_defaults import DEFAULT_MAX_ARTIFACT_SIZE
from ci_runner.errors import InfraError
from ci_runner.units import format_size


@dataclass(frozen=True)
class ListedFile:
    """One entry of a recursive listing of the checkout. `path` is relative to `src/`, '/'-separated."""

    path: str
    kind: str                      # "file", "dir", "link" or "other"
    size: int = 0
    link_target: str | None = None  # as stored in the link (relative to the link's directory, or absolute)


_KINDS = {"-": "file", "d": "dir", "l": "link"}


def listed_files(listing: Sequence[Mapping[str, object]]) -> list[ListedFile]:
    """FirecREST `ops/ls` entries (`name` relative to the listed dir, `type` "-"/"d"/"l", `linkTarget`, `size`)."""
    files = []
    for item in listing:
        try:
            size = int(str(item.get("size") or 0))
        except ValueError:
            size = 0
        link = item.get("linkTarget")
        files.append(ListedFile(path=str(item.get("name", "")), kind=_KINDS.get(str(item.get("type")), "other"),
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


def _resolve_link(root: str, path: str, by_path: Mapping[str, ListedFile], depth: int = 0) -> ListedFile | None:
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
    root: str, listing: Sequence[ListedFile], patterns: Sequence[str], max_size: int = DEFAULT_MAX_ARTIFACT_SIZE
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
