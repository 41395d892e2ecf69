"""Control sequences in job output: one rule on every CI (GitHub, GitLab, plain/Jenkins).

Each hostile sequence is shown as visible text, colour (SGR) stays, a sequence split across two output
chunks is caught, the text around it is unchanged, and ci-runner's own sections and groups still open
and close where ci-runner put them.
"""

from __future__ import annotations

import io
import re
from typing import Callable

import pytest

from helpers.entry_results import results_with, tokens
from ci_runner.reporters.base import LogReporter
from ci_runner.reporters.controls import log_line, neutralise
from ci_runner.reporters.github import GitHubReporter
from ci_runner.reporters.gitlab import GitLabReporter
from ci_runner.reporters.plain import PlainTextReporter
from ci_runner.reporters.text import tail_lines

E = "\x1b"

# (kind, what the job prints, what the log shows): written out by hand, not computed.
HOSTILE = [
    ("gitlab-section-start", f"{E}[0Ksection_start:1700000000:fake[collapsed=true]\r{E}[0K",
     "␛[0Ksection_start:1700000000:fake[collapsed=true]␍␛[0K"),
    ("gitlab-section-start-bare", "section_start:1700000000:fake\r\x1b[0K", "section_start:1700000000:fake␍␛[0K"),
    ("gitlab-section-end", f"{E}[0Ksection_end:1700000000:ci_runner_gcc\r{E}[0K",
     "␛[0Ksection_end:1700000000:ci_runner_gcc␍␛[0K"),
    ("gitlab-section-end-bare", f"section_end:1700000000:ci_runner_gcc\r{E}[0K",
     "section_end:1700000000:ci_runner_gcc␍␛[0K"),
    ("erase-line", f"a{E}[Kb{E}[0Kc{E}[1Kd{E}[2K", "a␛[Kb␛[0Kc␛[1Kd␛[2K"),
    ("erase-display", f"{E}[J{E}[0J{E}[2J{E}[3J", "␛[J␛[0J␛[2J␛[3J"),
    ("cursor-move", f"{E}[A{E}[2B{E}[3C{E}[4D{E}[E{E}[F{E}[5G", "␛[A␛[2B␛[3C␛[4D␛[E␛[F␛[5G"),
    ("cursor-position", f"{E}[H{E}[1;1H{E}[2;3f", "␛[H␛[1;1H␛[2;3f"),
    ("cursor-save-restore", f"{E}7x{E}8{E}[sy{E}[u", "␛7x␛8␛[sy␛[u"),
    ("carriage-return", "tests failed: 3\rtests passed: all", "tests failed: 3␍tests passed: all"),
    ("backspace", "FAIL\b\b\b\bPASS", "FAIL␈␈␈␈PASS"),
    ("osc-title-bel", f"{E}]0;fake title\x07", "␛]0;fake title␇"),
    ("osc-hyperlink-st", f"{E}]8;;https://evil.example/{E}\\docs{E}]8;;{E}\\", "␛]8;;https://evil.example/␛\\docs␛]8;;␛\\"),
    ("csi-private", f"{E}[?25l{E}[?1049h", "␛[?25l␛[?1049h"),
    ("csi-not-sgr-m", f"{E}[>4;2m", "␛[>4;2m"),
    ("csi-scroll-insert-delete", f"{E}[2S{E}[3T{E}[L{E}[M{E}[P", "␛[2S␛[3T␛[L␛[M␛[P"),
    ("reset-and-dcs", f"{E}c{E}P1$r{E}\\", "␛c␛P1$r␛\\"),
    ("c1-csi-osc", "\x9b2K\x9d0;t\x07\x85", "␛[2K␛]0;t␇␛E"),
    ("other-c0", "\x0b\x0c\x1c\x7f", "␋␌␜␡"),
]

AROUND = ("vor ü 漢字 🎉 ", " nach é ✓")  # multi-byte text on both sides stays byte-exact


result = results_with(job_id="7", queue_seconds=1.0, run_seconds=2.0, output_bytes=3, remote_root="/r")



REPORTERS: dict[str, Callable[[io.StringIO, list[str]], LogReporter]] = {
    "github": lambda out, entries: GitHubReporter(out, entries=entries, token=tokens()),
    "gitlab": lambda out, entries: GitLabReporter(out, entries=entries, clock=lambda: 1800000000),
    "plain": lambda out, entries: PlainTextReporter(out, entries=entries),
    "plain-color": lambda out, entries: PlainTextReporter(out, color=True, entries=entries),
}


def job_lines(ci: str, chunks: list[str], entries: tuple[str, ...] = ("gcc",)) -> list[str]:
    """The log lines that are job output, for `chunks` of entry `gcc`'s output (ci-runner's own removed)."""
    out = io.StringIO()
    reporter = REPORTERS[ci](out, list(entries))
    reporter.entry_submitted("gcc", "7", "/r/gcc")
    for chunk in chunks:
        reporter.entry_output("gcc", chunk)
    reporter.entry_finished(result("gcc"))
    own = ("ci-runner: ", "::", f"{E}[0Ksection_")
    return [line for line in out.getvalue().split("\n") if line and not line.startswith(own)]


@pytest.mark.parametrize("ci", REPORTERS)
@pytest.mark.parametrize(("kind", "raw", "shown"), HOSTILE, ids=[kind for kind, _, _ in HOSTILE])
def test_each_sequence_kind_is_shown_as_text_on_every_ci(ci: str, kind: str, raw: str, shown: str) -> None:
    before, after = AROUND
    assert job_lines(ci, [f"{before}{raw}{after}\n"]) == [f"{before}{shown}{after}"]


@pytest.mark.parametrize("ci", REPORTERS)
@pytest.mark.parametrize(("kind", "raw", "shown"), HOSTILE, ids=[kind for kind, _, _ in HOSTILE])
def test_a_sequence_split_across_two_chunks_is_still_neutralised(ci: str, kind: str, raw: str, shown: str) -> None:
    before, after = AROUND
    for cut in range(1, len(raw)):
        chunks = [before + raw[:cut], raw[cut:] + after + "\n"]
        assert job_lines(ci, chunks) == [f"{before}{shown}{after}"], (kind, cut)


@pytest.mark.parametrize("ci", ["github", "gitlab", "plain-color"])
def test_colour_stays_and_hostile_sequences_inside_it_are_text(ci: str) -> None:
    lines = job_lines(ci, [f"{E}[1;31mred {E}[2Kstill red{E}[0m plain {E}[38;2;1;2;3m{E}[4:3mrgb{E}[m\n"])
    reset = f"{E}[0m" if ci == "plain-color" else ""  # plain resets every coloured line; the others track
    assert lines == [f"{E}[1;31mred ␛[2Kstill red{E}[0m plain {E}[38;2;1;2;3m{E}[4:3mrgb{E}[m{reset}"]


def test_plain_without_colour_strips_sgr_and_shows_the_rest() -> None:
    assert job_lines("plain", [f"{E}[31mred{E}[0m {E}[2K\r{E}]0;t\x07\n"]) == ["red ␛[2K␍␛]0;t␇"]


@pytest.mark.parametrize("ci", REPORTERS)
def test_line_ends_and_nul_keep_their_meaning(ci: str) -> None:
    chunks = ["crlf\r", "\nprogress 10%\r20%\r\r\n", "n\x00ul\ttab\nno newline at the end\r"]
    assert job_lines(ci, chunks) == ["crlf", "progress 10%␍20%", "nul\ttab", "no newline at the end"]


@pytest.mark.parametrize("ci", REPORTERS)
def test_a_bare_cr_cannot_forge_another_entrys_line_side_by_side(ci: str) -> None:
    lines = job_lines(ci, ["ok\r[other] forged line\n"], entries=("gcc", "other"))
    assert [strip_prefix_colour(line) for line in lines] == ["[gcc] ok␍[other] forged line"]


def strip_prefix_colour(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line)


# GitLab's own pattern (Gitlab::Regex.build_trace_section_regex): the `\r\e[0K` suffix is required.
GITLAB_SECTION = re.compile(r"section_(start|end):(\d+):([a-zA-Z0-9_.-]+)(\[\w+=\w+(?:, ?\w+=\w+)*\])?\r\x1b\[0K")


def test_gitlab_sections_are_ci_runners_alone_after_hostile_output() -> None:
    out = io.StringIO()
    gl = GitLabReporter(out, entries=["gcc"], clock=lambda: 1800000000)
    gl.entry_submitted("gcc", "7", "/r/gcc")
    hostile = "".join(raw for kind, raw, _ in HOSTILE if kind.startswith("gitlab-"))
    gl.entry_output("gcc", f"{E}[33mü {hostile[:17]}")
    gl.entry_output("gcc", f"{hostile[17:]} 漢\n")
    gl.entry_finished(result("gcc"))
    log = out.getvalue()
    assert [m.group(1, 2, 3, 4) for m in GITLAB_SECTION.finditer(log)] == [
        ("start", "1800000000", "ci_runner_gcc", None),
        ("end", "1800000000", "ci_runner_gcc", None),
    ]
    assert log.endswith(
        f"{E}[33mü ␛[0Ksection_start:1700000000:fake[collapsed=true]␍␛[0Ksection_start:1700000000:fake␍␛[0K"
        f"␛[0Ksection_end:1700000000:ci_runner_gcc␍␛[0Ksection_end:1700000000:ci_runner_gcc␍␛[0K 漢{E}[0m\n"
        f"{E}[0Ksection_end:1800000000:ci_runner_gcc\r{E}[0K\n"
        "ci-runner: gcc: PASSED (COMPLETED, exit code 0, ran 2s)\n"
    )


def test_github_group_closes_after_hostile_output() -> None:
    out = io.StringIO()
    gh = GitHubReporter(out, entries=["gcc"], token=tokens())
    gh.entry_submitted("gcc", "7", "/r/gcc")
    gh.entry_output("gcc", f"x\r::endgroup::\r::group::fake{E}[1A{E}")
    gh.entry_output("gcc", "[2K\n")
    gh.entry_finished(result("gcc"))
    assert out.getvalue() == (
        "::group::gcc (Slurm job 7)\n"
        "ci-runner: gcc: submitted as Slurm job 7 in /r/gcc\n"
        "::stop-commands::tok1\n"
        "x␍::endgroup::␍::group::fake␛[1A␛[2K\n"
        "::tok1::\n"
        "::endgroup::\n"
        "ci-runner: gcc: PASSED (COMPLETED, exit code 0, ran 2s)\n"
    )


def test_neutralise_keeps_text_without_controls_identical() -> None:
    text = "plain ASCII, ü 漢字 🎉, U+FFFD \ufffd, tab\tand NBSP\u00a0and U+2028\u2028"
    assert neutralise(text) == text
    assert log_line(text + "\r\r") == text


def test_summary_tail_follows_the_same_rule() -> None:
    tail = f"ok\r\n{E}[31mboom{E}[0m\rover{E}[2K\n"
    assert tail_lines(tail, 10, 1000) == "ok\nboom␍over␛[2K"
