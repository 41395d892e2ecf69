"""GitLab CI: collapsible log sections, a dotenv report and a merged JUnit report.

Log layout (what GitHub and GitLab share is in folding.py)
- One entry in the run: its output goes in a section
  `\\e[0Ksection_start:<unix ts>:ci_runner_<entry>\\r\\e[0K<header>` … `\\e[0Ksection_end:<ts>:…\\r\\e[0K`.
- Several entries side by side: sections cannot interleave, so every output line is prefixed
  `[entry] ` (whole lines only) and each entry's end is one `ci-runner: <entry>: <OUTCOME> (...)` line.
Job colours are kept; a style still active at a line's end is reset there and re-emitted on the
entry's next line, so one entry's colour never bleeds into another entry's line. Job lines go through
`controls.log_line` first: a job's own `section_start:`/`section_end:` markers, erase and cursor sequences
are printed as visible text, so only ci-runner opens and closes sections.

Files (in CI_PROJECT_DIR, for `artifacts:reports`): `ci-runner.env` (dotenv: CI_RUNNER_EXIT_CODE and
CI_RUNNER_JOB_ID_<ENTRY> / CI_RUNNER_STATE_<ENTRY>) and `ci-runner-junit.xml`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Sequence, TextIO

from ci_runner.reporters.folding import FoldingReporter
from ci_runner.reporters.result import EntryResult

DOTENV_NAME = "ci-runner.env"
MAX_DOTENV_VARIABLES = 20  # GitLab's default limit for a dotenv report (plan limit `dotenv_variables`)

_SECTION_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_KEY_UNSAFE = re.compile(r"[^A-Z0-9_]")


def section_name(entry: str) -> str:
    """A GitLab section name for the entry: `ci_runner_` + the entry with unsafe characters as `_`."""
    return "ci_runner_" + _SECTION_UNSAFE.sub("_", entry)


def section_start(name: str, header: str, timestamp: int, collapsed: bool = False) -> str:
    option = "[collapsed=true]" if collapsed else ""
    return f"\x1b[0Ksection_start:{timestamp}:{name}{option}\r\x1b[0K{header}"


def section_end(name: str, timestamp: int) -> str:
    return f"\x1b[0Ksection_end:{timestamp}:{name}\r\x1b[0K"


def dotenv_key(entry: str) -> str:
    """'gcc-4.2' → 'GCC_4_2'."""
    return _KEY_UNSAFE.sub("_", entry.upper())


def dotenv_text(results: Sequence[EntryResult], exit_code: int) -> tuple[str, int]:
    """The dotenv report, and how many entries did not fit under MAX_DOTENV_VARIABLES.

    Keys that collide after sanitising get `_2`, `_3`, ... in entry order.
    """
    lines = [f"CI_RUNNER_EXIT_CODE={exit_code}"]
    used: set[str] = set()
    left_out = 0
    for result in results:
        key = base = dotenv_key(result.entry)
        number = 1
        while key in used:
            number += 1
            key = f"{base}_{number}"
        used.add(key)
        if len(lines) + 2 > MAX_DOTENV_VARIABLES:
            left_out += 1
            continue
        lines.append(f"CI_RUNNER_JOB_ID_{key}={_dotenv_value(result.job_id or '')}")
        lines.append(f"CI_RUNNER_STATE_{key}={_dotenv_value(result.state)}")
    return "".join(line + "\n" for line in lines), left_out


def _dotenv_value(text: str) -> str:
    return " ".join(text.split())


class GitLabReporter(FoldingReporter):
    """Reporter for GitLab CI. `report_dir`: CI_PROJECT_DIR (None: no report files);
    `clock`: Unix time for section markers (tests pass a fixed one)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        entries: Sequence[str] | None = None,
        report_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        collapsed: bool = False,
    ) -> None:
        super().__init__(stream, entries=entries, report_dir=report_dir)
        self._clock = clock
        self._collapsed = collapsed

    def run_finished(self, results: Sequence[EntryResult], exit_code: int) -> None:
        super().run_finished(results, exit_code)
        if self._report_dir is None:
            return
        text, left_out = dotenv_text(results, exit_code)
        if left_out:
            self.warning(f"{DOTENV_NAME}: {left_out} entries left out (GitLab accepts {MAX_DOTENV_VARIABLES} variables)")
        path = self._report_dir / DOTENV_NAME
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as error:
            self.warning(f"could not write {path}: {error.strerror or error}")
            return
        self._message(f"dotenv report: {path}")

    def _block_start(self, entry: str, job_id: str) -> str:
        header = f"ci-runner: {entry} (Slurm job {job_id})"
        return section_start(section_name(entry), header, self._now(), self._collapsed)

    def _block_end(self, entry: str) -> str:
        return section_end(section_name(entry), self._now())

    def _now(self) -> int:
        return int(self._clock())
