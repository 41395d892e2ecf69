"""GitHubReporter: exact log text, workflow-command safety, $GITHUB_OUTPUT and $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

import io
import json
from pathlib import Path

from helpers.entry_results import results_with, tokens

from ci_runner.ci import CIContext, CIPaths
from ci_runner.reporters import for_context
from ci_runner.reporters.github import GitHubReporter, command, escape_data, escape_property
from ci_runner.slurm_states import Outcome

JUNIT_WITH_FILE = """<?xml version="1.0"?>
<testsuite name="pytest" tests="2">
  <testcase classname="tests.test_x" name="test_ok" time="0.1"/>
  <testcase classname="tests.test_x" name="test_bad" file="tests/test_x.py" line="12" time="0.2">
    <failure message="assert 1 == 2&#10;more">trace</failure>
  </testcase>
</testsuite>
"""


result = results_with(job_id="7", queue_seconds=3.0, run_seconds=10.0, output_bytes=50, remote_root="/scratch/run")



def reporter(tmp_path: Path, out: io.StringIO, entries: list[str], run_url: str | None = None) -> GitHubReporter:
    return GitHubReporter(
        out, entries=entries, output_path=tmp_path / "output", summary_path=tmp_path / "summary.md",
        report_dir=tmp_path / "ws", run_url=run_url, token=tokens(),  # type: ignore[arg-type]
    )


def test_escaping() -> None:
    assert escape_data("50% a\r\nb") == "50%25 a%0D%0Ab"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    assert command("error", "x\ny", title="t: 1", file=None) == "::error title=t%3A 1::x%0Ay"


def test_single_entry_group_mask_stop_commands_and_annotations(tmp_path: Path) -> None:
    out = io.StringIO()
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT_WITH_FILE)
    gh = reporter(tmp_path, out, ["gcc"])
    gh.mask("p%ss\nword2")
    gh.entry_submitted("gcc", "7", "/scratch/run/gcc")
    gh.entry_output("gcc", "::add-mask::x\n##[error]fake\n\x1b[1;31mred ")
    gh.entry_output("gcc", "start\nstill red\x1b[0m plain\n")
    gh.entry_waiting("gcc", "RUNNING", None, 4.0)
    gh.entry_output("gcc", "tail without newline")
    failed = result("gcc", Outcome.FAILED, state="FAILED", exit_code=1, message="exit code 1",
                    junit_files=(str(junit),))
    gh.entry_finished(failed)
    assert out.getvalue() == (
        "::add-mask::p%25ss\n"
        "::add-mask::word2\n"
        "::group::gcc (Slurm job 7)\n"
        "ci-runner: gcc: submitted as Slurm job 7 in /scratch/run/gcc\n"
        "::stop-commands::tok1\n"
        "::add-mask::x\n"
        "##[error]fake\n"
        "\x1b[1;31mred start\x1b[0m\n"
        "\x1b[1;31mstill red\x1b[0m plain\n"
        "::tok1::\n"
        "ci-runner: gcc: RUNNING, waiting for 4s\n"
        "::stop-commands::tok2\n"
        "tail without newline\n"
        "::tok2::\n"
        "::endgroup::\n"
        "ci-runner: gcc: FAILED (FAILED, exit code 1, ran 10s): exit code 1\n"
        "::error title=ci-runner%3A gcc FAILED::gcc: FAILED (FAILED, exit code 1, ran 10s): exit code 1\n"
        "::error file=tests/test_x.py,line=12,title=gcc%3A tests.test_x.test_bad::assert 1 == 2\n"
    )


def test_side_by_side_prefixes_and_cancelled_is_a_warning(tmp_path: Path) -> None:
    out = io.StringIO()
    gh = reporter(tmp_path, out, ["a", "b"])
    gh.entry_submitted("a", "1", "/r/a")
    gh.entry_output("a", "a1\na-part")
    gh.entry_output("b", "::error::b1\n")
    gh.entry_finished(result("b", Outcome.CANCELLED, state="CANCELLED by 0", exit_code=None, run_seconds=None))
    gh.entry_output("a", "-done\n")
    assert out.getvalue() == (
        "ci-runner: a: submitted as Slurm job 1 in /r/a\n"
        "::stop-commands::tok1\n"
        "[a] a1\n"
        "[b] ::error::b1\n"
        "::tok1::\n"
        "ci-runner: b: CANCELLED (CANCELLED by 0)\n"
        "::warning title=ci-runner%3A b CANCELLED::b: CANCELLED (CANCELLED by 0)\n"
        "::stop-commands::tok2\n"
        "[a] a-part-done\n"
    )


def test_run_finished_writes_outputs_summary_junit_and_redacts_secrets(tmp_path: Path) -> None:
    out = io.StringIO()
    (tmp_path / "output").write_text("earlier=1\n")
    gh = reporter(tmp_path, out, ["ok", "bad|x"], run_url="https://github.com/o/r/actions/runs/5")
    gh.mask("hunter22")
    passed = result("ok", artifacts_dir="ci-runner-artifacts/ok")
    failed = result("bad|x", Outcome.FAILED, state="FAILED", exit_code=2, job_id="8",
                    message="token hunter22 rejected", tail="line 1\n```\n\x1b[31mboom\x1b[0m hunter22\n")
    gh.entry_output("bad|x", "no newline")
    gh.run_finished([passed, failed], 1)
    ws = tmp_path / "ws"
    assert (tmp_path / "output").read_text() == (
        "earlier=1\n"
        "exit-code<<ghadelimiter_tok1\n1\nghadelimiter_tok1\n"
        'states<<ghadelimiter_tok2\n{"bad|x": "FAILED", "ok": "COMPLETED"}\nghadelimiter_tok2\n'
        'job-ids<<ghadelimiter_tok3\n{"bad|x": "8", "ok": "7"}\nghadelimiter_tok3\n'
        'outcomes<<ghadelimiter_tok4\n{"bad|x": "FAILED", "ok": "PASSED"}\nghadelimiter_tok4\n'
        f"summary<<ghadelimiter_tok5\n{ws / 'ci-runner-summary.json'}\nghadelimiter_tok5\n"
        f"junit<<ghadelimiter_tok6\n{ws / 'ci-runner-junit.xml'}\nghadelimiter_tok6\n"
    )
    assert (tmp_path / "summary.md").read_text() == (
        "### ci-runner: 1 of 2 entries did not pass; exit code 1\n"
        "\n"
        "| entry | state | exit code | queue time | run time | artifacts |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        "| ok | ✅ COMPLETED | 0 | 3s | 10s | [ci-runner-artifacts/ok](https://github.com/o/r/actions/runs/5#artifacts) |\n"
        "| bad\\|x | ❌ FAILED | 2 | 3s | 10s | - |\n"
        "\n"
        "<details><summary>bad|x: FAILED (FAILED, exit code 2)</summary>\n"
        "\n"
        "token *** rejected\n"
        "\n"
        "````text\n"
        "line 1\n"
        "```\n"
        "boom ***\n"
        "````\n"
        "\n"
        "</details>\n"
    )
    summary = json.loads((ws / "ci-runner-summary.json").read_text())
    assert summary["exit_code"] == 1
    assert [e["entry"] for e in summary["entries"]] == ["ok", "bad|x"]
    assert summary["entries"][1]["message"] == "token *** rejected"
    junit = (ws / "ci-runner-junit.xml").read_text()
    assert "hunter22" not in junit and 'name="bad|x"' in junit
    assert "\x1b" not in junit
    log = out.getvalue()
    assert "[bad|x] no newline" not in log  # run_finished does not print unfinished lines (entry_finished does)
    assert log.endswith(f"ci-runner: JUnit report: {ws / 'ci-runner-junit.xml'}\n")


def test_for_context_github_uses_the_context_paths(tmp_path: Path, monkeypatch: object) -> None:
    ci = CIContext(provider="github", sha="b" * 40, ref="refs/heads/main", repo_url="https://github.com/o/r.git",
                   run_id="gh-5-1-test", run_url="https://github.com/o/r/actions/runs/5",
                   paths=CIPaths(github_output=tmp_path / "o", github_step_summary=tmp_path / "s"))
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    gh = for_context(ci, io.StringIO(), entries=["e"])
    assert isinstance(gh, GitHubReporter)
    gh.run_finished([result("e")], 0)
    assert (tmp_path / "o").read_text().startswith("exit-code<<ghadelimiter_")
    assert (tmp_path / "s").read_text().startswith("### ci-runner: all 1 entry passed; exit code 0\n")
    assert (tmp_path / "ci-runner-junit.xml").is_file()
