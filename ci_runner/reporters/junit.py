"""JUnit XML: merge the entries' JUnit files into one report, plus one synthetic testcase per entry.

The synthetic suite `ci-runner` makes every entry visible in the CI's test report even when the
user's job writes no JUnit file. User files are read robustly: a missing, oversized or invalid file,
or one whose root is not <testsuites>/<testsuite>, becomes a warning, never a crash. Text that XML
1.0 cannot carry (escape codes, control characters) is removed before writing.

Paths the job wrote into `classname`/`file` inside its checkout on the cluster
(`<workdir>/<run-id>/<entry>/src/...`) become relative to the checkout: the same test keeps its name
from run to run (CIs compare reports by name), and a file annotation points into the repository.
ReFrame's files (`<testsuite package="reframe">`: one testcase per check and case, named
`Check @system:partition+environ`, classname the check's file) also get `file` from that classname,
and a failure's message becomes its text's first line, `phase: reason`, where ReFrame puts only the phase.
"""

from __future__ import annotations

import copy
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ci_runner.reporters.result import EntryResult
from ci_runner.reporters.text import format_duration, strip_ansi
from ci_runner.slurm_states import Outcome

JUNIT_NAME = "ci-runner-junit.xml"  # the merged report's file name, in the directory the CI reads reports from
MAX_FILE_BYTES = 50 * 1024 * 1024
SYNTHETIC_SUITE = "ci-runner"
_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_COUNTS = ("tests", "failures", "errors", "skipped")

Warn = Callable[..., None]  # called as warn(message, entry)


@dataclass(frozen=True)
class JUnitFailure:
    """A failed or errored testcase from an entry's JUnit files."""

    entry: str
    name: str           # classname.name (or name alone)
    message: str        # first line of the failure message
    file: str | None
    line: int | None


def xml_text(text: str) -> str:
    """`text` without escape codes and without characters XML 1.0 cannot carry."""
    return _XML_INVALID.sub("", strip_ansi(text))


def read_suites(path: str, entry: str, warn: Warn) -> list[ET.Element]:
    """The <testsuite> elements of one JUnit file; [] (with a warning) when it cannot be used."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            warn(f"JUnit file {path} is {size} bytes (limit {MAX_FILE_BYTES}); skipped", entry)
            return []
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        warn(f"JUnit file {path} is not valid XML ({error}); skipped", entry)
        return []
    except OSError as error:
        warn(f"cannot read JUnit file {path} ({error.strerror or error}); skipped", entry)
        return []
    if root.tag == "testsuite":
        return [root]
    if root.tag == "testsuites":
        return list(_leaf_suites(root))
    warn(f"JUnit file {path} has root <{root.tag}>, not <testsuites> or <testsuite>; skipped", entry)
    return []


def entry_file_suites(path: str, result: EntryResult, warn: Warn) -> list[ET.Element]:
    """The suites of one of the entry's JUnit files as the CI's report shows them (copies; see the
    module docstring): checkout paths made relative, ReFrame's testcases given their file and reason."""
    checkout = "/" + "/".join(result.remote_dir.rstrip("/").split("/")[-2:]) + "/src/"  # see layout.py
    suites = [copy.deepcopy(suite) for suite in read_suites(path, result.entry, warn)]
    for suite in suites:
        for case in suite.iter("testcase"):
            for key in ("classname", "file"):
                _, inside, relative = (case.get(key) or "").partition(checkout)
                if inside and relative:
                    case.set(key, relative)
            if suite.get("package") == "reframe":
                _reframe_case(case)
    return suites


def _reframe_case(case: ET.Element) -> None:
    """ReFrame's classname is the check's file; its failure's message is the phase (`sanity`), its text
    `phase: reason`."""
    classname = case.get("classname") or ""
    if classname.endswith(".py") and not classname.startswith("/") and not case.get("file"):
        case.set("file", classname)
    failure = case.find("failure")
    text = (failure.text or "").strip() if failure is not None else ""
    if failure is not None and text:
        failure.set("message", text.splitlines()[0])


def _leaf_suites(element: ET.Element) -> Iterator[ET.Element]:
    """Suites holding testcases; nested suites (some tools emit them) are flattened."""
    for suite in element.findall("testsuite"):
        if suite.find("testsuite") is not None:
            yield from _leaf_suites(suite)
        else:
            yield suite


def synthetic_testcase(result: EntryResult) -> ET.Element:
    """One testcase for the entry: failure (FAILED/TIMEOUT), error (INFRA) or skipped (CANCELLED)."""
    case = ET.Element("testcase", classname=SYNTHETIC_SUITE, name=result.entry)
    case.set("time", f"{result.run_seconds or 0:.3f}")
    state = f"{result.state}" + ("" if result.exit_code is None else f", exit code {result.exit_code}")
    summary = xml_text(f"{result.outcome.name}: {state}" + (f": {result.message}" if result.message else ""))
    if result.outcome in (Outcome.FAILED, Outcome.TIMEOUT):
        child = ET.SubElement(case, "failure", message=summary, type=result.outcome.name)
        child.text = xml_text(result.tail)
    elif result.outcome in (Outcome.INFRA, Outcome.CONFIG):
        child = ET.SubElement(case, "error", message=summary, type=result.outcome.name)
        child.text = xml_text(result.tail)
    elif result.outcome is Outcome.CANCELLED:
        ET.SubElement(case, "skipped", message=summary)
    out = ET.SubElement(case, "system-out")
    out.text = xml_text(
        f"Slurm job {result.job_id or '-'}: {state}\n"
        f"queue time {format_duration(result.queue_seconds)}, run time {format_duration(result.run_seconds)}\n"
        f"remote directory {result.remote_dir}\n"
    )
    return case


def build_report(results: Sequence[EntryResult], warn: Warn) -> ET.Element:
    """<testsuites>: the synthetic `ci-runner` suite, then every entry's own suites.

    Suite names get the entry as prefix (`gcc-4/pytest`); with several entries, testcase classnames
    do too, so the same test run by two entries stays two testcases in the CI's report.
    """
    root = ET.Element("testsuites", name="ci-runner")
    synthetic = ET.SubElement(root, "testsuite", name=SYNTHETIC_SUITE)
    for result in results:
        synthetic.append(synthetic_testcase(result))
    _count(synthetic)
    several = len(results) > 1
    for result in results:
        for path in result.junit_files:
            for suite in entry_file_suites(path, result, warn):
                root.append(_entry_suite(suite, result.entry, several))
    _count(root)
    return root


def _entry_suite(own: ET.Element, entry: str, prefix_classnames: bool) -> ET.Element:
    own.set("name", f"{entry}/{own.get('name') or 'tests'}")
    if prefix_classnames:
        for case in own.iter("testcase"):
            case.set("classname", f"{entry}.{case.get('classname')}" if case.get("classname") else entry)
    _count(own)
    return own


def _count(element: ET.Element) -> None:
    """Recompute tests/failures/errors/skipped (and time, when every case has one) from the testcases."""
    cases = list(element.iter("testcase"))
    counts = {
        "tests": len(cases),
        "failures": sum(1 for c in cases if c.find("failure") is not None),
        "errors": sum(1 for c in cases if c.find("error") is not None),
        "skipped": sum(1 for c in cases if c.find("skipped") is not None),
    }
    for key in _COUNTS:
        element.set(key, str(counts[key]))
    times = [_float(c.get("time")) for c in cases]
    if times and all(t is not None for t in times):
        element.set("time", f"{sum(t for t in times if t is not None):.3f}")


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def failures(result: EntryResult, warn: Warn) -> list[JUnitFailure]:
    """Failed/errored testcases in the entry's JUnit files, with file/line where the file says."""
    found = []
    for path in result.junit_files:
        for suite in entry_file_suites(path, result, warn):
            for case in suite.iter("testcase"):
                problem = case.find("failure")
                if problem is None:
                    problem = case.find("error")
                if problem is None:
                    continue
                name = ".".join(p for p in (case.get("classname"), case.get("name")) if p)
                message = problem.get("message") or (problem.text or "").strip() or problem.tag
                line = case.get("line")
                found.append(JUnitFailure(
                    entry=result.entry,
                    name=name,
                    message=message.strip().splitlines()[0] if message.strip() else problem.tag,
                    file=case.get("file") or None,
                    line=int(line) if line and line.isdigit() else None,
                ))
    return found


def write(report: ET.Element, path: Path) -> None:
    """Write the report (UTF-8, XML declaration), replacing the file atomically."""
    ET.indent(report)
    data = ET.tostring(report, encoding="utf-8", xml_declaration=True) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
