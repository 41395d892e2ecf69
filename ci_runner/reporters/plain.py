"""The plain-text reporter, for Jenkins and local shells: clean lines, colour only when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TextIO

from ci_runner.reporters.base import LogReporter
from ci_runner.reporters.text import strip_ansi

_ENTRY_COLORS = ("36", "35", "34", "33", "32", "96", "95", "94")


def supports_color(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Colour for plain output (Jenkins, shells), by the usual conventions, in this order:
    NO_COLOR set and not empty: never; FORCE_COLOR or CLICOLOR_FORCE set, not empty and not `0`:
    always, also without a terminal (Jenkins' AnsiColor plugin renders the codes of a piped log);
    else only on a terminal whose TERM is set and not `dumb`.

    The caller (cli.py) passes its environment; reporters never read os.environ themselves.
    """
    env = environ or {}
    if env.get("NO_COLOR"):
        return False
    if any(env.get(name, "") not in ("", "0") for name in ("FORCE_COLOR", "CLICOLOR_FORCE")):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and env.get("TERM", "dumb") != "dumb"


class PlainTextReporter(LogReporter):
    """Clean text for Jenkins and shells: `[entry] line` when several entries run side by side, plain
    lines when one does; no escape codes unless `color` (then job colours are kept and reset per line,
    and side-by-side prefixes get a colour per entry). The arguments are `LogReporter`'s.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        color: bool = False,
        *,
        entries: Sequence[str] | None = None,
        junit_path: Path | None = None,
    ) -> None:
        super().__init__(stream, color, entries=entries, junit_path=junit_path)
        self._color_of: dict[str, str] = {}

    def _job_lines(self, entry: str, lines: list[str]) -> None:
        """Whole lines of one entry's output, already through `log_line`."""
        if self._color:
            lines = [line + "\x1b[0m" if "\x1b[" in line else line for line in lines]
        else:
            lines = [strip_ansi(line) for line in lines]
        if self.side_by_side:
            prefix = self._prefix(entry)
            lines = [prefix + line for line in lines]
        self._write_lines(lines)

    def _prefix(self, entry: str) -> str:
        if not self._color:
            return f"[{entry}] "
        code = self._color_of.setdefault(entry, _ENTRY_COLORS[len(self._color_of) % len(_ENTRY_COLORS)])
        return f"\x1b[{code}m[{entry}]\x1b[0m "
