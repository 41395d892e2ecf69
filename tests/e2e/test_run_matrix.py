"""`ci-runner run` end to end: a real git repo, the sandbox over real HTTP (Slurm or local backend),
and ci-runner as a subprocess whose stdout is read while it runs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.run_process import (
    cancel_jobs,
    ci_runner,
    entry_lines,
    git_repo,
    job_state,
    recorded_jobs,
    run_to_end,
    runner_env,
)
from helpers.slurm_time_limit import time_out_at_next_check
from helpers.waiting import wait_until

from ci_runner.budget import max_in_window
from ci_runner.job_spec import JOB_END_LINE
from ci_runner.sandbox.faults import Faults
from ci_runner.sandbox.server import SandboxOptions, start_sandbox
from ci_runner.stream import block_size_for

KINDS = ("pass", "fail", "slow")
LINES = 30

MATRIX_CONFIG = """\
version: 1
system: local
checkout: none
sbatch:
  time: 1m
env:
  GATE_DIR: {gates}
matrix:
  kind: [pass, fail, slow]
script: |
  for i in $(seq 1 {lines}); do echo "{{{{ kind }}}} line $i"; done
  echo "{{{{ kind }}}} waiting"
  for i in $(seq 1 900); do [ -e "$GATE_DIR/{{{{ kind }}}}" ] && break; sleep 0.1; done
  echo "{{{{ kind }}}} released"
  case {{{{ kind }}}} in
    fail) exit 3 ;;
    slow) sleep 300 ;;
  esac
"""


@pytest.fixture
def make_sandbox(backend_name: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start sandboxes with extra options on the parametrised backend; all stopped afterwards."""
    started: list[Any] = []

    def make(**options: Any) -> Any:
        root = tmp_path / f"cluster{len(started)}"
        root.mkdir()
        sandbox = start_sandbox(SandboxOptions(root=root, backend=backend_name, port=0, **options))
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


def _expected(kind: str) -> list[str]:
    """The entry's output lines; the job script's own last line tells how the user's script ended
    (a job killed at its time limit never gets to print it)."""
    end = {"pass": [f"{JOB_END_LINE}0"], "fail": [f"{JOB_END_LINE}3"], "slow": []}[kind]
    return [f"{kind} line {i}" for i in range(1, LINES + 1)] + [f"{kind} waiting", f"{kind} released"] + end


@pytest.mark.slow
def test_matrix_streams_live_and_exits_with_the_worst_outcome(
    make_sandbox: Callable[..., Any], backend_name: str, tmp_path: Path
) -> None:
    """pass / fail (exit 3) / slow (time limit): each entry's lines appear while its job runs (it waits
    for a gate file the test creates only after seeing the line), complete and in order; exit 4."""
    # Local backend: the 1-minute limit is enforced after 15 s. Real Slurm would take 60-90 s (its
    # smallest limit, checked every 30 s): once the slow job has printed its last line its limit is
    # lowered to zero, and Slurm's own check ends it with TIMEOUT within 30 s.
    sandbox = make_sandbox(slots=3, local_time_scale=0.25)
    repo = git_repo(tmp_path / "repo")
    gates = tmp_path / "gates"
    gates.mkdir()
    config = repo / "ci.yml"
    config.write_text(MATRIX_CONFIG.format(gates=gates, lines=LINES))
    state_file = tmp_path / "state.json"
    args = ["run", "--config", str(config), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci"]
    try:
        with ci_runner(args, repo, runner_env(sandbox)) as run:
            released: set[str] = set()
            while len(released) < len(KINDS):
                waiting = "|".join(k for k in KINDS if k not in released)
                kind = run.wait_for(rf"^\[({waiting})\] \1 waiting$", timeout=120).group(1)
                # Seen in ci-runner's stdout while the job still runs: it is blocked on the gate.
                job_id = recorded_jobs(state_file)[kind]
                assert (job_state(sandbox, job_id) or "").startswith("RUNNING")
                (gates / kind).touch()
                released.add(kind)
            if backend_name == "slurm":
                run.wait_for(r"^\[slow\] slow released$", timeout=60)
                # As recorded: "A_i" when the entries are one job array (the last task's own id is A itself)
                time_out_at_next_check(json.loads(state_file.read_text())["entries"]["slow"]["job_id"])
            code = run.finish(timeout=240)
            lines = run.lines()
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    for kind in KINDS:
        printed = entry_lines(lines, kind)
        if kind == "slow":  # real Slurm's step daemon adds its own last line
            printed = [line for line in printed if not re.search(r"slurmstepd.*DUE TO TIME LIMIT", line)]
        assert printed == _expected(kind), kind
    summary = lines[lines.index("ci-runner: summary"):]
    assert any(re.match(r"pass\s+COMPLETED\s+0\s", line) for line in summary), summary
    assert any(re.match(r"fail\s+FAILED\s+3\s", line) for line in summary), summary
    assert any(re.match(r"slow\s+TIMEOUT\s", line) for line in summary), summary
    assert code == 4, lines[-12:]


def test_queue_timeout_cancels_and_reports_the_wait(make_sandbox: Callable[..., Any], tmp_path: Path) -> None:
    sandbox = make_sandbox(faults=Faults(pending_delay=120))
    repo = git_repo(tmp_path / "repo")
    config = repo / "ci.yml"
    config.write_text("version: 1\nsystem: local\ncheckout: none\nscript: echo never\n")
    state_file = tmp_path / "state.json"
    args = ["run", "--config", str(config), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci", "--queue-timeout", "3s"]
    try:
        with ci_runner(args, repo, runner_env(sandbox)) as run:
            code = run.finish(timeout=90)
            lines = run.lines()
        job_id = recorded_jobs(state_file)["default"]
        wait_until(lambda: (job_state(sandbox, job_id) or "CANCELLED").startswith("CANCELLED"), 10,
                   "the held job to be cancelled")
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    assert code == 3, lines
    message = next(line for line in lines if "(queue_timeout 3s)" in line)
    waited = re.search(r"still PENDING after (\d+)s in the queue", message)
    assert waited and int(waited.group(1)) >= 3, message
    assert "never" not in [line for line in lines if not line.startswith("ci-runner:")]


BIG_JOB = """\
import sys
out = sys.stdout.buffer
block = {block}  # the reader's chunk size: put a 4-byte character across every multiple
size = {size}
total = 0
n = 0
while total < size:
    text = "%07d " % n + "log line with some text, numbers %d and symbols " % (n * 7919)
    if n % 10 == 0:
        text += "é€😀漢"
    line = (text + "x" * (n % 50)).encode() + b"\\n"
    boundary = (total // block + 1) * block
    if total + len(line) > boundary - 2:
        pad = max(0, boundary - 2 - total)
        line = b"y" * pad + "😀".encode() + b" crossing\\n"
    out.write(line)
    total += len(line)
    n += 1
"""


MiB = 1024 * 1024


@pytest.mark.parametrize("size, cap", [(50 * MiB, 5 * MiB), (4 * MiB, 1 * MiB)], ids=["50MiB", "4MiB-site-cap-1MiB"])
def test_large_multibyte_output_is_byte_identical_and_read_once(
    make_sandbox: Callable[..., Any], tmp_path: Path, size: int, cap: int
) -> None:
    """50 MiB of log lines with 2-, 3- and 4-byte characters, one across every block boundary: stdout =
    the remote file, and the bytes the sandbox served for reading it stay within 5 % of its size. A
    site whose output cap (`max_ops_file_size`, read from /status/systems) is 1 MiB gets smaller blocks.

    (Mostly-ASCII text like real logs: when a backlog exceeds the API's output cap the reader
    uses `ops/view`, which returns characters, so text made mostly of multi-byte characters costs up
    to its bytes-per-character ratio more; see stream.py.)"""
    sandbox = make_sandbox(max_ops_size=cap)
    block = block_size_for(cap)
    repo = git_repo(tmp_path / "repo")
    generator = tmp_path / "big.py"
    generator.write_text(BIG_JOB.format(size=size, block=block), encoding="utf-8")
    config = repo / "ci.yml"
    config.write_text(f"version: 1\nsystem: local\ncheckout: none\nscript: python3 -I {generator}\n")
    state_file = tmp_path / "state.json"
    args = ["run", "--config", str(config), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci"]
    code, run = run_to_end(args, repo, runner_env(sandbox), sandbox, state_file, timeout=240)
    assert code == 0, run.lines()[-10:]
    job_id = next(iter(recorded_jobs(state_file).values()))
    remote = next((sandbox.root / "ci").glob(f"*/output/*.{job_id}.out")).read_bytes()
    assert len(remote) >= size
    # The content is adversarial: block boundaries fall inside multi-byte characters.
    assert all(remote[k] & 0xC0 == 0x80 for k in range(block, len(remote), block))
    job_end = f"{JOB_END_LINE}0\n".encode()
    assert remote.endswith(job_end)
    printed = b"".join(line for line in run.raw.splitlines(keepends=True)
                       if not line.startswith(b"ci-runner: ") or line == job_end)
    printed = b"\n".join(line for line in printed.split(b"\n") if not re.match(rb"^\S+\s+COMPLETED\s|^entry\s", line))
    assert printed == remote
    read_routes = ("/filesystem/{system_name}/ops/tail", "/filesystem/{system_name}/ops/view")
    fetched = sum(r.bytes for r in sandbox.request_log.records if r.route in read_routes)
    assert fetched / len(remote) <= 1.05, (fetched, len(remote))
    views = [r.status for r in sandbox.request_log.records if r.route == read_routes[1]]
    # the backlog was read in blocks, each under the cap; a lone entry's first reads may come before
    # its job created the file (404: not written yet), never after
    read = views[next((i for i, status in enumerate(views) if status != 404), len(views)):]
    assert read and set(read) == {200}, views


@pytest.mark.slow
def test_faults_give_the_same_result_within_the_request_budget(tmp_path: Path) -> None:
    """20 % 5xx, 429 bursts and 30 s tokens: same output and exit code as a clean run, and never more
    than the budget's requests in any 60 s window at the server (the run spans more than a minute).
    The run needs about 16 requests: a budget of 10 and a burst after every 6 answers keep the checks
    below from being vacuous (at 20/min and 12 it never met a burst nor filled a window)."""
    budget = 10
    faults = Faults(error_rate=0.2, burst_every=6, burst_length=3, retry_after=1, token_ttl=30, seed=5)
    root = tmp_path / "cluster"
    root.mkdir()
    repo = git_repo(tmp_path / "repo")
    gates = tmp_path / "gates"
    gates.mkdir()
    for kind in KINDS:
        (gates / kind).touch()
    config = repo / "ci.yml"
    config.write_text(MATRIX_CONFIG.format(gates=gates, lines=LINES))
    state_file = tmp_path / "state.json"
    options = SandboxOptions(root=root, backend="local", port=0, slots=3, local_time_scale=0.25,
                             min_token_ttl=10, faults=faults)
    with start_sandbox(options) as sandbox:
        args = ["run", "--config", str(config), "--state-file", str(state_file),
                "--requests-per-minute", str(budget), "--workdir", f"{sandbox.root}/ci"]
        code, run = run_to_end(args, repo, runner_env(sandbox), sandbox, state_file, timeout=300)
        lines = run.lines()
        records = [r for r in sandbox.request_log.records if not r.route.startswith("/auth")]
    print("\n".join(lines))  # pytest shows it in full when an assertion below fails
    statuses = {r.status for r in records}
    assert {429, 200} <= statuses and statuses & {500, 502, 503}, statuses  # the faults did happen
    for kind in KINDS:
        assert entry_lines(lines, kind) == _expected(kind), kind
    assert code == 4, lines[-12:]
    times = [r.time for r in records]
    assert len(records) > budget and max(times) - min(times) > 60  # otherwise the check below is vacuous
    assert max_in_window(times, 60.0) <= budget


@pytest.mark.slurm
def test_hopeless_pending_reason_fails_fast(tmp_path: Path) -> None:
    """A dependency on a job that failed can never be satisfied: cancelled at once, exit 3, reason named."""
    import subprocess

    failed = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "exit 1"],
                            capture_output=True, text=True, timeout=30, check=True).stdout.strip().split(";")[0]
    try:
        wait_until(lambda: "JobState=FAILED" in subprocess.run(
            ["scontrol", "show", "job", failed], capture_output=True, text=True, timeout=30).stdout,
            60, "the dependency job to fail")
        root = tmp_path / "cluster"
        root.mkdir()
        repo = git_repo(tmp_path / "repo")
        config = repo / "ci.yml"
        config.write_text("version: 1\nsystem: local\ncheckout: none\nsbatch:\n"
                          f"  dependency: afterok:{failed}\nscript: echo never\n")
        state_file = tmp_path / "state.json"
        with start_sandbox(SandboxOptions(root=root, backend="slurm", port=0)) as sandbox:
            args = ["run", "--config", str(config), "--state-file", str(state_file), "--requests-per-minute",
                    "600", "--workdir", f"{root}/ci"]
            try:
                with ci_runner(args, repo, runner_env(sandbox)) as run:
                    code = run.finish(timeout=120)
                    lines = run.lines()
                job_id = recorded_jobs(state_file)["default"]
                wait_until(lambda: (job_state(sandbox, job_id) or "CANCELLED").startswith("CANCELLED"), 10,
                           "the hopeless job to be cancelled")
            finally:
                cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    finally:
        subprocess.run(["scancel", failed], capture_output=True, timeout=30)
    assert code == 3, lines
    assert any("DependencyNeverSatisfied" in line and "can never start" in line for line in lines), lines


# -- max_output ----------------------------------------------------------------------------------------

LIMIT = 1024 * 1024
LIMITED_JOB = """\
import os, sys, time
out = sys.stdout.buffer
limit = {limit}
total = n = 0
while total < 3 * limit:
    line = ("%07d output line é€ %d\\n" % (n, n * 7919)).encode()
    if total <= limit - 2 < total + len(line):  # a 4-byte character across the limit
        line = b"z" * (limit - total - 2) + "😀".encode() + b" across the limit\\n"
    out.write(line)
    total += len(line)
    n += 1
out.flush()
gate = {gate!r}
while gate and not os.path.exists(gate):
    time.sleep(0.05)
print("last line of the job")
sys.exit(3)
"""


def _limited_run_setup(tmp_path: Path, sandbox: Any, gate: str = "") -> tuple[Path, Path, list[str]]:
    repo = git_repo(tmp_path / "repo")
    generator = tmp_path / "limited.py"
    generator.write_text(LIMITED_JOB.format(limit=LIMIT, gate=gate), encoding="utf-8")
    config = repo / "ci.yml"
    config.write_text(f"version: 1\nsystem: local\ncheckout: none\nmax_output: 1MiB\n"
                      f"script: python3 -I {generator}\n")
    state_file = tmp_path / "state.json"
    args = ["run", "--config", str(config), "--state-file", str(state_file), "--requests-per-minute", "600",
            "--workdir", f"{sandbox.root}/ci"]
    return repo, state_file, args


def _job_output(raw: bytes) -> bytes:
    """stdout minus ci-runner's own lines (the job-end line is the job's) and the summary table."""
    job_end = JOB_END_LINE.encode()
    kept = [line for line in raw.splitlines(keepends=True)
            if (not line.startswith(b"ci-runner: ") or line.startswith(job_end))
            and not re.match(rb"^entry\s|^default\s+(COMPLETED|FAILED)\s", line)]
    return b"".join(kept)


def _tail_start(remote: bytes, offset: int, tail_bytes: int) -> int:
    start = max(offset, len(remote) - tail_bytes)
    return start if remote[start - 1:start] == b"\n" else remote.index(b"\n", start) + 1


def _remote_output(sandbox: Any, state_file: Path) -> tuple[str, bytes]:
    job_id = recorded_jobs(state_file)["default"]
    path = next((sandbox.root / "ci").glob(f"*/output/*.{job_id}.out"))
    return str(path), path.read_bytes()


def test_output_over_max_output_prints_the_head_a_marker_and_the_exact_tail(
    make_sandbox: Callable[..., Any], tmp_path: Path
) -> None:
    """3 MiB of output with `max_output: 1MiB`: stdout = the first MiB (cut before the 4-byte character
    across the limit, then the line ended) + one marker line + the file's last whole lines (64 KiB at most,
    from a line start) exactly; one warning naming the limit and the file; the exit code is the job's."""
    sandbox = make_sandbox()
    repo, state_file, args = _limited_run_setup(tmp_path, sandbox)
    code, run = run_to_end(args, repo, runner_env(sandbox), sandbox, state_file)
    lines = run.lines()
    assert code == 1, lines[-10:]  # the job exited 3: a test failure, whatever was not shown
    path, remote = _remote_output(sandbox, state_file)
    assert len(remote) > 3 * LIMIT and remote.endswith(f"last line of the job\n{JOB_END_LINE}3\n".encode())
    cut = LIMIT - 2  # the 4-byte character starts 2 bytes before the limit
    assert remote[cut:cut + 4] == "😀".encode()
    start = _tail_start(remote, cut, 64 * 1024)
    marker = f"... {start - cut} bytes not shown (over max_output 1 MiB), full output in {path} ...\n".encode()
    assert _job_output(bytes(run.raw)) == remote[:cut] + b"\n" + marker + remote[start:]
    warnings = [line for line in lines if "reached max_output" in line]
    assert len(warnings) == 1 and "(1 MiB)" in warnings[0] and path in warnings[0], warnings
    assert "last part will be shown at the end" in warnings[0]
    summary = lines[lines.index("ci-runner: summary"):]
    assert any(re.match(rf"default\s+FAILED\s+3\s.*\s{len(remote)}$", line) for line in summary), summary


def test_attach_after_the_limit_does_not_print_the_head_again(
    make_sandbox: Callable[..., Any], tmp_path: Path
) -> None:
    """The runner is killed after the limit (job still running): the state file holds the offset at the
    limit, and `--attach` prints only the warning, the marker and the tail."""
    sandbox = make_sandbox()
    gate = tmp_path / "gate"
    repo, state_file, args = _limited_run_setup(tmp_path, sandbox, gate=str(gate))
    env = runner_env(sandbox)
    try:
        with ci_runner(args, repo, env) as run:
            run.wait_for("reached max_output", timeout=120)
            job_id = recorded_jobs(state_file)["default"]
            assert (job_state(sandbox, job_id) or "").startswith("RUNNING")
            offset = json.loads(state_file.read_text())["entries"]["default"]["offset"]
            run.kill()
        assert offset == LIMIT - 2
        assert _job_output(bytes(run.raw)).endswith(b"z\n")  # the cut line, ended by ci-runner
        gate.touch()
        with ci_runner([*args[:1], "--attach", *args[1:]], repo, env) as attached:
            code = attached.finish(timeout=120)
            lines = attached.lines()
    finally:
        cancel_jobs(sandbox, list(recorded_jobs(state_file).values()))
    assert code == 1, lines[-10:]
    path, remote = _remote_output(sandbox, state_file)
    start = _tail_start(remote, offset, 64 * 1024)
    marker = f"... {start - offset} bytes not shown (over max_output 1 MiB), full output in {path} ...\n".encode()
    assert _job_output(bytes(attached.raw)) == marker + remote[start:]
    assert sum("reached max_output" in line for line in lines) == 1
