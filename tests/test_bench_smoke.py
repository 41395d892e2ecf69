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

REPO = Path(__file__).resolve().parent.parent
TOOL_COLUMNS = ("baseline-head", "baseline-tail", "ci-runner")
ROWS = ("1 log latency", "2 transfer amplification", "3 completeness", "4 API requests", "5 scale", "5b economy",
        "6 job end", "7 peak RSS", "8 cold start")


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
            assert cell and cell not in ("not run", "n/a"), f"{title}: {tool} column is empty: {row}"
            assert not cell.startswith("error"), f"{title}: {tool}: {cell}\n{done.stderr[-3000:]}"
            assert "⚠" not in cell, f"{title}: a {tool} run did not pass: {cell}\n{done.stderr[-3000:]}"
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["smoke"] is True
    assert set(document["results"]) == {"latency", "amplification", "completeness", "requests", "scale", "economy",
                                        "exit", "rss", "coldstart"}


def _titles(rows: list[str]) -> list[str]:
    return [row.split(" | ")[0].lstrip("| ") for row in rows]
