"""What a new user reads first: the README's sandbox snippet runs as written (no race on the env
file), the sections a user needs exist, `run --help` names the variables it reads, and every
published reference carries the one current version."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers.checkouts import git_checkout
from click.testing import CliRunner

from ci_runner.cli import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def section(title: str) -> str:
    assert f"\n{title}\n" in README, f"README has no {title!r}"
    return README.split(f"\n{title}\n", 1)[1].split("\n## ", 1)[0]


def test_run_help_names_the_environment_it_reads() -> None:
    text = CliRunner().invoke(cli, ["run", "--help"], terminal_width=120).output
    for name in ("FIRECREST_URL", "AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET",
                 "FIRECREST_API_KEY", "FIRECREST_SYSTEM", "NO_COLOR", "FORCE_COLOR", "--sandbox-backend"):
        assert name in text, name


def test_readme_has_what_a_new_user_needs() -> None:
    limits = section("## Limits")
    for cap in ("requests_per_minute", "api_retry_limit", "queue_timeout", "max_output", "max_entries", "429"):
        assert cap in limits, cap
    trouble = section("## Troubleshooting")
    for symptom in ("FIRECREST_URL", "HTTP 401", "no system named", "429", "PENDING"):
        assert symptom in trouble, symptom
    credentials = section("### Getting credentials at a FirecREST site")
    for name in ("FIRECREST_URL", "AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET", "developer portal"):
        assert name in credentials, name
    versions = section("## Versions and tags")
    assert f"v{VERSION}" in versions and f"@{VERSION}" in versions
    quick_start = section("## Quick start (fresh machine, Python ≥ 3.10)")
    assert "--sandbox-backend local" in quick_start and "real Slurm" in quick_start


def test_every_published_reference_has_the_current_version() -> None:
    component = (ROOT / "gitlab-templates" / "templates" / "ci-runner.yml").read_text()
    assert f"default: ghcr.io/ci-runner/ci-runner:{VERSION}\n" in component
    texts = {path: path.read_text() for path in [ROOT / "README.md", ROOT / "examples" / "gitlab" / ".gitlab-ci.yml",
                                                 ROOT / "examples" / "jenkins" / "Jenkinsfile",
                                                 *sorted((ROOT / "examples" / "github").glob("*.yml")),
                                                 ROOT / "gitlab-templates" / "README.md"]}
    for path, text in texts.items():
        for found in re.findall(r"ci-runner(?:/ci-runner)?[@:]v?(\d+\.\d+\.\d+)", text):
            assert found == VERSION, f"{path.name} refers to {found}, the version is {VERSION}"


@pytest.mark.slow
@pytest.mark.shares_slurm  # `ci-runner sandbox` picks this machine's Slurm when it works
def test_the_sandbox_snippet_runs_as_written(tmp_path: Path) -> None:
    """The README's sandbox block, verbatim, in a git checkout holding the examples."""
    snippet = re.search(r"<!-- check: shell -->\n```sh\n(.*?)\n```", section("## Try it locally: the sandbox"), re.S)
    assert snippet and "sandbox.env" in snippet.group(1)
    project = tmp_path / "project"
    shutil.copytree(ROOT / "examples", project / "examples")
    git_checkout(project)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("FIRECREST_", "GITHUB_", "GITLAB_", "CI_", "JENKINS_", "BUILD_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", NO_COLOR="1")
    process = subprocess.Popen(["bash", "-e", "-c", snippet.group(1)], cwd=project, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = process.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        out = "(timed out)"
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)  # whatever the snippet left (the sandbox, on failure)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
    assert process.returncode == 0, out
    assert "ci-runner: all 4 entries passed; exit code 0" in out, out
    assert re.search(r"^local: healthy$", out, re.M), out
