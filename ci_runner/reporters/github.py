"""GitHub Actions: log groups, masks, annotations, step outputs and the job summary.

Log layout (what GitHub and GitLab share is in folding.py)
- One entry in the run: its output goes in a `::group::<entry> (Slurm job N)` … `::endgroup::` block.
- Several entries side by side: groups cannot interleave, so every output line is prefixed
  `[entry] ` (whole lines only) and each entry's end is one `ci-runner: <entry>: <OUTCOME> (...)` line.

Safety: job output is untrusted. Before printing it, workflow commands are switched off with
`::stop-commands::<random token>` and switched on again with `::<token>::` before ci-runner writes
a command of its own, so a job printing `::add-mask::`, `::set-output` or `##[...]` does nothing.
Each stop uses a fresh token. Data in commands is escaped (`%`, CR, LF; properties also `:` and `,`).
Stop-commands do not cover terminal control sequences (erase, cursor movement, a bare CR, OSC links):
job lines go through `controls.log_line` like on every CI, which keeps only colour.

GitHub forgets the ANSI style at every newline: the style still active at the end of a line is
re-emitted at the start of the entry's next line, and reset at the line's end.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence, TextIO

from ci_runner.reporters import junit
from ci_runner.reporters.base import finished_line, verdict_line
from ci_runner.reporters.folding import FoldingReporter
from ci_runner.reporters.result import EntryResult
from ci_runner.reporters.text import format_duration, format_exit_code, tail_lines
from ci_runner.slurm_states import Outcome

MAX_FILE_ANNOTATIONS = 10   # GitHub shows at most 10 error annotations per step
TAIL_LINES = 60
TAIL_CHARS = 16_000
MAX_SUMMARY_CHARS = 900_000  # GitHub rejects job summaries over 1 MiB

_ICONS = {
    Outcome.PASSED: "✅",
    Outcome.FAILED: "❌",
    Outcome.TIMEOUT: "⏱️",
    Outcome.INFRA: "⚠️",
    Outcome.CONFIG: "🛠️",
    Outcome.CANCELLED: "🚫",
}


def escape_data(text: str) -> str:
    """Workflow-command data: `%`, CR, LF escaped."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Workflow-command property values: like data, plus `:` and `,`."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, data: str = "", **properties: str | int | None) -> str:
    """`::name key=value,...::data` with everything escaped; None properties are left out."""
    props = ",".join(f"{key}={escape_property(str(value))}" for key, value in properties.items() if value is not None)
    return f"::{name}{' ' + props if props else ''}::{escape_data(data)}"


def _random_token() -> str:
    return secrets.token_hex(16)


class GitHubReporter(FoldingReporter):
    """Reporter for GitHub Actions; file paths come from the CIContext (None: that file is not written).

    `report_dir`: where the merged JUnit file and the JSON summary go (None: not written).
    `token`: source of the random stop-commands tokens and output delimiters (tests pass a fixed one).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        entries: Sequence[str] | None = None,
        output_path: Path | None = None,
        summary_path: Path | None = None,
        report_dir: Path | None = None,
        run_url: str | None = None,
        token: Callable[[], str] = _random_token,
    ) -> None:
        super().__init__(stream, entries=entries, report_dir=report_dir)
        self._output_path = output_path
        self._summary_path = summary_path
        self._run_url = run_url
        self._token = token
        self._stopped: str | None = None      # the active stop-commands token
        self._secrets: list[str] = []
        self._file_annotations = 0

    # -- interface ------------------------------------------------------------------------

    def warning(self, message: str, entry: str | None = None) -> None:
        self._own_lines([command("warning", message, title=f"ci-runner: {entry}" if entry else "ci-runner")])

    def error(self, message: str, entry: str | None = None) -> None:
        self._own_lines([command("error", message, title=f"ci-runner: {entry}" if entry else "ci-runner")])

    def mask(self, secret: str) -> None:
        """`::add-mask::` per line of the secret (GitHub masks line by line); also redacts report files."""
        lines = [line.strip() for line in secret.splitlines() if line.strip()]
        new = [line for line in lines if line not in self._secrets]
        self._secrets.extend(new)
        self._own_lines([command("add-mask", line) for line in new])

    def run_finished(self, results: Sequence[EntryResult], exit_code: int) -> None:
        # Report files are not masked by GitHub (the log is): redact what mask() learned.
        results = [replace(r, message=self._redact(r.message), tail=self._redact(r.tail)) for r in results]
        super().run_finished(results, exit_code)  # the table and the JUnit report
        summary_json = None
        if self._report_dir is not None:
            summary_json = self._report_dir / "ci-runner-summary.json"
            self._write_file(summary_json, self._redact(summary_document(results, exit_code)), append=False)
        if self._output_path is not None:
            outputs = {
                "exit-code": str(exit_code),
                "states": json.dumps({r.entry: r.state for r in results}, sort_keys=True),
                "job-ids": json.dumps({r.entry: r.job_id for r in results}, sort_keys=True),
                "outcomes": json.dumps({r.entry: r.outcome.name for r in results}, sort_keys=True),
                "summary": str(summary_json or ""),
                "junit": str(self._junit_path or ""),
            }
            self._write_file(self._output_path, self._redact(self._output_text(outputs)), append=True)
        if self._summary_path is not None:
            text = step_summary(results, exit_code, self._run_url)
            self._write_file(self._summary_path, self._redact(text), append=True)

    def run_failed(self, message: str, exit_code: int) -> None:
        """One `::error` annotation per problem (with file/line/col where the message has them, so
        GitHub marks the line of .ci-runner.yml), `exit-code` and empty JSON objects as step
        outputs, and a short step summary."""
        problems = error_problems(message)
        self._own_lines([command("error", text, file=file, line=line, col=col, title="ci-runner")
                        for file, line, col, text in problems])
        if self._output_path is not None:
            outputs = {"exit-code": str(exit_code), "states": "{}", "job-ids": "{}", "outcomes": "{}",
                       "summary": "", "junit": ""}
            self._write_file(self._output_path, self._redact(self._output_text(outputs)), append=True)
        if self._summary_path is not None:
            what = "configuration or usage error" if exit_code == 2 else "error"
            fence = "`" * max(3, _longest_backtick_run(message) + 1)
            text = (f"### ci-runner: {what}; exit code {exit_code}\n\nNothing ran on the cluster.\n\n"
                    f"{fence}text\n{message.strip()[:TAIL_CHARS]}\n{fence}\n")
            self._write_file(self._summary_path, self._redact(text), append=True)

    # -- log lines ------------------------------------------------------------------------

    def _own_lines(self, lines: list[str]) -> None:
        """Lines of ci-runner's own: workflow commands are switched on again first."""
        if self._stopped is not None:
            lines = [f"::{self._stopped}::", *lines]
            self._stopped = None
        self._write_lines(lines)

    def _block_start(self, entry: str, job_id: str) -> str:
        return command("group", f"{entry} (Slurm job {job_id})")

    def _block_end(self, entry: str) -> str:
        return "::endgroup::"

    def _job_lines(self, entry: str, lines: list[str]) -> None:
        """Job lines with workflow commands switched off first (a fresh token each time)."""
        stop = []
        if self._stopped is None:
            self._stopped = self._token()
            stop.append(f"::stop-commands::{self._stopped}")
        self._write_lines(stop + self._styled_lines(entry, lines))

    def _finished_notes(self, result: EntryResult) -> list[str]:
        """An annotation for an entry that did not pass, and one per failed JUnit testcase with a file."""
        if result.outcome is Outcome.PASSED:
            return []
        kind = "warning" if result.outcome is Outcome.CANCELLED else "error"
        title = f"ci-runner: {result.entry} {result.outcome.name}"
        lines = [command(kind, finished_line(result), title=title)]
        for failure in junit.failures(result, self.warning):
            if failure.file is None or self._file_annotations >= MAX_FILE_ANNOTATIONS:
                continue
            self._file_annotations += 1
            lines.append(command(
                "error", failure.message, file=failure.file, line=failure.line,
                title=f"{result.entry}: {failure.name}",
            ))
        return lines

    # -- files ----------------------------------------------------------------------------

    def _output_text(self, outputs: dict[str, str]) -> str:
        """`name<<delimiter` blocks: safe for any value, including newlines."""
        chunks = []
        for name, value in outputs.items():
            delimiter = f"ghadelimiter_{self._token()}"
            while delimiter in value:
                delimiter = f"ghadelimiter_{_random_token()}"
            chunks.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
        return "".join(chunks)

    def _redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _write_file(self, path: Path, text: str, *, append: bool) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a" if append else "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as error:
            self.warning(f"could not write {path}: {error.strerror or error}")


_LOCATED = re.compile(r"(?P<file>[^\s:][^:\n]*):(?P<line>\d+):(?P<col>\d+): (?P<text>.*)")


def error_problems(message: str) -> list[tuple[str | None, int | None, int | None, str]]:
    """(file, line, col, text) per problem of an error message: a line that starts `file:line:col: `
    is a problem of its own; any other line continues the problem before it (or starts one)."""
    problems: list[tuple[str | None, int | None, int | None, str]] = []
    for raw in message.strip().splitlines():
        located = _LOCATED.fullmatch(raw.strip())
        if located:
            problems.append((located["file"], int(located["line"]), int(located["col"]), located["text"]))
        elif problems and raw.strip():
            file, line, col, text = problems[-1]
            problems[-1] = (file, line, col, f"{text}\n{raw.strip()}")
        elif raw.strip():
            problems.append((None, None, None, raw.strip()))
    return problems


def summary_document(results: Sequence[EntryResult], exit_code: int) -> str:
    """The JSON summary file (`summary` output): exit code and one object per entry."""
    entries = [
        {
            "entry": r.entry,
            "job_id": r.job_id,
            "state": r.state,
            "exit_code": r.exit_code,
            "outcome": r.outcome.name,
            "queue_seconds": r.queue_seconds,
            "run_seconds": r.run_seconds,
            "output_bytes": r.output_bytes,
            "remote_dir": r.remote_dir,
            "message": r.message,
            "artifacts_dir": r.artifacts_dir,
        }
        for r in results
    ]
    return json.dumps({"exit_code": exit_code, "entries": entries}, indent=2) + "\n"


def step_summary(results: Sequence[EntryResult], exit_code: int, run_url: str | None) -> str:
    """Markdown for $GITHUB_STEP_SUMMARY: a table, then the failing tail of each failed entry."""
    parts = [
        f"### ci-runner: {verdict_line(results, exit_code)}\n\n",
        "| entry | state | exit code | queue time | run time | artifacts |\n",
        "| --- | --- | --- | --- | --- | --- |\n",
    ]
    for r in results:
        cells = (
            r.entry,
            f"{_ICONS[r.outcome]} {r.state}",
            format_exit_code(r.exit_code),
            format_duration(r.queue_seconds),
            format_duration(r.run_seconds),
            _artifacts_cell(r.artifacts_dir, run_url),
        )
        parts.append("| " + " | ".join(_cell(c) if i != 5 else c for i, c in enumerate(cells)) + " |\n")
    for r in results:
        if r.outcome is Outcome.PASSED:
            continue
        tail = tail_lines(r.tail, TAIL_LINES, TAIL_CHARS)
        heading = _html(f"{r.entry}: {r.outcome.name} ({r.state}" + (
            "" if r.exit_code is None else f", exit code {r.exit_code}") + ")")
        parts.append(f"\n<details><summary>{heading}</summary>\n\n")
        if r.message:
            parts.append(f"{_html(r.message)}\n\n")
        if tail:
            fence = "`" * max(3, _longest_backtick_run(tail) + 1)
            parts.append(f"{fence}text\n{tail}\n{fence}\n\n")
        parts.append("</details>\n")
    text = "".join(parts)
    if len(text) > MAX_SUMMARY_CHARS:
        text = text[:MAX_SUMMARY_CHARS] + "\n\n(summary truncated)\n"
    return text


def _artifacts_cell(artifacts_dir: str | None, run_url: str | None) -> str:
    if not artifacts_dir:
        return "-"
    if run_url:
        return f"[{_cell(artifacts_dir)}]({run_url}#artifacts)"
    return f"`{_cell(artifacts_dir).replace('`', '')}`"


def _cell(text: str) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return _html(" ".join(text.split())).replace("|", "\\|")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest
