"""What the GitHub and GitLab reporters share: one entry's output folded into a block, colours per line.

- One entry in the run: its output goes in a collapsible block (GitHub group, GitLab section), opened
  when it is submitted and closed when it finishes.
- Several entries side by side: blocks cannot interleave, so every output line is prefixed `[entry] `
  and each entry's end is one `ci-runner: <entry>: <OUTCOME> (...)` line.
Job colours are kept: the style still active at a line's end is reset there and re-emitted on the
entry's next line, so one entry's colour never bleeds into another's line (and GitHub, which forgets
the style at every newline, keeps a coloured block coloured).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Sequence, TextIO

from ci_runner.reporters.base import LogReporter, finished_line
from ci_runner.reporters.junit import JUNIT_NAME
from ci_runner.reporters.result import EntryResult
from ci_runner.reporters.text import StyleTracker


class FoldingReporter(LogReporter):
    """Base of the GitHub and GitLab reporters. `report_dir`: where the merged JUnit report and the
    CI's other report files go (None: none written)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        entries: Sequence[str] | None = None,
        report_dir: Path | None = None,
    ) -> None:
        super().__init__(
            stream, color=True, entries=entries,
            junit_path=report_dir / JUNIT_NAME if report_dir is not None else None,
        )
        self._report_dir = report_dir
        self._folded: str | None = None        # the entry whose block is open
        self._styles: dict[str, StyleTracker] = {}

    def entry_submitted(self, entry: str, job_id: str, remote_dir: str) -> None:
        if not self.side_by_side and self._folded is None:
            self._folded = entry
            self._own_lines([self._block_start(entry, job_id)])
        super().entry_submitted(entry, job_id, remote_dir)

    def entry_finished(self, result: EntryResult) -> None:
        self._output_lines(result.entry, self._buffer(result.entry).flush())
        lines = []
        if self._folded == result.entry:
            lines.append(self._block_end(result.entry))
            self._folded = None
        lines.append(f"ci-runner: {finished_line(result)}")
        lines += self._finished_notes(result)
        self._own_lines(lines)

    @abstractmethod
    def _block_start(self, entry: str, job_id: str) -> str:
        """The line that opens the entry's collapsible block."""

    @abstractmethod
    def _block_end(self, entry: str) -> str:
        """The line that closes the entry's collapsible block."""

    def _finished_notes(self, result: EntryResult) -> list[str]:
        """Lines after an entry's finished line (GitHub: its annotations); none by default."""
        return []

    def _job_lines(self, entry: str, lines: list[str]) -> None:
        self._write_lines(self._styled_lines(entry, lines))

    def _styled_lines(self, entry: str, lines: list[str]) -> list[str]:
        """The entry's lines with its style carried over from the line before and reset at the end,
        prefixed `[entry] ` side by side."""
        style = self._styles.setdefault(entry, StyleTracker())
        prefix = f"[{entry}] " if self.side_by_side else ""
        out = []
        for line in lines:
            styled = style.restyle(line)
            out.append(prefix + styled + ("\x1b[0m" if style.active else ""))
        return out
