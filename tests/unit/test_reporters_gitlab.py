"""GitLabReporter: exact section markers, prefixed lines, dotenv and JUnit report files."""

from __future__ import annotations

import io
from pathlib import Path

from helpers.entry_results import results_with

from ci_runner.ci import CIContext, CIPaths
from ci_runner.reporters import for_context
from ci_runner.reporters.gitlab import GitLabReporter, dotenv_text, section_name
from ci_runner.slurm_states import Outcome

E = "\x1b"


result = results_with(job_id="42", queue_seconds=1.0, run_seconds=5.0, output_bytes=9, remote_root="/scratch/run")


def test_single_entry_section_and_report_files(tmp_path: Path) -> None:
    out = io.StringIO()
    clock = iter([1700000000.7, 1700000042.2])
    gl = GitLabReporter(out, entries=["gcc 4/x"], report_dir=tmp_path, clock=lambda: next(clock))
    gl.entry_submitted("gcc 4/x", "42", "/scratch/run/gcc")
    gl.entry_output("gcc 4/x", f"{E}[33myellow\nstill\nhalf")
    gl.entry_finished(result("gcc 4/x"))
    gl.run_finished([result("gcc 4/x")], 0)
    assert out.getvalue() == (
        f"{E}[0Ksection_start:1700000000:ci_runner_gcc_4_x\r{E}[0Kci-runner: gcc 4/x (Slurm job 42)\n"
        "ci-runner: gcc 4/x: submitted as Slurm job 42 in /scratch/run/gcc\n"
        f"{E}[33myellow{E}[0m\n"
        f"{E}[33mstill{E}[0m\n"
        f"{E}[33mhalf{E}[0m\n"
        f"{E}[0Ksection_end:1700000042:ci_runner_gcc_4_x\r{E}[0K\n"
        "ci-runner: gcc 4/x: PASSED (COMPLETED, exit code 0, ran 5s)\n"
        "ci-runner: summary\n"
        "entry    state      exit code  queue time  run time  output bytes\n"
        f"gcc 4/x  {E}[32mCOMPLETED{E}[0m  0          1s          5s        9\n"
        "ci-runner: all 1 entry passed; exit code 0\n"
        f"ci-runner: JUnit report: {tmp_path / 'ci-runner-junit.xml'}\n"
        f"ci-runner: dotenv report: {tmp_path / 'ci-runner.env'}\n"
    )
    assert (tmp_path / "ci-runner.env").read_text() == (
        "CI_RUNNER_EXIT_CODE=0\n"
        "CI_RUNNER_JOB_ID_GCC_4_X=42\n"
        "CI_RUNNER_STATE_GCC_4_X=COMPLETED\n"
    )
    assert 'tests="1" failures="0"' in (tmp_path / "ci-runner-junit.xml").read_text()


def test_side_by_side_entries_are_prefixed_without_sections(tmp_path: Path) -> None:
    out = io.StringIO()
    gl = GitLabReporter(out, entries=["a", "b"], report_dir=None, clock=lambda: 0)
    gl.entry_submitted("a", "1", "/r/a")
    gl.entry_output("a", "one\ntw")
    gl.entry_output("b", "bee\n")
    gl.entry_finished(result("a", Outcome.FAILED, state="FAILED", exit_code=3))
    assert out.getvalue() == (
        "ci-runner: a: submitted as Slurm job 1 in /r/a\n"
        "[a] one\n"
        "[b] bee\n"
        "[a] tw\n"
        "ci-runner: a: FAILED (FAILED, exit code 3, ran 5s)\n"
    )


def test_dotenv_keys_are_sanitised_unique_and_limited() -> None:
    results = [result("gcc-4"), result("gcc.4", state="CANCELLED by 0", job_id=None)]
    text, left_out = dotenv_text(results, 130)
    assert text == (
        "CI_RUNNER_EXIT_CODE=130\n"
        "CI_RUNNER_JOB_ID_GCC_4=42\nCI_RUNNER_STATE_GCC_4=COMPLETED\n"
        "CI_RUNNER_JOB_ID_GCC_4_2=\nCI_RUNNER_STATE_GCC_4_2=CANCELLED by 0\n"
    )
    assert left_out == 0
    many = [result(f"e{i}") for i in range(12)]
    text, left_out = dotenv_text(many, 0)
    assert len(text.splitlines()) == 19 and left_out == 3


def test_section_names_are_safe() -> None:
    assert section_name("a b:c[1]") == "ci_runner_a_b_c_1_"


def test_for_context_gitlab_writes_into_ci_project_dir(tmp_path: Path) -> None:
    ci = CIContext(provider="gitlab", sha="c" * 40, ref="main", repo_url="https://gitlab.example/g/p.git",
                   run_id="gl-1-2", paths=CIPaths(gitlab_project_dir=tmp_path))
    gl = for_context(ci, io.StringIO(), entries=["x"])
    assert isinstance(gl, GitLabReporter)
    gl.run_finished([result("x")], 0)
    assert (tmp_path / "ci-runner.env").read_text().startswith("CI_RUNNER_EXIT_CODE=0\n")
    assert (tmp_path / "ci-runner-junit.xml").is_file()


def test_for_context_gitlab_falls_back_to_cwd_when_the_project_dir_is_not_here(tmp_path: Path,
                                                                              monkeypatch: object) -> None:
    ci = CIContext(provider="gitlab", sha="c" * 40, ref="main", repo_url="https://gitlab.example/g/p.git",
                   run_id="gl-1-2", paths=CIPaths(gitlab_project_dir=tmp_path / "builds" / "missing"))
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    for_context(ci, io.StringIO(), entries=["x"]).run_finished([result("x")], 0)
    assert (tmp_path / "ci-runner.env").is_file() and not (tmp_path / "builds").exists()
