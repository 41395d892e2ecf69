"""The benchmark's line formats, shared by the job-side generator (`gen.py`) and the measurements.

Every line a benchmark job writes carries a marker that survives any prefix a tool adds
(`[entry] `, `ci-runner: ...`), so the harness can recognise it in the tool's stdout:

- stamped lines  `<000000042|t=1712345678.123456>`: the write time on the cluster (log latency);
- sized lines    `<000000042|...payload...>`: deterministic content per sequence number
  (completeness: each line must arrive exactly once, byte for byte);
- the end line   `<END|t=1712345678.123456>`: the job's last write (job end → process exit).

Pure functions only; no imports beyond the standard library (the generator runs inside jobs).
"""

from __future__ import annotations

import re

LINE_RE = re.compile(r"<(\d{9})\|([^<>]*)>")
END_RE = re.compile(r"<END\|t=(\d+\.\d+)>")

# 1-, 2-, 3- and 4-byte UTF-8 characters; a line mixes all of them so chunk borders fall inside characters.
_MULTIBYTE = "aé€𝄞ßж中🙂"
_ASCII = "abcdefghijklmnopqrstuvwxyz0123456789"


def stamped_line(seq: int, written: float) -> str:
    """A line that records when it was written (epoch seconds)."""
    return f"<{seq:09d}|t={written:.6f}>\n"


def end_line(written: float) -> str:
    return f"<END|t={written:.6f}>\n"


def _bodies(alphabet: str, length: int) -> tuple[str, ...]:
    return tuple("".join(alphabet[(start + i) % len(alphabet)] for i in range(length))
                 for start in range(len(alphabet)))


# Multibyte bodies are 5 whole turns of the alphabet, so every line has the same byte length.
_BODIES = {False: _bodies(_ASCII, 88), True: _bodies(_MULTIBYTE, 5 * len(_MULTIBYTE))}


def sized_line(seq: int, multibyte: bool) -> str:
    """Line `seq` of a sized output (101 bytes ASCII, 118 bytes multibyte), content determined by `seq`."""
    bodies = _BODIES[multibyte]
    return f"<{seq:09d}|{bodies[seq % len(bodies)]}>\n"


def line_bytes(multibyte: bool) -> int:
    """The byte length of every sized line of this kind."""
    return len(sized_line(0, multibyte).encode("utf-8"))


def sized_lines(total_bytes: int, multibyte: bool) -> int:
    """How many sized lines the generator writes for `total_bytes` (the first count reaching it)."""
    return -(-total_bytes // line_bytes(multibyte))
