"""Secrets hygiene: credential values never leave the places they must be.

A real `ci-runner run` against the sandbox with known secret values (client secret, or an API key),
then every place a secret could leak is scanned for those values and for access tokens (JWTs, the
sandbox's token format): the rendered job script, the job metadata the sandbox stores and serves
(`GET /compute/{system}/jobs/{id}/metadata` returns the script), every file under the remote work
directory (job output included: the job prints its environment and its own script), the argv of the
running ci-runner process and its children (`/proc/<pid>/cmdline`), the state file (read while the
job runs and at the end), every file the run leaves in the repository, and the CI log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ci_runner.sandbox.server import Sandbox, SandboxOptions, start_sandbox

CLI = str(Path(sys.executable).parent / "ci-runner")
CLIENT_SECRET = "s3cr3t-client-value-4c1e9b7d"
API_KEY = "api-key-value-9f8e7d6c5b4a"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
GITHUB_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "example/secrets",
    "GITHUB_RUN_ATTEMPT": "1",
    "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
    "GITHUB_REF": "refs/heads/main",
}
JOB_BODY = """\
echo "== environment"
env | sort
echo "== own script"
cat "$0"
cat ../ci-runner-job.sh 2>/dev/null || true
sleep 4
echo "== done"
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    root = tmp_path / "cluster"
    root.mkdir()
    handle = start_sandbox(SandboxOptions(root=root, backend="auto", port=0, client_secret=CLIENT_SECRET,
                                          api_key=API_KEY))
    try:
        yield handle
    finally:
        handle.stop()


def write_repo(repo: Path, extra: str = "") -> None:
    repo.mkdir()
    body = "".join(f"  {line}\n" for line in JOB_BODY.splitlines())
    (repo / ".ci-runner.yml").write_text(
        f"version: 1\nsystem: local\ncheckout: none\npass_env: [HARMLESS]\n{extra}script: |\n{body}", encoding="utf-8")


def base_env(run_id: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "HOME": "/tmp",
            "HARMLESS": "just-a-value", **GITHUB_ENV, "GITHUB_RUN_ID": run_id,
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}


def leaks(text: str, secrets: list[str]) -> list[str]:
    """The secret values (and access tokens) found in `text`, outside GitHub `::add-mask::` commands."""
    text = "\n".join(line for line in text.splitlines() if not line.startswith("::add-mask::"))
    found = [s for s in secrets if s in text]
    found += [f"JWT {m[:12]}..." for m in JWT.findall(text)]
    return found


def process_tree_cmdlines(pid: int) -> list[str]:
    """argv (NUL-joined) of `pid` and all its descendants."""
    pids, cmdlines = [pid], []
    while pids:
        current = pids.pop()
        try:
            cmdlines.append(Path(f"/proc/{current}/cmdline").read_bytes().decode(errors="replace"))
            for task in Path(f"/proc/{current}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return cmdlines


def job_metadata(sandbox: Sandbox, job_id: str) -> str:
    """What FirecREST serves as the job's metadata (the stored script) — raw HTTP with a fresh token."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": sandbox.client_id,
                                   "client_secret": sandbox.client_secret}).encode()
    with urllib.request.urlopen(sandbox.token_url, data=form, timeout=10) as answer:
        token = json.load(answer)["access_token"]
    request = urllib.request.Request(f"{sandbox.url}/compute/{sandbox.system}/jobs/{job_id}/metadata",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read().decode()


def files_text(directory: Path) -> dict[str, str]:
    return {str(p): p.read_bytes().decode(errors="replace") for p in directory.rglob("*") if p.is_file()}


def run_and_scan(sandbox: Sandbox, repo: Path, env: dict[str, str], secrets: list[str]) -> dict[str, Any]:
    """Run to the end, sampling argv and the state file while it runs; return what was seen."""
    process = subprocess.Popen([CLI, "run", "--requests-per-minute", "600"], cwd=repo, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: dict[str, list[str]] = {"argv": [], "state": []}
    deadline = time.monotonic() + 90
    try:
        while process.poll() is None and time.monotonic() < deadline:
            seen["argv"] += process_tree_cmdlines(process.pid)
            seen["state"] += [p.read_text(errors="replace") for p in (repo / ".ci-runner-state").glob("*.json")]
            time.sleep(0.2)  # sampling rate of the scan, not a wait for a condition
        out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert seen["argv"], "never saw the running process"
    assert any('"state"' in s for s in seen["state"]), "never saw the state file while the job ran"
    job_id = re.search(r"submitted as Slurm job (\d+)", stdout + stderr)
    assert job_id, stdout
    output_files = list(Path(sandbox.root).rglob(f"*.{job_id.group(1)}.out"))
    assert output_files and "== done" in output_files[0].read_text(errors="replace"), "the job did not run"
    places = {
        "CI log (stdout)": stdout,
        "CI log (stderr)": stderr,
        "argv of ci-runner and its children": "\n".join(seen["argv"]),
        "state file while running": "\n".join(seen["state"]),
        "job metadata served by FirecREST": job_metadata(sandbox, job_id.group(1)),
        **{f"remote file {k}": v for k, v in files_text(Path(sandbox.root)).items()},
        **{f"repository file {k}": v for k, v in files_text(repo).items()},
    }
    found = {place: leaks(text, secrets) for place, text in places.items()}
    assert "== own script" in places["job metadata served by FirecREST"] or "ci-runner" in \
        places["job metadata served by FirecREST"]
    return {"stdout": stdout, "found": {k: v for k, v in found.items() if v}}


@pytest.mark.slow  # a whole `ci-runner run`, on real Slurm when it works: 7-11 s
@pytest.mark.shares_slurm
def test_client_secret_and_tokens_never_leak(sandbox: Sandbox, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repo(repo)
    env = {**base_env("5101"), **sandbox.env()}
    assert env["FIRECREST_CLIENT_SECRET"] == CLIENT_SECRET
    result = run_and_scan(sandbox, repo, env, [CLIENT_SECRET])
    assert result["found"] == {}


@pytest.mark.slow  # a whole `ci-runner run`, on real Slurm when it works: 7-11 s
@pytest.mark.shares_slurm
def test_api_key_never_leaks(sandbox: Sandbox, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repo(repo)
    env = {**base_env("5102"), "FIRECREST_URL": sandbox.url, "FIRECREST_API_KEY": API_KEY,
           "FIRECREST_SYSTEM": sandbox.system}
    result = run_and_scan(sandbox, repo, env, [API_KEY])
    assert result["found"] == {}


@pytest.mark.slow  # a whole `ci-runner run`, on real Slurm when it works: 7-11 s
@pytest.mark.shares_slurm
def test_github_log_masks_the_credentials(sandbox: Sandbox, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repo(repo)
    env = {**base_env("5103"), **sandbox.env()}
    result = run_and_scan(sandbox, repo, env, [CLIENT_SECRET])
    first_output = result["stdout"].find("::group::")
    masked = [line for line in result["stdout"].splitlines() if line == f"::add-mask::{CLIENT_SECRET}"]
    assert masked and result["stdout"].find(masked[0]) < first_output


def render(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "render"], cwd=repo, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_rendered_scripts_hold_no_credentials(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repo(repo, "env: {OMP_NUM_THREADS: '2'}\nmatrix:\n  compiler: [gcc, clang]\n")
    env = {**base_env("5104"), "FIRECREST_URL": "http://127.0.0.1:1", "AUTH_TOKEN_URL": "http://127.0.0.1:1/t",
           "FIRECREST_CLIENT_ID": "id", "FIRECREST_CLIENT_SECRET": CLIENT_SECRET, "FIRECREST_API_KEY": API_KEY}
    done = render(repo, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("#!/bin/bash") == 2
    assert leaks(done.stdout + done.stderr, [CLIENT_SECRET, API_KEY]) == []


def test_pass_env_alias_of_a_secret_value_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".ci-runner.yml").write_text(
        "version: 1\nsystem: local\ncheckout: none\npass_env: [SETTINGS]\nscript: echo {{ env.SETTINGS }}\n")
    env = {**base_env("5105"), "FIRECREST_CLIENT_SECRET": CLIENT_SECRET, "SETTINGS": CLIENT_SECRET}
    done = render(repo, env)
    assert CLIENT_SECRET not in done.stdout
    assert done.returncode == 2 and "pass_env" in done.stderr
