"""JUnit merge: synthetic testcases per entry, user files merged, broken files become warnings."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ci_runner.reporters import junit
from ci_runner.reporters.base import EntryResult
from ci_runner.states import Outcome


def result(entry: str, outcome: Outcome = Outcome.PASSED, **kw: object) -> EntryResult:
    values: dict[str, object] = dict(
        entry=entry, job_id="9", state="COMPLETED", exit_code=0, outcome=outcome,
        queue_seconds=1.0, run_seconds=2.5, output_bytes=3, remote_dir=f"/r/{entry}",
    )
    values.update(kw)
    return EntryResult(**values)  # type: ignore[arg-type]


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
