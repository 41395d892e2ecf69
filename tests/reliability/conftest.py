"""Fixtures of the reliability suite and the scenario → result table printed at the end of the session.

Tests record what they measured with `record_scenario(...)` (a row of the table); the outcome column
comes from pytest itself, so a failing scenario shows up as FAILED with its numbers. The row travels in
the test's report (`user_properties`), so the table is whole when a worker process (pytest-xdist) ran
the test and the main process prints it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers.reliability_harness import SandboxProcess

_ROWS: dict[str, dict[str, Any]] = {}
_OUTCOMES: dict[str, str] = {}
SCENARIO = "reliability scenario"  # the user_properties key of a row's values
COLUMNS = ("scenario", "result", "exit", "expected", "bytes", "faults", "max req/60s", "budget", "note")


@pytest.fixture
def record_scenario(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`record_scenario(exit=..., expected=..., bytes=..., ...)`: this test's row of the summary table."""
    def record(**values: Any) -> None:
        request.node.user_properties.append((SCENARIO, values))

    return record


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[Callable[..., SandboxProcess]]:
    """Start `ci-runner sandbox` processes (fixed port, root, client id/secret); all stopped at the end."""
    started: list[SandboxProcess] = []

    def make(fault_args: tuple[str, ...] = (), backend: str = "slurm") -> SandboxProcess:
        root = tmp_path / "cluster"
        root.mkdir(exist_ok=True)
        sandbox = SandboxProcess(root=root, secret=f"reliability-secret-{secrets.token_hex(8)}",
                                 fault_args=fault_args, backend=backend)
        started.append(sandbox)
        sandbox.start()
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/reliability/" not in report.nodeid.replace("\\", "/"):
        return
    for key, values in report.user_properties:
        if key == SCENARIO:
            name = report.nodeid.rsplit("::", 1)[-1].replace("test_", "", 1)
            _ROWS.setdefault(report.nodeid, {"scenario": name}).update(values)  # type: ignore[arg-type]
    if report.when == "call" or report.outcome != "passed":
        if report.when == "call" and hasattr(report, "wasxfail"):
            _OUTCOMES[report.nodeid] = "XFAIL" if report.skipped else "XPASS"
        elif report.nodeid not in _OUTCOMES or report.outcome != "passed":
            _OUTCOMES[report.nodeid] = report.outcome.upper()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _OUTCOMES:
        return
    rows = []
    for nodeid, outcome in _OUTCOMES.items():
        row = dict(_ROWS.get(nodeid, {"scenario": nodeid.rsplit("::", 1)[-1].replace("test_", "", 1)}))
        row["result"] = outcome
        rows.append([str(row.get(column, "")) for column in COLUMNS])
    widths = [max(len(column), *(len(r[i]) for r in rows)) for i, column in enumerate(COLUMNS)]
    terminalreporter.section("reliability scenarios")
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    for row in rows:
        terminalreporter.write_line("  ".join(v.ljust(w) for v, w in zip(row, widths)))
