"""`ci-runner sandbox` as a user runs it: export lines, --env-file, a usable server, clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import firecrest as fc
import httpx
import pytest
from helpers.firecrest_clients import script
from helpers.waiting import wait_until

from ci_runner.sandbox.command import sandbox as sandbox_command

CI_RUNNER = [sys.executable, "-c", "from ci_runner.cli import main; main()"]
NAMES = ["FIRECREST_URL", "AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET", "FIRECREST_SYSTEM"]


def read_env(path: Path) -> dict[str, str]:
    pairs = [line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines()]
    return {name: value for name, value in pairs}


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_signalled_then_stops_its_jobs(tmp_path: Path, stop_signal: signal.Signals) -> None:
    env_file = tmp_path / "sandbox.env"
    root = tmp_path / "root"
    process = subprocess.Popen(
        [*CI_RUNNER, "sandbox", "--backend", "local", "--root", str(root), "--client-id", "me",
         "--env-file", str(env_file), "--system", "testsys", "--quota-per-minute", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: env_file.exists() and env_file.read_text().count("\n") == 5 or process.poll() is not None,
                   30, "the env file")
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        env = read_env(env_file)
        assert list(env) == NAMES and env["FIRECREST_CLIENT_ID"] == "me" and env["FIRECREST_SYSTEM"] == "testsys"
        assert env["FIRECREST_URL"].startswith("http://127.0.0.1:")

        client = fc.v2.Firecrest(env["FIRECREST_URL"], fc.ClientCredentialsAuth(
            env["FIRECREST_CLIENT_ID"], env["FIRECREST_CLIENT_SECRET"], env["AUTH_TOKEN_URL"], min_token_validity=60))
        client.timeout = 30
        assert client.systems()[0]["fileSystems"][0]["path"] == os.path.realpath(root)
        job_id = client.submit("testsys", str(root), script_str=script("#SBATCH -o s.out", "echo $$ > pid", "sleep 300"))["jobId"]
        wait_until(lambda: client.job_info("testsys", job_id)[0]["status"]["state"] == "RUNNING"
                   and (root / "pid").exists() and (root / "pid").read_text().strip(), 30, "the job to run", 0.1)
        job_pid = int((root / "pid").read_text())

        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert out.splitlines()[:5] == env_file.read_text().splitlines()
        assert "# sandbox stopped" in err
        with pytest.raises(httpx.ConnectError):
            httpx.get(env["FIRECREST_URL"] + "/status/liveness/", timeout=5)
        wait_until(lambda: not Path(f"/proc/{job_pid}").exists() or "zombie" in Path(f"/proc/{job_pid}/status").read_text().lower()
                   or " Z " in Path(f"/proc/{job_pid}/stat").read_text(), 15, "the job's process to end", 0.1)
        assert root.exists(), "a --root given by the user is kept"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_site_s_quota_of_10_a_minute_is_enforced_by_default(tmp_path: Path) -> None:
    """`ci-runner sandbox` tells the truth about a site: 10 requests per client in any 60 s, 429 beyond."""
    env_file = tmp_path / "sandbox.env"
    process = subprocess.Popen([*CI_RUNNER, "sandbox", "--backend", "local", "--root", str(tmp_path / "root"),
                                "--env-file", str(env_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: env_file.exists() and env_file.read_text().count("\n") == 5 or process.poll() is not None,
                   30, "the env file")
        env = read_env(env_file)
        token = httpx.post(env["AUTH_TOKEN_URL"], timeout=30, data={
            "grant_type": "client_credentials", "client_id": env["FIRECREST_CLIENT_ID"],
            "client_secret": env["FIRECREST_CLIENT_SECRET"]}).json()["access_token"]
        statuses = [httpx.get(env["FIRECREST_URL"] + "/status/systems", timeout=30,
                              headers={"Authorization": f"Bearer {token}"}).status_code for _ in range(11)]
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert statuses == [200] * 10 + [429]


def test_busy_port_is_a_usage_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*CI_RUNNER, "sandbox", "--backend", "local", "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("ci-runner: error: cannot start the sandbox on 127.0.0.1:")


def test_help_lists_fault_flags() -> None:
    names = {option.name for option in sandbox_command.params}
    assert {"latency", "error_rate", "burst_every", "burst_length", "fault_token_ttl", "drop_rate",
            "not_found_window", "quota_per_minute", "pending_delay", "env_file"} <= names
