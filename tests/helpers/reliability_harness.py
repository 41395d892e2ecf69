"""Real processes for the reliability suite: a `ci-runner sandbox` server and `ci-runner run` runs.

The sandbox runs as its own process on a fixed port, root, client id and secret, so it can be killed
and started again (a crash, not a clean stop: a clean stop cancels the jobs it submitted) while
`ci-runner run` keeps going. Its request log is read over HTTP (`GET /_sandbox/requests`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from helpers.waiting import wait_until

CLI = str(Path(sys.executable).parent / "ci-runner")
START_DEADLINE = 20.0
CLIENT_ID = "reliability-client"
GITHUB_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "example/reliability",
    "GITHUB_RUN_ATTEMPT": "1",
    "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_SERVER_URL": "https://github.com",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])



@dataclass
class SandboxProcess:
    """`ci-runner sandbox` as a subprocess; `start()` again after `crash()` serves the same cluster."""

    root: Path
    secret: str
    fault_args: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    backend: str = "auto"
    process: subprocess.Popen[bytes] | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)  # request records of earlier incarnations
    log_file: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"FIRECREST_URL": self.url, "AUTH_TOKEN_URL": f"{self.url}/auth/token",
                "FIRECREST_CLIENT_ID": CLIENT_ID, "FIRECREST_CLIENT_SECRET": self.secret, "FIRECREST_SYSTEM": "local"}

    def start(self, fault_args: Sequence[str] | None = None) -> None:
        args = [CLI, "sandbox", "--port", str(self.port), "--root", str(self.root), "--backend", self.backend,
                "--client-id", CLIENT_ID, "--client-secret", self.secret, "--quota-per-minute", "0",
                *(self.fault_args if fault_args is None else fault_args)]
        self.log_file = self.root.parent / f"sandbox-{self.port}.log"
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._listening, START_DEADLINE, f"the sandbox on port {self.port}", interval=0.1)

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the sandbox exited with {self.process.returncode}: "
                                 f"{self.log_file.read_text(errors='replace') if self.log_file else ''}")
        try:
            with urllib.request.urlopen(f"{self.url}/_sandbox/requests", timeout=2):
                return True
        except OSError:
            return False

    def requests(self) -> list[dict[str, Any]]:
        """Every request record so far, earlier incarnations included."""
        current: list[dict[str, Any]] = []
        if self.process is not None and self.process.poll() is None:
            with urllib.request.urlopen(f"{self.url}/_sandbox/requests", timeout=10) as answer:
                current = json.load(answer)["records"]
        return self.logs + current

    def crash(self) -> None:
        """SIGKILL: no clean shutdown, Slurm jobs keep running (the request log so far is kept)."""
        self.logs = self.requests()
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def job_script_lines(count: int, delay: float, exit_code: int = 0) -> str:
    """A job body printing `count` numbered lines (ASCII and multi-byte UTF-8), `delay` s apart."""
    return (
        f"for i in $(seq 1 {count}); do\n"
        "  printf 'line %03d: payload-%s \\xc3\\xa9\\xe2\\x82\\xac\\xf0\\x9f\\x90\\x8d end\\n' \"$i\" "
        "\"$(printf '%*s' $((i % 17 + 10)) '' | tr ' ' x)\"\n"
        f"  sleep {delay}\n"
        "done\n"
        f"exit {exit_code}\n"
    )


def write_config(repo: Path, body: str, extra: str = "") -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    indented = "".join(f"  {line}\n" for line in body.splitlines())
    path = repo / ".ci-runner.yml"
    path.write_text(f"version: 1\nsystem: local\ncheckout: none\nsbatch:\n  time: 5m\n{extra}script: |\n{indented}",
                    encoding="utf-8")
    return path


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def unmasked(self) -> str:
        """The output without GitHub `::add-mask::` commands (GitHub shows neither them nor their values)."""
        return "\n".join(line for line in self.output.splitlines() if not line.startswith("::add-mask::"))


def run_env(sandbox: SandboxProcess, run_id: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(sandbox.root.parent), "LC_ALL": "C.UTF-8",
            **GITHUB_ENV, "GITHUB_RUN_ID": run_id, **sandbox.env(), **(extra or {}),
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}  # the code under test


def start_run(repo: Path, env: dict[str, str], args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    return subprocess.Popen([CLI, "run", *args], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def finish(process: subprocess.Popen[bytes], timeout: float) -> RunResult:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"ci-runner run did not finish within {timeout:.0f}s:\n"
                             f"{out.decode(errors='replace')[-3000:]}\n{err.decode(errors='replace')[-3000:]}")
    return RunResult(process.returncode, out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace"))


_SUBMITTED = re.compile(r"submitted as Slurm job (\d+) in (\S+)")


def submitted_jobs(text: str) -> list[tuple[str, str]]:
    """(job id, remote dir) of every 'submitted as Slurm job' line."""
    return _SUBMITTED.findall(text)


def streamed_output(stdout: str) -> str:
    """The entry's output as the GitHub reporter printed it: every block between ::stop-commands::T and ::T::
    (the reporter closes the block to emit ::add-mask:: for a new token, then opens a new one)."""
    blocks = re.findall(r"^::stop-commands::(\S+)\n(.*?)^::\1::\n", stdout, re.S | re.M)
    return "".join(text for _, text in blocks)


def api_request_times(records: Sequence[dict[str, Any]]) -> list[float]:
    """Times of the FirecREST API requests (the token endpoint is another server in real life: not budgeted)."""
    return [r["time"] for r in records if r["route"] != "/auth/token"]


def slurm_jobs_named(name: str) -> list[dict[str, str]]:
    """Jobs Slurm knows with this job name (`scontrol show job -o`, finished ones included until MinJobAge)."""
    done = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30, check=False)
    jobs = []
    for line in done.stdout.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("JobName") == name:
            jobs.append(fields)
    return jobs


def slurm_state(job_id: str) -> str | None:
    done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30,
                          check=False)
    match = re.search(r"JobState=(\S+)", done.stdout)
    return match.group(1) if match else None


ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING"}


def scancel_named(name: str) -> None:
    subprocess.run(["scancel", "--name", name], capture_output=True, timeout=30, check=False)
