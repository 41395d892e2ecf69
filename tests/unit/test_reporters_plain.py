"""PlainTextReporter (Jenkins, shells): exact text for a fixed sequence of reporter calls."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from helpers.entry_results import results_with
from ci_runner.ci import CIContext, CIPaths
from ci_runner.reporters import for_context, supports_color
from ci_runner.reporters.plain import PlainTextReporter
from ci_runner.slurm_states import Outcome


result = results_with(job_id="101", queue_seconds=2.4, run_seconds=65.0, output_bytes=120, remote_root="/scratch/ci/run-1")


def test_single_entry_prints_plain_whole_lines_and_summary() -> None:
    out = io.StringIO()
    reporter = PlainTextReporter(out, entries=["gcc"])
    reporter.info("3 requests per minute")
    reporter.entry_submitted("gcc", "101", "/scratch/ci/run-1/gcc")
    reporter.entry_waiting("gcc", "PENDING", "Priority", 12.0)
    reporter.entry_output("gcc", "compil")
    assert out.getvalue().endswith("waiting for 12s\n")  # the partial line waits
    reporter.entry_output("gcc", "ing\r\n\x1b[32mok\x1b[0m\nlast line without newline")
    reporter.entry_finished(result("gcc"))
    reporter.run_finished([result("gcc")], 0)
    assert out.getvalue() == (
        "ci-runner: 3 requests per minute\n"
        "ci-runner: gcc: submitted as Slurm job 101 in /scratch/ci/run-1/gcc\n"
        "ci-runner: gcc: PENDING (Priority), waiting for 12s\n"
        "compiling\n"
        "ok\n"
        "last line without newline\n"
        "ci-runner: gcc: PASSED (COMPLETED, exit code 0, ran 1m 05s)\n"
        "ci-runner: summary\n"
        "entry  state      exit code  queue time  run time  output bytes\n"
        "gcc    COMPLETED  0          2s          1m 05s    120\n"
        "ci-runner: all 1 entry passed; exit code 0\n"
    )


def test_side_by_side_entries_are_prefixed_and_never_share_a_line() -> None:
    out = io.StringIO()
    reporter = PlainTextReporter(out, entries=["gcc", "nvhpc"])
    reporter.entry_output("gcc", "gcc: first half ")
    reporter.entry_output("nvhpc", "nvhpc line\nnvhpc part")
    reporter.entry_output("gcc", "second half\n")
    reporter.warning("slow queue", entry="nvhpc")
    reporter.error("API unreachable")
    failed = result("nvhpc", Outcome.TIMEOUT, state="TIMEOUT", exit_code=None, run_seconds=None,
                    queue_seconds=None, message="Slurm time limit reached")
    reporter.entry_finished(failed)
    reporter.entry_finished(result("gcc"))
    reporter.run_finished([result("gcc"), failed], 4)
    assert out.getvalue() == (
        "[nvhpc] nvhpc line\n"
        "[gcc] gcc: first half second half\n"
        "ci-runner: warning: nvhpc: slow queue\n"
        "ci-runner: error: API unreachable\n"
        "[nvhpc] nvhpc part\n"
        "ci-runner: nvhpc: TIMEOUT (TIMEOUT): Slurm time limit reached\n"
        "ci-runner: gcc: PASSED (COMPLETED, exit code 0, ran 1m 05s)\n"
        "ci-runner: summary\n"
        "entry  state      exit code  queue time  run time  output bytes\n"
        "gcc    COMPLETED  0          2s          1m 05s    120\n"
        "nvhpc  TIMEOUT    -          -           -         120\n"
        "ci-runner: 1 of 2 entries did not pass; exit code 4\n"
    )


def test_color_keeps_job_styles_and_resets_each_line() -> None:
    out = io.StringIO()
    reporter = PlainTextReporter(out, color=True, entries=["a", "b"])
    reporter.entry_output("a", "\x1b[31mred\n")
    assert out.getvalue() == "\x1b[36m[a]\x1b[0m \x1b[31mred\x1b[0m\n"


def test_mask_is_a_no_op_and_unknown_entries_mean_prefixes() -> None:
    out = io.StringIO()
    reporter = PlainTextReporter(out)
    reporter.mask("s3cret")
    reporter.entry_output("only", "x\n")
    assert out.getvalue() == "[only] x\n"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_supports_color_needs_tty_term_and_no_NO_COLOR() -> None:
    assert supports_color(_Tty(), {"TERM": "xterm-256color"})
    assert not supports_color(io.StringIO(), {"TERM": "xterm-256color"})
    assert not supports_color(_Tty(), {"TERM": "dumb"})
    assert not supports_color(_Tty(), {})
    assert not supports_color(_Tty(), {"TERM": "xterm", "NO_COLOR": "1"})


@pytest.mark.parametrize("environ,expected", [
    ({"FORCE_COLOR": "1"}, True),             # Jenkins with the AnsiColor plugin: a pipe, no TERM
    ({"FORCE_COLOR": "true"}, True),
    ({"CLICOLOR_FORCE": "1"}, True),
    ({"FORCE_COLOR": "0"}, False),
    ({"FORCE_COLOR": ""}, False),
    ({"CLICOLOR_FORCE": "0"}, False),
    ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False),  # NO_COLOR wins
    ({"FORCE_COLOR": "1", "NO_COLOR": ""}, True),    # an empty NO_COLOR is unset
])
def test_force_color_colours_a_pipe_and_no_color_wins(environ: dict[str, str], expected: bool) -> None:
    assert supports_color(io.StringIO(), environ) is expected


def test_jenkins_context_writes_junit_into_the_workspace(tmp_path: Path) -> None:
    ci = CIContext(provider="jenkins", sha="a" * 40, ref="main", repo_url="https://git.example/r.git",
                   run_id="jk-1", paths=CIPaths(jenkins_workspace=tmp_path))
    out = io.StringIO()
    reporter = for_context(ci, out, entries=["gcc"])
    assert type(reporter) is PlainTextReporter
    reporter.run_finished([result("gcc")], 0)
    assert (tmp_path / "ci-runner-junit.xml").is_file()
    assert out.getvalue().endswith(f"ci-runner: JUnit report: {tmp_path / 'ci-runner-junit.xml'}\n")
    assert "\x1b" not in out.getvalue()
