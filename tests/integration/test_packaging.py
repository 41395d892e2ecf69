"""Packaging: what `pip install` brings, the licence, the changelog, and the README's install commands.

The resolver runs for real (`pip install --dry-run --report`, nothing is installed), so a dependency
that slips back from the `sandbox` extra into the base install fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SANDBOX_ONLY = {"starlette", "uvicorn", "python-multipart"}  # PyJWT also comes with pyfirecrest


def resolved(requirement: str, tmp_path: Path) -> set[str]:
    """Normalised names of every distribution pip would install for `requirement` in an empty venv."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--disable-pip-version-check", "--report", str(report), requirement],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    install = json.loads(report.read_text())["install"]
    return {re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower() for item in install}


@pytest.mark.slow  # a pip install into a new venv: about 15 s
def test_a_plain_install_does_not_pull_the_sandbox_server(tmp_path: Path) -> None:
    names = resolved(".", tmp_path)
    assert {"pyfirecrest", "click", "jinja2"} <= names
    assert not names & SANDBOX_ONLY, f"pulled by `pip install .`: {sorted(names & SANDBOX_ONLY)}"
    assert SANDBOX_ONLY <= resolved(".[sandbox]", tmp_path)


@pytest.mark.parametrize("argv", [["run", "--sandbox", "--config", "examples/realistic.yml"], ["sandbox"]])
def test_the_sandbox_without_its_extra_says_how_to_install_it(argv: list[str]) -> None:
    """As in an environment without the extra: importing uvicorn fails (a None entry in sys.modules)."""
    code = "import sys; sys.modules['uvicorn'] = None; from ci_runner.cli import main; main(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 2, done.stderr
    assert "pip install 'ci-runner[sandbox]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_license_is_bsd_3_clause_everywhere() -> None:
    assert PYPROJECT["project"]["license"] == "BSD-3-Clause"  # an SPDX expression (PEP 639)
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License\n")
    assert 'org.opencontainers.image.licenses="BSD-3-Clause"' in (ROOT / "Dockerfile").read_text()
    assert (ROOT / "gitlab-templates" / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()


def test_changelog_starts_with_the_current_version() -> None:
    version = PYPROJECT["project"]["version"]
    Version(version)  # a valid version
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "releases are MAJOR.MINOR.PATCH (see README, Versions)"
    headings = re.findall(r"^## \[?([^\]\s]+)\]?", (ROOT / "CHANGELOG.md").read_text(), re.M)
    released = [h for h in headings if h.lower() != "unreleased"]
    assert released and released[0] == version


def test_readme_test_command_is_the_one_ci_runs() -> None:
    """.ci/run runs the README's test command verbatim, in a venv it creates in the same script."""
    readme = (ROOT / "README.md").read_text()
    ci_run = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_block = next(b for b in blocks if "python -m pytest" in b)
    command = test_block.splitlines()[-1].split(" && ", 2)
    assert command[0] == "python3 -m venv .venv" and command[1] == ". .venv/bin/activate", test_block
    assert command[2] in ci_run.splitlines(), f"{command[2]!r} is not a line of .ci/run"
    assert "python3 -m venv .venv" in ci_run and ". .venv/bin/activate" in ci_run


def test_readme_quick_start_installs_the_sandbox_extra_in_a_new_venv() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    command = re.findall(r"```sh\n(.*?)\n```", quick_start, re.S)[0].split(" && ")
    assert command == ["python3 -m venv .venv", ". .venv/bin/activate", "pip install '.[sandbox]'",
                       "ci-runner run --sandbox --config examples/realistic.yml"]
    assert "../shared" not in readme  # our development setup, not the user's
