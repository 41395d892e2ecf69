"""JUnit merge: synthetic testcases per entry, user files merged, broken files become warnings."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from helpers.entry_results import results_with

from ci_runner.reporters import junit
from ci_runner.slurm_states import Outcome


result = results_with(job_id="9", queue_seconds=1.0, run_seconds=2.5, output_bytes=3, remote_root="/r")


SUITES = """<testsuites><testsuite name="outer"><testsuite name="unit" tests="99">
<testcase classname="m" name="t1" time="0.5"/><testcase classname="m" name="t2" time="1">
<failure message="boom">x</failure></testcase></testsuite></testsuite></testsuites>"""


def test_merge_with_synthetic_cases_prefixes_and_counts(tmp_path: Path) -> None:
    good = tmp_path / "good.xml"
    good.write_text(SUITES)
    broken = tmp_path / "broken.xml"
    broken.write_text("<testsuite><testcase")
    other = tmp_path / "other.xml"
    other.write_text("<html/>")
    warnings: list[tuple[str, str | None]] = []
    results = [
        result("a", junit_files=(str(good), str(broken), str(tmp_path / "missing.xml"))),
        result("b", Outcome.INFRA, state="NODE_FAIL", exit_code=None, tail="\x1b[31mlost\x1b[0m \x01node",
               junit_files=(str(good), str(other))),
        result("c", Outcome.CANCELLED, state="CANCELLED by 0"),
    ]
    report = junit.build_report(results, lambda message, entry=None: warnings.append((message, entry)))
    assert [w[1] for w in warnings] == ["a", "a", "b"]
    assert "is not valid XML" in warnings[0][0] and "cannot read" in warnings[1][0] and "root <html>" in warnings[2][0]
    assert report.attrib == {"name": "ci-runner", "tests": "7", "failures": "2", "errors": "1", "skipped": "1", "time": "10.500"}
    suites = report.findall("testsuite")
    assert [s.get("name") for s in suites] == ["ci-runner", "a/unit", "b/unit"]
    assert suites[0].attrib["tests"] == "3" and suites[1].attrib["tests"] == "2"
    assert [c.get("classname") for c in suites[2].iter("testcase")] == ["b.m", "b.m"]
    error = suites[0].findall("testcase")[1].find("error")
    assert error is not None and error.text == "lost node"
    assert error.get("message") == "INFRA: NODE_FAIL"
    path = tmp_path / "out" / "merged.xml"
    junit.write(report, path)
    assert ET.parse(path).getroot().get("tests") == "7"


def test_single_entry_keeps_classnames_and_reads_failures(tmp_path: Path) -> None:
    good = tmp_path / "good.xml"
    good.write_text('<testsuite name="s"><testcase classname="k" name="t" file="src/x.py" line="7">'
                    '<error message="">Traceback\nline2</error></testcase></testsuite>')
    entry = result("only", Outcome.FAILED, junit_files=(str(good),))
    report = junit.build_report([entry], lambda *a: None)
    assert [c.get("classname") for c in report.iter("testcase")] == ["ci-runner", "k"]
    assert junit.failures(entry, lambda *a: None) == [
        junit.JUnitFailure(entry="only", name="k.t", message="Traceback", file="src/x.py", line=7)
    ]


# ReFrame 4.10.4's --report-junit file of examples/reframe (entry gnu, ProductCheck asked to fail), as
# written on the cluster under <workdir>/<run-id>/<entry>/src; only the workdir is shortened.
REFRAME_JUNIT = Path(__file__).resolve().parents[1] / "data" / "reframe-4.10.4-junit.xml"
CHECK_FILE = "examples/reframe/checks/example_checks.py"


def test_reframe_cases_keep_their_names_and_carry_file_phase_and_reason() -> None:
    """One testcase per check and case (`Check @system:partition+environ`); the remote checkout
    (which holds the run id) leaves the classname, which names the check's file; the failure's
    message is `phase: reason` (ReFrame puts only the phase there)."""
    entry = result("gnu", Outcome.FAILED, state="FAILED", exit_code=1, remote_dir="/scratch/me/ci-runner/gl-7-102/gnu",
                   junit_files=(str(REFRAME_JUNIT),))
    warnings: list[object] = []
    report = junit.build_report([entry], lambda *a: warnings.append(a))
    assert warnings == []
    suite = report.findall("testsuite")[1]
    assert suite.get("name") == "gnu/ReFrame run 0"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    hostname, product = suite.findall("testcase")
    assert hostname.attrib == {"classname": CHECK_FILE, "name": "HostnameCheck @cluster:alloc+gnu",
                               "time": "0.4509546756744384765625", "file": CHECK_FILE}
    assert list(hostname) == []  # passed
    assert (product.get("classname"), product.get("name")) == (CHECK_FILE, "ProductCheck @cluster:alloc+gnu")
    failure = product.find("failure")
    assert failure is not None
    assert failure.get("message") == "sanity: sanity error: 6 * 7 printed 42, expected 43"
    assert failure.text == "sanity: sanity error: 6 * 7 printed 42, expected 43"
    assert junit.failures(entry, lambda *a: None) == [junit.JUnitFailure(
        entry="gnu", name=f"{CHECK_FILE}.ProductCheck @cluster:alloc+gnu",
        message="sanity: sanity error: 6 * 7 printed 42, expected 43", file=CHECK_FILE, line=None)]


def test_checkout_paths_become_relative_even_behind_a_symlinked_workdir(tmp_path: Path) -> None:
    """A job sees its checkout's physical path (`/capstor/...` for a workdir `/scratch/...`): the part
    from `<run-id>/<entry>/src/` on is what names the file. Other paths and other tools' suites stay."""
    other = tmp_path / "other.xml"
    other.write_text('<testsuite name="pytest"><testcase classname="/capstor/me/ci/run-1/a/src/tests/test_x.py" '
                     'name="t" file="/capstor/me/ci/run-1/a/src/tests/test_x.py"/>'
                     '<testcase classname="/apps/checks/site.py" name="u"><failure message="phase">why</failure>'
                     '</testcase></testsuite>')
    entry = result("a", remote_dir="/scratch/me/ci/run-1/a", junit_files=(str(other),))
    cases = junit.build_report([entry], lambda *a: None).findall("testsuite")[1].findall("testcase")
    assert [(c.get("classname"), c.get("file")) for c in cases] == [("tests/test_x.py", "tests/test_x.py"),
                                                                    ("/apps/checks/site.py", None)]
    assert cases[1].find("failure").get("message") == "phase"  # not a ReFrame file: as written
