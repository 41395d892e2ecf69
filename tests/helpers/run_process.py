"""Helpers of the `ci-runner run` end-to-end tests: a real git repo, a sandbox, and `ci-runner` as a
subprocess whose stdout is read line by line while it runs."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ci_runner import slurm_states

CI_RUNNER = [sys.executable, "-c", "from ci_runner.cli import main; main()"]
# CI provider variables would make ci.detect pick GitHub/GitLab/Jenkins instead of the local test repo.
_PROVIDER_VARS = ("GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILD_TAG")


def git_repo(path: Path) -> Path:
    """A git repository with one commit at `path`."""
    path.mkdir(parents=True, exist_ok=True)

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, timeout=30)

    git("init", "-q", "-b", "main")
    git("config", "user.email", "ci@example.org")
    git("config", "user.name", "ci")
    (path / "README").write_text("test project\n")
    git("add", "README")
    git("commit", "-q", "-m", "initial")
    return path


def runner_env(sandbox: Any, **extra: str) -> dict[str, str]:
    """This process's environment minus CI provider markers, plus the sandbox's FIRECREST_* variables."""
    env = {k: v for k, v in os.environ.items() if k not in _PROVIDER_VARS and not k.startswith("FIRECREST_")}
    env.update(sandbox.env())
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


class RunnerProcess:
    """`ci-runner ARGS` in `cwd`; stdout is collected (raw bytes and lines) by a reader thread."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            [*CI_RUNNER, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.raw = bytearray()
        self.stderr = b""
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self.raw += line
            self._lines.put(line.decode("utf-8", "replace").rstrip("\n"))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Block until a stdout line matches `pattern` (regex search); AssertionError after `timeout`."""
        regex = re.compile(pattern)
        for line in self.seen:
            match = regex.search(line)
            if match:
                return match
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                if self.proc.poll() is not None and self._lines.empty() and not self._out.is_alive():
                    break
                continue
            self.seen.append(line)
            match = regex.search(line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s; exit {self.proc.poll()}; "
                             f"stdout tail: {self.seen[-15:]}; stderr: {self.stderr[-2000:]!r}")

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the process to exit; collect every remaining line; the exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ci-runner did not exit within {timeout} s; stdout tail: {self.lines()[-15:]}")
        self._out.join(timeout=30)
        self._err.join(timeout=30)
        while not self._lines.empty():
            self.seen.append(self._lines.get_nowait())
        return code

    def lines(self) -> list[str]:
        while not self._lines.empty():
            self.seen.append(self._lines.get_nowait())
        return list(self.seen)

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@contextmanager
def ci_runner(args: Sequence[str], cwd: Path, env: dict[str, str]) -> Iterator[RunnerProcess]:
    """Run `ci-runner`; whatever happens, the process is gone afterwards."""
    process = RunnerProcess(args, cwd, env)
    try:
        yield process
    finally:
        process.kill()


def run_to_end(args: Sequence[str], cwd: Path, env: dict[str, str], sandbox: Any, state_file: Path,
               timeout: float = 120.0) -> tuple[int, RunnerProcess]:
    """`ci-runner ARGS` until it exits, then cancel whatever jobs its state file records (also when it
    failed): the exit code and the finished process (`lines()`, `raw`)."""
    try:
        with ci_runner(args, cwd, env) as run:
            code = run.finish(timeout=timeout)
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    return code, run


def entry_lines(lines: Sequence[str], entry: str) -> list[str]:
    """Job output lines of `entry` (the reporter prefixes them with `[entry] ` when entries run side by side)."""
    prefix = f"[{entry}] "
    return [line[len(prefix):] for line in lines if line.startswith(prefix)]


def job_state(sandbox: Any, job_id: str) -> str | None:
    """The job's state as the sandbox's backend (Slurm or local) reports it, None when unknown."""
    jobs = sandbox.backend.jobs([job_id])
    return str(jobs[0]["status"]["state"]) if jobs else None



def recorded_jobs(state_file: Path) -> dict[str, str]:
    """entry → job id from a state file (entries with an id only). A task of a job array (`A_i`) is
    given by its own Slurm job id (from the id file it wrote next to its output), or by the array's
    id while it has not started."""
    if not state_file.exists():
        return {}
    entries = json.loads(state_file.read_text())["entries"]
    return {name: _own_job_id(e["job_id"], e.get("output_path")) for name, e in entries.items() if e.get("job_id")}


def _own_job_id(job_id: str, output_path: str | None) -> str:
    array_id, underscore, _ = job_id.partition("_")
    if not underscore or not output_path:
        return job_id
    id_files = sorted(Path(output_path).parent.glob(f"{Path(output_path).name.removesuffix('.out')}.*.id"))
    return id_files[0].name.rsplit(".", 2)[-2] if id_files else array_id


def cancel_jobs(sandbox: Any, job_ids: Sequence[str]) -> None:
    """Test cleanup: cancel jobs still queued or running (through the backend, not the API)."""
    for job_id in job_ids:
        state = job_state(sandbox, job_id)
        if state and not slurm_states.is_terminal(state):
            sandbox.backend.cancel(job_id, os.getuid())
