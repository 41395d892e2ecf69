#!/usr/bin/env python3
"""`srun` inside a local-backend job: one task run as a job step, as Slurm 22.05's srun runs it inside
an allocation (what it imitates, with the messages observed on real Slurm: local.py's docstring).

Standalone (stdlib only): the local backend copies this file to `<spool>/bin/srun` and puts that first
on the job's PATH. It learns the job from the environment the backend sets: SLURM_JOB_ID,
SLURM_JOB_CPUS_PER_NODE (the allocation's CPUs), SLURMD_NODENAME, and three sandbox variables:
CI_RUNNER_SANDBOX_STEPS (the job's step directory: a lock file and the step table), ..._TIME_SCALE and
..._KILL_WAIT (the backend's `time_scale` and `kill_wait`).

The step table (`steps.json`, only read or written under `flock` on `lock`) holds the next step id, the
next ticket, the CPUs of running steps and the queue of waiting ones, each by the pid of its srun; an
srun that died without cleaning up (SIGKILL) is dropped when its pid is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_POLL = 0.05  # seconds between looks at the step table while a step waits for CPUs
_TRY_HELP = 'Try "srun --help" for more information\n'
_WITH_ARGUMENT = {  # long option -> its short letter ("" when it has none)
    "nodes": "N", "ntasks": "n", "cpus-per-task": "c", "time": "t", "job-name": "J", "constraint": "C",
    "mem": "", "mem-per-cpu": "", "mem-per-gpu": "", "gpus": "G", "gpus-per-node": "", "gpus-per-task": "",
    "gres": "", "cpus-per-gpu": "", "nodelist": "w", "partition": "p", "account": "A", "qos": "q",
}  # fmt: skip
_FLAGS = {"quiet": "Q", "exact": "", "overlap": "", "verbose": "v", "unbuffered": "u"}
_SHORT = {letter: name for table in (_WITH_ARGUMENT, _FLAGS) for name, letter in table.items() if letter}
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


class SrunError(Exception):
    """srun refuses the step: `message` (complete lines) on stderr, exit status `status`."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Step:
    """What the command line asks for."""

    command: list[str]
    cpus: int
    cpus_per_task: int | None
    time_limit: int | None  # seconds; None = the job's limit
    overlap: bool  # takes no CPUs of the job (--overlap, SLURM_OVERLAP)
    exact: bool  # only its own CPUs (--exact, implied by --cpus-per-task); else it sees the job's
    quiet: bool


def parse_args(argv: list[str], env: dict[str, str]) -> Step:
    """The step `argv` (srun's arguments) asks for; options stop at the first word that is not one.
    Defaults come from the environment as srun takes them: SLURM_NTASKS, SLURM_CPUS_PER_TASK, SLURM_OVERLAP."""
    values: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        word = argv[i]
        i += 1
        if word == "--":
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if name not in _WITH_ARGUMENT and name not in _FLAGS:
                raise SrunError(f"srun: unrecognized option '{word}'\n{_TRY_HELP}", 255)
            if name in _FLAGS and eq:
                raise SrunError(f"srun: option '--{name}' doesn't allow an argument\n{_TRY_HELP}", 255)
            attached = value if eq else None
        else:
            name = _SHORT.get(word[1], "")
            if not name or (name in _FLAGS and len(word) > 2):
                raise SrunError(f"srun: invalid option -- '{word[1:]}'\n{_TRY_HELP}", 255)
            attached = word[2:] or None
        if name in _WITH_ARGUMENT and attached is None:
            if i >= len(argv):
                raise SrunError(f"srun: option '{word}' requires an argument\n{_TRY_HELP}", 255)
            attached = argv[i]
            i += 1
        values[name] = attached if attached is not None else ""
    command = argv[i:]
    if not command:
        raise SrunError("srun: fatal: No command given to execute.\n")
    ntasks = _count(values.get("ntasks") or env.get("SLURM_NTASKS") or "1", "ntasks")
    if ntasks != 1 or _count(values.get("nodes", "1").split("-")[0], "nodes") != 1:
        raise SrunError("srun: error: the local sandbox runs one task on one node per step "
                        "(use --nodes=1 --ntasks=1)\n")
    per_task_text = values.get("cpus-per-task") or env.get("SLURM_CPUS_PER_TASK")
    per_task = None if per_task_text is None else _count(per_task_text, "cpus-per-task")
    return Step(command=command, cpus=ntasks * (per_task or 1), cpus_per_task=per_task,
                time_limit=None if "time" not in values else parse_time(values["time"]),
                overlap="overlap" in values or bool(env.get("SLURM_OVERLAP")),
                exact="exact" in values or per_task is not None, quiet="quiet" in values)


def _count(text: str, option: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise SrunError(f"srun: error: Invalid numeric value \"{text}\" for --{option}.\n")
    return int(text)


def parse_time(text: str) -> int | None:
    """Seconds of a Slurm time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS), rounded up to whole
    minutes like Slurm; None for no limit (0, UNLIMITED). Mirrors sbatch_options.parse_time_limit."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "-1"):
        return None
    match = _TIME.fullmatch(text)
    if match is None:
        raise SrunError("srun: error: Invalid --time specification\n", 255)
    days, first, second, third = match.groups()
    fields = [int(v) for v in (first, second, third) if v is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        units = [3600, 60, 1][: len(fields)]
        seconds = int(days) * 86400
    else:  # MM, MM:SS, HH:MM:SS
        units = {1: [60], 2: [60, 1], 3: [3600, 60, 1]}[len(fields)]
        seconds = 0
    seconds += sum(v * u for v, u in zip(fields, units))
    minutes = -(-seconds // 60)
    return None if minutes == 0 else minutes * 60


# --- the job's step table --------------------------------------------------------------------------


@contextmanager
def step_table(directory: Path) -> Iterator[dict[str, Any]]:
    """The job's step table, locked for the `with` block and written back after it (srun's whose pid
    is gone dropped)."""
    with open(directory / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / "steps.json"
        table = json.loads(path.read_text()) if path.exists() else {
            "next_step": 0, "next_ticket": 0, "running": {}, "waiting": []}
        table["running"] = {pid: cpus for pid, cpus in table["running"].items() if _alive(int(pid))}
        table["waiting"] = [entry for entry in table["waiting"] if _alive(entry[1])]
        yield table
        path.write_text(json.dumps(table))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def create_step(directory: Path, job_id: str, step: Step, total: int) -> int:
    """Wait (FIFO) until the step's CPUs are free among the job's `total` and take them; the new step's
    id. An overlapping step takes no CPUs and starts at once. More CPUs than the job has: srun's refusal."""
    cpus = step.cpus
    if cpus > total:
        raise SrunError(f"srun: error: Unable to create step for job {job_id}: More processors requested than permitted\n")
    me, waited = os.getpid(), False
    with step_table(directory) as table:
        if step.overlap:
            table["next_step"] += 1
            return int(table["next_step"]) - 1
        ticket = table["next_ticket"]
        table["next_ticket"] += 1
        table["waiting"].append([ticket, me, cpus])
    while True:  # ends when the step starts; the job's end kills this srun with its process group
        with step_table(directory) as table:
            used = sum(table["running"].values())
            if table["waiting"][0][0] == ticket and used + cpus <= total:
                table["waiting"].pop(0)
                table["running"][str(me)] = cpus
                table["next_step"] += 1
                if waited and not step.quiet:
                    sys.stderr.write(f"srun: Step created for job {job_id}\n")
                return int(table["next_step"]) - 1
        if not waited and not step.quiet:
            sys.stderr.write(f"srun: Job {job_id} step creation temporarily disabled, retrying "
                             "(Requested nodes are busy)\n")
            sys.stderr.flush()
        waited = True
        time.sleep(_POLL)


def release_step(directory: Path) -> None:
    """Give this srun's CPUs back."""
    with step_table(directory) as table:
        table["running"].pop(str(os.getpid()), None)


# --- running the task ------------------------------------------------------------------------------


def step_env(env: dict[str, str], step: Step, step_id: int, total: int) -> dict[str, str]:
    """The task's environment: the job's, with the step's Slurm variables (as srun 22.05 sets them)."""
    node = env.get("SLURMD_NODENAME", "localhost")
    task = dict(env)
    task.update({
        "SLURM_STEP_ID": str(step_id), "SLURM_STEPID": str(step_id), "SLURM_STEP_NODELIST": node,
        "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_TASKS_PER_NODE": "1",
        "SLURM_NTASKS": "1", "SLURM_NPROCS": "1", "SLURM_TASKS_PER_NODE": "1", "SLURM_CPUS_ON_NODE": str(step.cpus if step.exact else total),
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_DISTRIBUTION": "cyclic",
    })  # fmt: skip
    if step.cpus_per_task is not None:
        task["SLURM_CPUS_PER_TASK"] = str(step.cpus_per_task)
    return task


def run_task(step: Step, env: dict[str, str], step_id: int, total: int) -> int:
    """Run the task in the job's process group (so a cancel of the job reaches it) and return srun's exit
    status: the task's, 128+S when signal S killed it. Past the step's time limit the task (and what it
    started) gets SIGTERM, then SIGKILL after the kill wait, as slurmstepd does."""
    node = env.get("SLURMD_NODENAME", "localhost")
    name = f"{env.get('SLURM_JOB_ID')}.{step_id}"
    try:
        task = subprocess.Popen(step.command, env=step_env(env, step, step_id, total))
    except OSError as exc:
        sys.stderr.write(f"slurmstepd-{node}: error: execve(): {step.command[0]}: {exc.strerror}\n")
        return _report(node, 2)
    # The job is cancelled (SIGTERM to its process group, the task included): say so, wait for the task.
    signal.signal(signal.SIGTERM, lambda *_: _stepd_error(node, f"*** STEP {name} ON {node} CANCELLED AT {_now()} ***"))
    scale = float(env.get("CI_RUNNER_SANDBOX_TIME_SCALE", "1"))
    try:
        return _report(node, task.wait(timeout=None if step.time_limit is None else step.time_limit * scale))
    except subprocess.TimeoutExpired:
        _stepd_error(node, f"*** STEP {name} ON {node} CANCELLED AT {_now()} DUE TO TIME LIMIT ***")
        status = _report(node, _end(task, float(env.get("CI_RUNNER_SANDBOX_KILL_WAIT", "5"))))
        if not step.quiet:
            sys.stderr.write(f"srun: Force Terminated StepId={name}\n")
        return status


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _stepd_error(node: str, text: str) -> None:
    """A line slurmstepd writes to the step's stderr."""
    sys.stderr.write(f"slurmstepd-{node}: error: {text}\n")
    sys.stderr.flush()


def _end(task: subprocess.Popen[bytes], kill_wait: float) -> int:
    """SIGCONT+SIGTERM to the task and its descendants, SIGKILL after `kill_wait`; its return code."""
    for sig in (signal.SIGCONT, signal.SIGTERM):
        _signal_tree(task.pid, sig)
    try:
        return task.wait(timeout=kill_wait)
    except subprocess.TimeoutExpired:
        _signal_tree(task.pid, signal.SIGKILL)
        return task.wait()


def _signal_tree(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to `pid` and, where /proc lists children (Linux), to all its descendants."""
    pids, i = [pid], 0
    while i < len(pids):
        for children in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            try:
                pids += [int(child) for child in children.read_text().split()]
            except OSError:
                pass
        i += 1
    for target in pids:
        try:
            os.kill(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _report(node: str, returncode: int) -> int:
    """srun's closing line for a task that failed, and srun's exit status."""
    if returncode > 0:
        sys.stderr.write(f"srun: error: {node}: task 0: Exited with exit code {returncode}\n")
        return returncode
    if returncode < 0:
        sys.stderr.write(f"srun: error: {node}: task 0: {signal.strsignal(-returncode)}\n")
        return 128 - returncode
    return 0


def main(argv: list[str]) -> int:
    """srun's exit status for the command line `argv` (without the program name)."""
    env = dict(os.environ)
    directory = env.get("CI_RUNNER_SANDBOX_STEPS")
    if directory is None or "SLURM_JOB_ID" not in env:
        sys.stderr.write("srun: error: this srun only runs job steps inside a local sandbox job\n")
        return 1
    try:
        step = parse_args(argv, env)
        total = int(env.get("SLURM_JOB_CPUS_PER_NODE", "1"))
        step_id = create_step(Path(directory), env["SLURM_JOB_ID"], step, total)
    except SrunError as exc:
        sys.stderr.write(exc.message)
        return exc.status
    try:
        return run_task(step, env, step_id, total)
    finally:
        if not step.overlap:
            release_step(Path(directory))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
