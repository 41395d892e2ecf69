"""Run tools (ci-runner, the baselines) as subprocesses against a fresh sandbox, and observe them.

One sandbox per measurement: its request log then holds exactly that run's requests and its quota
window starts empty. Tools are separate processes reading FIRECREST_* from the environment, as in
CI; their stdout is read here line by line and each line is stamped with the time it was read.
Peak RSS comes from `wait4` (ru_maxrss) plus /proc sampling. Every process gets a deadline
(SIGTERM, then SIGKILL), and every Slurm job a run touched is cancelled when its sandbox closes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.metrics import Served, StreamSink, end_time

BENCH_DIR = Path(__file__).resolve().parent
EXAMPLES = BENCH_DIR.parent / "examples"
QUICK_START_CONFIG = "examples/realistic.yml"  # the README's quick start
GEN = BENCH_DIR / "gen.py"
BASELINE = BENCH_DIR / "baseline.py"
# BENCH_CI_RUNNER: measure another ci-runner executable (e.g. an older release) than the one beside this Python.
CI_RUNNER = Path(os.environ.get("BENCH_CI_RUNNER") or Path(sys.executable).with_name("ci-runner"))
PYTHON = sys.executable
KILL_GRACE = 15.0
RSS_SAMPLE_EVERY = 0.25
# Variables that would make ci-runner believe it runs inside a CI provider.
CI_VARIABLE = re.compile(r"^(GITHUB_|GITLAB_|CI_|JENKINS_|BUILD_|RUNNER_|CI$|GIT_COMMIT$|GIT_URL$|GIT_BRANCH$)")


def clean_environ(extra: dict[str, str]) -> dict[str, str]:
    """os.environ without CI-provider variables (plain output, local run id), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not CI_VARIABLE.match(k) and not k.startswith("FIRECREST_")}
    env.update(extra)
    return env


# --- processes --------------------------------------------------------------------------------------

@dataclass
class ProcessRun:
    """One finished (or killed) tool process."""

    argv: tuple[str, ...]
    sink: StreamSink
    started: float = 0.0
    exited: float = 0.0
    exit_code: int | None = None
    max_rss_kib: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    killed: bool = False
    stderr_tail: str = ""

    @property
    def wall(self) -> float:
        return self.exited - self.started


def _read_lines(stream: Any, sink: StreamSink) -> None:
    for raw in iter(stream.readline, b""):
        sink.feed(time.time(), raw)
    stream.close()


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_processes(commands: Sequence[tuple[Sequence[str], StreamSink]], env: dict[str, str], cwd: Path,
                  timeout: float, stderr_dir: Path) -> list[ProcessRun]:
    """Start all commands at once, read their stdout into their sinks, wait (at most `timeout`)."""
    runs: list[ProcessRun] = []
    procs: list[subprocess.Popen[bytes]] = []
    threads: list[threading.Thread] = []
    stderr_dir.mkdir(parents=True, exist_ok=True)
    try:
        for index, (argv, sink) in enumerate(commands):
            run = ProcessRun(tuple(argv), sink)
            err = open(stderr_dir / f"stderr-{index}.txt", "wb")  # noqa: SIM115 - closed below
            run.started = time.time()
            proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                    cwd=cwd, env=env, start_new_session=True)
            err.close()
            runs.append(run)
            procs.append(proc)
            reader = threading.Thread(target=_read_lines, args=(proc.stdout, sink), daemon=True)
            waiter = threading.Thread(target=_wait, args=(proc, run), daemon=True)
            reader.start()
            waiter.start()
            threads += [reader, waiter]
        deadline = time.monotonic() + timeout
        while any(r.exit_code is None for r in runs) and time.monotonic() < deadline:
            now = time.time()
            for proc, run in zip(procs, runs):
                if run.exit_code is None:
                    rss = _rss_kib(proc.pid)
                    if rss is not None:
                        run.rss_samples.append((now, rss))
            time.sleep(RSS_SAMPLE_EVERY)
    finally:
        _stop(procs, runs)
        for thread in threads:
            thread.join(KILL_GRACE)
    for index, run in enumerate(runs):
        text = (stderr_dir / f"stderr-{index}.txt").read_text(encoding="utf-8", errors="replace")
        run.stderr_tail = text[-2000:]
    return runs


def _wait(proc: subprocess.Popen[bytes], run: ProcessRun) -> None:
    _, status, usage = os.wait4(proc.pid, 0)
    run.exited = time.time()
    run.max_rss_kib = usage.ru_maxrss
    proc.returncode = run.exit_code = os.waitstatus_to_exitcode(status)


def _stop(procs: Sequence[subprocess.Popen[bytes]], runs: Sequence[ProcessRun]) -> None:
    """SIGTERM every process group still running (tools cancel their jobs), SIGKILL after a grace period."""
    alive = [(p, r) for p, r in zip(procs, runs) if r.exit_code is None]
    for proc, run in alive:
        run.killed = True
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while any(r.exit_code is None for _, r in alive) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc, run in alive:
        if run.exit_code is None:
            _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


# --- sandbox -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchSandbox:
    """A started sandbox plus what the benchmark needs from it."""

    handle: Any  # ci_runner.sandbox.server.Sandbox

    @property
    def root(self) -> Path:
        return Path(self.handle.root)

    def env(self) -> dict[str, str]:
        return clean_environ(self.handle.env())

    def served(self) -> list[Served]:
        return [Served(r.time, r.route, r.status, r.bytes) for r in self.handle.request_log.records]

    def output_files(self, under: Path) -> list[Path]:
        """The jobs' output files: the baselines' `slurm-<id>.out`, ci-runner's `<run>/output/<entry>.<id>.out`."""
        return sorted({*under.rglob("slurm-*.out"), *under.rglob("output/*.out")})


@contextmanager
def sandbox(backend: str, quota_per_minute: int = 0, slots: int = 2, latency: float = 0.0,
            pending_delay: float = 0.0) -> Iterator[BenchSandbox]:
    """A fresh sandbox (127.0.0.1, temp root); on exit every job under its root is cancelled, then it stops.
    `latency`: seconds added to every request (a site's SSH round trip); `pending_delay`: seconds each
    job is held PENDING after its submit (a busy queue)."""
    from ci_runner.sandbox.faults import Faults
    from ci_runner.sandbox.server import SandboxOptions, start_sandbox

    faults = Faults(quota_per_minute=quota_per_minute, latency=latency, pending_delay=pending_delay)
    handle = start_sandbox(SandboxOptions(backend=backend, slots=slots, faults=faults))
    try:
        yield BenchSandbox(handle)
    finally:
        try:
            cancel_jobs_under(handle)
        finally:
            handle.stop()


def cancel_jobs_under(handle: Any) -> None:
    """Cancel every job whose output file or working directory lies under the sandbox root."""
    ids = {p.name[len("slurm-"):-len(".out")] for p in Path(handle.root).rglob("slurm-*.out")}
    ids |= {p.name.rsplit(".", 2)[-2] for p in Path(handle.root).rglob("output/*.out")}
    if handle.backend_name == "slurm":
        listing = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, timeout=30)
        for line in listing.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].startswith(str(handle.root)):
                ids.add(parts[0])
    for job_id in sorted(ids):
        if job_id.isdigit():
            try:
                handle.backend.cancel(job_id, os.getuid())
            except Exception:  # noqa: BLE001 - best effort: an already finished job cannot be cancelled
                pass


# --- tools -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """The body every tool's job runs (a `gen.py` invocation) and the Slurm time limit."""

    args: tuple[str, ...]
    time_limit: str = "00:30:00"

    @property
    def body(self) -> str:
        return " ".join(_shquote(a) for a in ("exec", PYTHON, str(GEN), *self.args))


def _shquote(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_./=:+-]+", text) else "'" + text.replace("'", "'\\''") + "'"


TOOLS = ("baseline-head", "baseline-tail", "ci-runner")


@dataclass(frozen=True)
class Invocation:
    """How to run one tool: argv per process (several for a baseline fan-out), working directory."""

    argvs: tuple[tuple[str, ...], ...]
    cwd: Path


def prepare(tool: str, sb: BenchSandbox, run_dir: str, workload: Workload, entries: int = 1,
            requests_per_minute: int | None = None, baseline_interval: float = 10.0, pack: int = 0) -> Invocation:
    """Write what `tool` needs to run `workload` (`entries` times in parallel) under `<root>/<run_dir>`;
    `pack`: ci-runner packs the entries into one job of that many CPUs (0: separate jobs)."""
    remote = sb.root / run_dir
    remote.mkdir(parents=True)
    local = remote.parent / f"{run_dir}-local"
    local.mkdir()
    if tool == "ci-runner":
        return _prepare_ci_runner(local, remote, workload, entries, requests_per_minute, pack)
    mode = tool.removeprefix("baseline-")
    argvs = []
    for index in range(entries):
        workdir = remote / f"e{index:02d}"
        workdir.mkdir()
        script = local / f"job-{index:02d}.sh"
        script.write_text(f"#!/bin/bash\n#SBATCH --partition=debug\n#SBATCH --time={workload.time_limit}\n"
                          f"{workload.body}\n", encoding="utf-8")
        argvs.append((PYTHON, str(BASELINE), str(script), str(workdir), "--mode", mode,
                      "--interval", str(baseline_interval)))
    return Invocation(tuple(argvs), local)


def _prepare_ci_runner(local: Path, remote: Path, workload: Workload, entries: int,
                       requests_per_minute: int | None, pack: int = 0) -> Invocation:
    matrix = ""
    if entries > 1:
        names = ", ".join(f"e{i:02d}" for i in range(entries))
        matrix = f"matrix:\n  n: [{names}]\n"
    # max_output: the benchmarks stream everything (the default 256 MiB limit protects CI logs, not this)
    packed = "pack: true\n" if pack else ""
    ntasks = f"  ntasks: {pack}\n" if pack else ""
    config = (f"version: 1\nsystem: local\nworkdir: {remote}\ncheckout: none\nmax_output: 4GiB\n{packed}"
              f"sbatch:\n  partition: debug\n  time: \"{workload.time_limit}\"\n{ntasks}{matrix}"
              f"script: |\n  {workload.body}\n")
    (local / ".ci-runner.yml").write_text(config, encoding="utf-8")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", ".ci-runner.yml"], ["commit", "-q", "-m", "bench"]):
        subprocess.run([*git, *args], cwd=local, check=True, capture_output=True, timeout=30)
    argv = [str(CI_RUNNER), "run", "--config", ".ci-runner.yml"]
    if requests_per_minute is not None:
        argv += ["--requests-per-minute", str(requests_per_minute)]
    return Invocation((tuple(argv),), local)


@dataclass
class ToolResult:
    """What one tool did on one measurement: its processes, the sandbox's log, the jobs' output files."""

    tool: str
    runs: list[ProcessRun]
    served: list[Served]
    output_bytes: int
    job_ends: list[float]

    @property
    def started(self) -> float:
        return min(r.started for r in self.runs)

    @property
    def finished(self) -> float:
        return max(r.exited or time.time() for r in self.runs)

    @property
    def wall(self) -> float:
        return self.finished - self.started

    @property
    def ok(self) -> bool:
        return all(r.exit_code == 0 and not r.killed for r in self.runs)

    def end_to_exit(self) -> list[float]:
        """Seconds from the job's last write to its tool process's exit, for a run of one job in one
        process (a matrix's exit waits for its last job, a different measure: none)."""
        if len(self.runs) == 1 and len(self.job_ends) == 1:
            return [self.runs[0].exited - self.job_ends[0]] if self.runs[0].exit_code is not None else []
        return []

    def failure(self) -> str:
        bad = [r for r in self.runs if r.exit_code != 0 or r.killed]
        if not bad:
            return ""
        r = bad[0]
        why = "killed at the deadline" if r.killed else f"exit {r.exit_code}"
        last = (r.stderr_tail.strip().splitlines() or r.sink.tail or [""])[-1]
        return f"{len(bad)}/{len(self.runs)} {why}: {last[:200]}"


def measure(tool: str, backend: str, workload: Workload, *, run_dir: str, timeout: float,
            sink_factory: Callable[[], StreamSink], entries: int = 1, requests_per_minute: int | None = None,
            quota_per_minute: int = 0, baseline_interval: float = 10.0, slots: int = 2, latency: float = 0.0,
            on_files: Callable[[list[Path]], None] | None = None, pack: int = 0,
            pending_delay: float = 0.0) -> ToolResult:
    """Run `tool` on `workload` in a fresh sandbox and return what it did (`pack`: see `prepare`)."""
    with sandbox(backend, quota_per_minute, slots, latency, pending_delay) as sb:
        invocation = prepare(tool, sb, run_dir, workload, entries, requests_per_minute, baseline_interval, pack)
        commands = [(argv, sink_factory()) for argv in invocation.argvs]
        runs = run_processes(commands, sb.env(), invocation.cwd, timeout, invocation.cwd / "stderr")
        files = sb.output_files(sb.root / run_dir)
        ends = []
        for path in files:
            with open(path, "rb") as handle:
                size = path.stat().st_size
                handle.seek(max(0, size - 256))
                stamp = end_time(handle.read())
            if stamp is not None:
                ends.append(stamp)
        if on_files is not None:
            on_files(files)
        return ToolResult(tool, runs, sb.served(), sum(p.stat().st_size for p in files), ends)


def quick_start(backend: str, quota_per_minute: int, latency: float, timeout: float) -> ToolResult:
    """The README's quick start: `ci-runner run --config examples/realistic.yml` in a fresh git
    repository holding the examples, against a fresh sandbox at `quota_per_minute` (what `run
    --sandbox` enforces) with `latency` seconds added to every request."""
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-quick-") as work, \
            sandbox(backend, quota_per_minute, latency=latency) as sb:
        repo = Path(work) / "project"
        shutil.copytree(EXAMPLES, repo / "examples")
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "quick start"]):
            subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True, timeout=30)
        runs = run_processes([((str(CI_RUNNER), "run", "--config", QUICK_START_CONFIG), StreamSink(analyse=False))],
                             sb.env(), repo, timeout, Path(work) / "stderr")
        return ToolResult("ci-runner", runs, sb.served(), 0, [])
