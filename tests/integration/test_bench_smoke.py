"""The benchmark scripts still run: `bench/run_all.py --smoke` prints every row, every tool filled in.

Timings are never asserted (they belong to bench/README.md); what is asserted is that every
measurement ran each tool to completion and produced numbers, so the benchmark cannot rot silently.
The local sandbox backend keeps this fast and independent of Slurm; the full benchmark uses Slurm.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL_COLUMNS = ("baseline-head", "baseline-tail", "ci-runner")
ROWS = ("1 log latency", "2 transfer amplification", "3 completeness", "4 API requests", "5 scale", "5b economy",
        "5c pack", "6 job end", "7 peak RSS", "8 cold start", "9 README quick start")
CI_RUNNER_ONLY = ("5c pack", "9 README quick start")  # pack mode, the example: the baselines have no such thing


@pytest.mark.slow
def test_smoke_run_prints_every_row_for_baselines_and_ci_runner(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run_all.py"), "--smoke", "--backend", "local", "--json", str(report)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| metric")]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [
        next(title for title in _titles(rows) if title.startswith(prefix)) for prefix in ROWS]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        title, tool_cells = cells[0], cells[1:4]
        assert len(cells) == 7, row
        for tool, cell in zip(TOOL_COLUMNS, tool_cells):
            if title.startswith(CI_RUNNER_ONLY) and tool != "ci-runner":
                assert cell == "not run", row
                continue
            assert cell and cell not in ("not run", "n/a"), f"{title}: {tool} column is empty: {row}"
            assert not cell.startswith("error"), f"{title}: {tool}: {cell}\n{done.stderr[-3000:]}"
            assert "⚠" not in cell, f"{title}: a {tool} run did not pass: {cell}\n{done.stderr[-3000:]}"
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["smoke"] is True
    results = document["results"]
    assert set(results) == {"latency", "amplification", "completeness", "requests", "scale", "economy", "pack",
                            "exit", "rss", "coldstart", "quickstart"}
    packed = results["pack"]["ci-runner"]
    assert set(packed) == {"2", "queued-separate", "queued-packed"}, packed
    assert all(d["finished"] and d["delivered"] == 1.0 and d["exactly_once"] for d in packed.values()), packed
    for tool in TOOL_COLUMNS:
        idle = {kind: d for kind, d in results["requests"][tool].items() if kind.startswith("idle-")}
        assert set(idle) == {"idle-1", "idle-2"}, results["requests"][tool]
        assert all(d["idle_seconds"] > 0 and d["idle_per_minute"] >= 0 for d in idle.values())
        assert results["exit"][tool]["n"] == 1 and results["exit"][tool]["other_rows"]["n"] >= 1
        economy = results["economy"][tool]["2"]
        assert economy["finished"] and economy["delivered"] == 1.0 and economy["max"] >= economy["p50"]
    quick = results["quickstart"]["ci-runner"]
    # at least: systems, mkdir, upload, submit, one job list, one read, the artifact download
    assert quick["n"] == 1 and not quick["failure"] and quick["requests"][0] >= 7, quick


def test_a_tool_stopped_at_the_economy_time_limit_is_reported_as_killed() -> None:
    run_all = _run_all()
    killed = {"first_line": 3.0, "p50": 50.0, "max": 300.0, "wall": 615.0, "requests": 60, "429": 0,
              "exactly_once": False, "delivered": 0.25, "finished": False, "timeout": 600.0, "failure": "killed"}
    cell = run_all.cells("economy", {"64": killed})
    assert cell.startswith("64: killed after 600 s with 25.0 % of the lines, first 3.00 s") and "max 300 s" in cell
    assert run_all.economy_verdict({"64": killed}) == "MISSED (64: not exactly once, killed)"
    fine = dict(killed, exactly_once=True, delivered=1.0, finished=True, requests=100, failure="")
    assert run_all.economy_verdict({"16": fine, "64": fine}) == "met"
    assert run_all.economy_verdict({"16": fine}) == "n/a"  # issue 12 sets no target for 16 entries


def _run_all():  # type: ignore[no-untyped-def]
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench import run_all

    return run_all


def _titles(rows: list[str]) -> list[str]:
    return [row.split(" | ")[0].lstrip("| ") for row in rows]
