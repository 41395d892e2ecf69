"""`python -m pytest -n 2` keeps the Slurm tests in one process by pytest-xdist's groups (see
conftest.py). pytest 9.2 with pytest-xdist 3.8 dropped the groups without a word (pytest-xdist#1386)
and the Slurm tests ran two at a time: this checks the installed pair on a project of its own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_a_group_runs_in_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_two_kinds.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.xdist_group('slurm')\n"
        "@pytest.mark.parametrize('n', range(6))\n"
        "def test_grouped(n):\n    pass\n\n"
        "@pytest.mark.parametrize('n', range(6))\n"
        "def test_free(n):\n    pass\n")
    ran = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v",
                          "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout[-3000:]
    workers = set(re.findall(r"\[(gw\d)\] \[ *\d+%\] PASSED \S*::test_grouped\[", ran.stdout))
    assert len(re.findall(r"PASSED \S*::test_grouped\[", ran.stdout)) == 6, ran.stdout[-3000:]
    assert len(workers) == 1, ran.stdout[-3000:]
