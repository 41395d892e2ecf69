"""The few `#SBATCH` header options the local backend honours, parsed the way sbatch does.

sbatch reads `#SBATCH` lines from the top of the script until the first line that is neither blank
nor a comment. Options the local backend has no use for (nodes, partition, ...) are accepted and ignored.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ci_runner.sandbox.backends.base import BackendError

_OPTIONS = {  # long name -> short flag
    "output": "o",
    "error": "e",
    "input": "i",
    "job-name": "J",
    "time": "t",
}
_SHORT = {short: long for long, short in _OPTIONS.items()}
_UNLIMITED = {"UNLIMITED", "INFINITE", "-1"}


@dataclass(frozen=True)
class SbatchOptions:
    """Options from the `#SBATCH` header; None where the script does not set them."""

    output: str | None = None
    error: str | None = None
    input: str | None = None
    job_name: str | None = None
    time_limit: int | None = None  # seconds; None = no limit


def sbatch_error(text: str) -> BackendError:
    """A failed submission, worded like the real server's answer to an sbatch error."""
    return BackendError(500, f"Unexpected Slurm command response. exit_status:1 std_err:sbatch: error: {text}")


def check_batch_script(script: str) -> None:
    """Refuse a script without `#!` on its first line, as sbatch does."""
    if not script.startswith("#!"):
        raise sbatch_error(
            "This does not look like a batch script.  The first\nsbatch: error: line must start with #! "
            "followed by the path to an interpreter.\nsbatch: error: For instance: #!/bin/sh"
        )


def header_arguments(script: str) -> list[str]:
    """The command-line words of every `#SBATCH` line before the first command."""
    words: list[str] = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            rest = stripped[len("#SBATCH"):]
            if rest and not rest[0].isspace():
                continue  # e.g. "#SBATCHX": not a directive
            try:
                words += shlex.split(rest, comments=True)
            except ValueError as exc:
                raise sbatch_error(f"Invalid #SBATCH line {stripped!r}: {exc}") from exc
        elif stripped and not stripped.startswith("#"):
            break
    return words


def parse_options(script: str) -> SbatchOptions:
    """The options of `script`'s `#SBATCH` header (later lines override earlier ones, like sbatch)."""
    values: dict[str, str] = {}
    words = header_arguments(script)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        name, value = _split_option(word)
        if name is None:
            continue
        if value is None:
            if i >= len(words):
                raise sbatch_error(f"option '{word}' requires an argument")
            value = words[i]
            i += 1
        values[name] = value
    time_text = values.get("time")
    return SbatchOptions(
        output=values.get("output"),
        error=values.get("error"),
        input=values.get("input"),
        job_name=values.get("job-name"),
        time_limit=None if time_text is None else parse_time_limit(time_text),
    )


def _split_option(word: str) -> tuple[str | None, str | None]:
    """(long name, inline value) for an option we honour; (None, None) for anything else."""
    if word.startswith("--"):
        name, eq, value = word[2:].partition("=")
        if name in _OPTIONS:
            return name, value if eq else None
        return None, None
    if word.startswith("-") and len(word) >= 2 and word[1] in _SHORT:
        return _SHORT[word[1]], word[2:] or None
    return None, None


_TIME_FORMATS = (
    (re.compile(r"(\d+)"), ("m",)),
    (re.compile(r"(\d+):(\d+)"), ("m", "s")),
    (re.compile(r"(\d+):(\d+):(\d+)"), ("h", "m", "s")),
    (re.compile(r"(\d+)-(\d+)"), ("d", "h")),
    (re.compile(r"(\d+)-(\d+):(\d+)"), ("d", "h", "m")),
    (re.compile(r"(\d+)-(\d+):(\d+):(\d+)"), ("d", "h", "m", "s")),
)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_time_limit(text: str) -> int | None:
    """Seconds of a Slurm `--time` value (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS); None = unlimited.

    Like Slurm, limits are whole minutes: seconds round up to the next minute, and 0 means no limit.
    """
    text = text.strip()
    if text.upper() in _UNLIMITED:
        return None
    for pattern, units in _TIME_FORMATS:
        match = pattern.fullmatch(text)
        if match:
            seconds = sum(int(v) * _SECONDS[u] for v, u in zip(match.groups(), units))
            minutes = -(-seconds // 60)
            return None if minutes == 0 else minutes * 60
    raise sbatch_error("Invalid --time specification")


def expand_pattern(pattern: str, job_id: str, job_name: str, user: str) -> str:
    """Expand sbatch filename patterns %j, %J, %A, %x, %u and %% (others stay as they are)."""
    replacements = {"j": job_id, "J": job_id, "A": job_id, "x": job_name, "u": user, "%": "%"}
    return re.sub(r"%(\d*)([jJAxu%])", lambda m: _pad(replacements[m.group(2)], m.group(1), m.group(2)), pattern)


def _pad(value: str, width: str, kind: str) -> str:
    """sbatch zero-pads numeric expansions like %5j."""
    if width and kind in "jJA":
        return value.zfill(int(width))
    return value
