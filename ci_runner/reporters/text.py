"""Text handling shared by the reporters: whole-line buffering, ANSI escape sequences, durations. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterator

from ci_runner.reporters.controls import SGR, log_line

LINE_BATCH_CHARS = 64 * 1024  # about this many characters of job output are split and printed at a time

# CSI sequences (ESC [ params final), OSC sequences (ESC ] ... BEL/ST) and two-character escapes.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    """Remove every ANSI escape sequence (colours, cursor movement, hyperlinks)."""
    return ANSI_ESCAPE.sub("", text)


class LineBuffer:
    """Splits chunks of one entry's output into whole lines; keeps the unfinished last line."""

    def __init__(self) -> None:
        self._partial = ""

    def feed(self, text: str) -> list[str]:
        """Complete lines in `text` (without their newline); an unfinished tail waits for the next feed."""
        if not text:
            return []
        pieces = (self._partial + text).split("\n")
        self._partial = pieces.pop()
        return pieces

    def batches(self, text: str, size: int = LINE_BATCH_CHARS) -> Iterator[list[str]]:
        """`feed` in pieces: the complete lines in `text`, in lists of about `size` characters (a line
        longer than that comes whole, in a list of its own). A chunk of megabytes is then printed
        without its copy split into lines and joined again: memory stays a few times `size`."""
        start = 0
        while start < len(text):
            stop = start + size
            end = text.rfind("\n", start, stop) if stop < len(text) else len(text) - 1
            if end < 0:
                end = text.find("\n", stop)
            piece = text[start:] if end < 0 else text[start:end + 1]
            start += len(piece)
            lines = self.feed(piece)
            if lines:
                yield lines

    def flush(self) -> list[str]:
        """The unfinished last line, if any (called when the entry ends)."""
        rest, self._partial = self._partial, ""
        return [rest] if rest else []


class StyleTracker:
    """Remembers the SGR style active at the end of each line, to re-emit it on the next line.

    GitHub Actions resets the ANSI style at every newline; re-emitting keeps a coloured block coloured.
    """

    def __init__(self) -> None:
        self._active: list[str] = []

    @property
    def active(self) -> bool:
        """A style is still in effect after the last line."""
        return bool(self._active)

    def restyle(self, line: str) -> str:
        """`line` prefixed with the style left active by previous lines; updates the state from `line`."""
        prefix = "".join(self._active)
        for match in SGR.finditer(line):
            parts = match.group(1).split(";")
            if parts[0] in ("", "0"):  # reset, possibly followed by new attributes ("0;1;31")
                self._active = []
                parts = parts[1:]
                if not parts:
                    continue
                self._active.append(f"\x1b[{';'.join(parts)}m")
            else:
                self._active.append(match.group(0))
        return prefix + line


def format_duration(seconds: float | None) -> str:
    """'-' for unknown; '42s', '3m 07s', '2h 05m 09s'."""
    if seconds is None:
        return "-"
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_exit_code(exit_code: int | None) -> str:
    """'-' for unknown, else the number."""
    return "-" if exit_code is None else str(exit_code)


def tail_lines(text: str, max_lines: int, max_chars: int) -> str:
    """The last `max_lines` lines of `text`, at most `max_chars` characters, colours removed and other
    control characters made visible (`log_line`)."""
    lines = text.rstrip("\r\n").split("\n")[-max_lines:]
    result = "\n".join(strip_ansi(log_line(line)) for line in lines)
    return result[-max_chars:] if len(result) > max_chars else result
