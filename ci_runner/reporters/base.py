"""The Reporter interface, and what every reporter shares (`LogReporter`): whole lines, the summary, JUnit.

Reporters are the only code that writes to the CI log. Every call comes from the runner's single
asyncio thread, in order. Job output arrives in arbitrary chunks; reporters print whole lines only and
buffer an entry's unfinished last line until more text or `entry_finished` arrives, so two entries'
partial lines never end up on one log line.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol, Sequence, TextIO

from ci_runner.reporters import junit
from ci_runner.reporters.controls import log_line
from ci_runner.reporters.result import EntryResult
from ci_runner.reporters.text import LineBuffer, format_duration, format_exit_code
from ci_runner.slurm_states import Outcome


class Reporter(Protocol):
    """Receives the run's events in order; writes the CI log and the CI's report files."""

    def info(self, message: str) -> None: ...

    def warning(self, message: str, entry: str | None = None) -> None: ...

    def error(self, message: str, entry: str | None = None) -> None: ...

    def mask(self, secret: str) -> None:
        """Hide `secret` in the CI log from now on (GitHub `::add-mask::`; others no-op)."""

    def entry_submitted(self, entry: str, job_id: str, remote_dir: str) -> None: ...

    def entry_waiting(self, entry: str, state: str, reason: str | None, waited: float) -> None:
        """The entry's queue state changed (PENDING with a new reason, ...)."""

    def entry_output(self, entry: str, text: str) -> None:
        """A chunk of the entry's output, of any size; only whole lines are printed."""

    def entry_finished(self, result: EntryResult) -> None:
        """The entry reached its final state; its unfinished last line is printed now."""

    def run_finished(self, results: Sequence[EntryResult], exit_code: int) -> None:
        """Summary table, and the CI's report files (outputs, step summary, JUnit, dotenv)."""

    def run_failed(self, message: str, exit_code: int) -> None:
        """The run stopped with an error instead of results (a usage or configuration error, FirecREST
        unusable before the first submit). `message` has one problem per line, `file:line:col: ...`
        where it has a place; the CLI prints it on stderr as well."""


_OUTCOME_COLORS = {"PASSED": "32", "FAILED": "31", "TIMEOUT": "31", "INFRA": "33", "CONFIG": "31",
                   "CANCELLED": "33"}


def summary_rows(results: Sequence[EntryResult]) -> list[tuple[str, str, str, str, str, str]]:
    """One row per entry: entry, state, exit code, queue time, run time, output bytes (all text)."""
    return [
        (
            r.entry,
            r.state,
            format_exit_code(r.exit_code),
            format_duration(r.queue_seconds),
            format_duration(r.run_seconds),
            str(r.output_bytes),
        )
        for r in results
    ]


def verdict_line(results: Sequence[EntryResult], exit_code: int) -> str:
    """'all 3 entries passed' / '1 of 3 entries did not pass' plus the exit code."""
    failed = sum(1 for r in results if r.outcome is not Outcome.PASSED)
    noun = "entry" if len(results) == 1 else "entries"
    if not results:
        return f"no entries ran; exit code {exit_code}"
    if failed == 0:
        return f"all {len(results)} {noun} passed; exit code {exit_code}"
    return f"{failed} of {len(results)} {noun} did not pass; exit code {exit_code}"


class LogReporter(ABC):
    """What every reporter shares: ci-runner's own lines, job output split into whole lines, the summary
    table and the merged JUnit report. Subclasses decide how an entry's job lines are printed
    (`_job_lines`) and add their CI's syntax and files.

    `color`: the summary table shows states in colour.
    `entries`: the names of the run's entries, to decide on prefixes (unknown: always prefix).
    `junit_path`: where `run_finished` writes the merged JUnit report (None: no file).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        color: bool = False,
        *,
        entries: Sequence[str] | None = None,
        junit_path: Path | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._color = color
        self._entries = tuple(entries) if entries is not None else None
        self._junit_path = junit_path
        self._buffers: dict[str, LineBuffer] = {}

    # -- the Reporter interface -------------------------------------------------------------

    def info(self, message: str) -> None:
        self._message(message)

    def warning(self, message: str, entry: str | None = None) -> None:
        self._message(f"warning: {_about(entry)}{message}")

    def error(self, message: str, entry: str | None = None) -> None:
        self._message(f"error: {_about(entry)}{message}")

    def mask(self, secret: str) -> None:
        """No masking by default (plain logs have none; Jenkins masks its credentials itself)."""

    def entry_submitted(self, entry: str, job_id: str, remote_dir: str) -> None:
        self._message(f"{entry}: submitted as Slurm job {job_id} in {remote_dir}")

    def entry_waiting(self, entry: str, state: str, reason: str | None, waited: float) -> None:
        because = f" ({reason})" if reason else ""
        self._message(f"{entry}: {state}{because}, waiting for {format_duration(waited)}")

    def entry_output(self, entry: str, text: str) -> None:
        buffer = self._buffer(entry)
        for lines in buffer.batches(text):  # a large chunk is printed in pieces (memory: LINE_BATCH_CHARS)
            self._output_lines(entry, lines)

    def entry_finished(self, result: EntryResult) -> None:
        self._output_lines(result.entry, self._buffer(result.entry).flush())
        self._message(finished_line(result))

    def run_finished(self, results: Sequence[EntryResult], exit_code: int) -> None:
        self._own_lines(self._summary_table(results))
        self._message(verdict_line(results, exit_code))
        if self._junit_path is not None:
            self._write_junit(results, self._junit_path)

    def run_failed(self, message: str, exit_code: int) -> None:
        """Nothing to add by default: the CLI prints the error on stderr."""

    # -- shared by every reporter, hooks for the CI-specific ones --------------------------------

    @property
    def side_by_side(self) -> bool:
        """True when several entries run at once, so job lines carry an `[entry] ` prefix."""
        return self._entries is None or len(self._entries) > 1

    def _message(self, text: str) -> None:
        """A line of ci-runner's own (not job output)."""
        self._own_lines([f"ci-runner: {text}"])

    def _own_lines(self, lines: list[str]) -> None:
        """Lines written by ci-runner itself (never job output)."""
        self._write_lines(lines)

    def _output_lines(self, entry: str, lines: list[str]) -> None:
        """Whole lines of one entry's output as received: each made safe for the log (`log_line`, the
        same rule on every CI: colour kept, every other control character visible), then printed."""
        if lines:
            self._job_lines(entry, [log_line(line) for line in lines])

    @abstractmethod
    def _job_lines(self, entry: str, lines: list[str]) -> None:
        """Print whole lines of one entry's output, already through `log_line`."""

    def _summary_table(self, results: Sequence[EntryResult]) -> list[str]:
        header = ("entry", "state", "exit code", "queue time", "run time", "output bytes")
        rows = summary_rows(results)
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def render(row: Sequence[str], outcome: str | None = None) -> str:
            cells = [cell.ljust(width) for cell, width in zip(row, widths)]
            if self._color and outcome:
                cells[1] = f"\x1b[{_OUTCOME_COLORS.get(outcome, '0')}m{cells[1]}\x1b[0m"
            return "  ".join(cells).rstrip()

        lines = ["ci-runner: summary", render(header)]
        lines += [render(row, r.outcome.name) for row, r in zip(rows, results)]
        return lines

    def _write_junit(self, results: Sequence[EntryResult], path: Path) -> None:
        try:
            report = junit.build_report(results, warn=self.warning)
            junit.write(report, path)
        except OSError as error:
            self.warning(f"could not write the JUnit report {path}: {error}")
            return
        self._message(f"JUnit report: {path}")

    def _write_lines(self, lines: Sequence[str]) -> None:
        if lines:
            self._stream.write("".join(line + "\n" for line in lines))
            self._stream.flush()

    def _buffer(self, entry: str) -> LineBuffer:
        return self._buffers.setdefault(entry, LineBuffer())


def _about(entry: str | None) -> str:
    return f"{entry}: " if entry else ""


def finished_line(result: EntryResult) -> str:
    """'gcc-4: FAILED (FAILED, exit code 1, ran 3m 02s): tests failed'."""
    facts = [result.state]
    if result.exit_code is not None:
        facts.append(f"exit code {result.exit_code}")
    if result.run_seconds is not None:
        facts.append(f"ran {format_duration(result.run_seconds)}")
    why = f": {result.message}" if result.message else ""
    return f"{result.entry}: {result.outcome.name} ({', '.join(facts)}){why}"
