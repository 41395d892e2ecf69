"""Slurm backend: real `sbatch`, `scontrol` and `scancel` on this machine, as the FirecREST server runs them.

- submit: `sbatch --parsable --export=ALL,K=V,... --chdir=<dir> [--begin=now+N]`, script on stdin
  (the real server's command line; `pending_delay` becomes `--begin`, so the job is PENDING/BeginTime.
  Note: Slurm only re-evaluates a job after its begin time at its next scheduling pass, up to ~30 s later).
- job info from `scontrol show job -o` (there is no accounting database, so no sacct): fields mapped
  the way the real server maps sacct/squeue columns. A job cancelled through `cancel` reads
  "CANCELLED by <uid>" like sacct shows it; other cancelled jobs read "CANCELLED by <our uid>".
- Once Slurm purges a finished job (MinJobAge, 600 s here) it is gone: `jobs` omits it and `metadata`
  returns None, which the server turns into 404 "Job not found." like a real server without accounting.
- `jobs()` without ids lists only the jobs this backend submitted (other users of the machine's Slurm,
  e.g. parallel test runs, stay invisible); explicit ids are looked up whoever submitted them.
- cancel runs `scancel --verbose <id>` like the real server and fails like it: a non-zero exit status or
  an "error:" line on stderr (finished job, unknown id) → 500 with scancel's stderr.
- Slurm command failures → BackendError(500, "Unexpected Slurm command response. exit_status:N std_err:...")
  with the command's stderr verbatim; a QOS or association limit on submit → 403; a command that hangs
  longer than `command_timeout` → 408.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ci_runner.sandbox.backends.base import (
    BackendError,
    JobRecord,
    cancelled_state,
    check_env,
    job_dict,
    metadata_dict,
    sbatch_failure,
    slurm_command_error,
)
from ci_runner.sandbox.files import TIMEOUT_MESSAGE

_ACTIVE = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
    "STAGE_OUT", "RESIZING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
}  # fmt: skip
_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9:/_]*)=(.*?)(?= [A-Za-z][A-Za-z0-9:/_]*=|$)")
_INVALID_JOB = "Invalid job id specified"
_SCANCEL_ERROR = re.compile(r".+error:.*", re.IGNORECASE)  # the real server's test of scancel's stderr
_ONE_YEAR = 365 * 86400  # sched/backfill records an unlimited job's limit as 365-00:00:00


def slurm_works(timeout: float = 5.0) -> bool:
    """True when `sbatch` is on PATH and `scontrol ping` finds the controller up."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "UP" in done.stdout


class SlurmBackend:
    """Jobs on the machine's real Slurm (see module docstring)."""

    name = "slurm"

    def __init__(self, command_timeout: float = 10.0) -> None:
        self.command_timeout = command_timeout
        self._lock = threading.Lock()
        self._scripts: dict[str, str] = {}  # job id -> submitted script, in submission order
        self._cancelled: dict[str, int] = {}  # job id -> uid that cancelled it through the API
        self._cluster: str | None = None

    # --- Backend interface -------------------------------------------------------------------

    def submit(self, script: str, working_dir: str, env: Mapping[str, str], pending_delay: float = 0.0) -> str:
        """Run sbatch like the real server; the job id it prints."""
        check_env(env)
        export = ",".join(["ALL", *(f"{key}={value}" for key, value in env.items())])
        args = ["sbatch", "--parsable", f"--export={export}", f"--chdir={working_dir}"]
        if pending_delay > 0:
            args.append(f"--begin=now+{max(1, round(pending_delay))}")
        done = self._run(args, stdin=script)
        if done.returncode != 0:
            raise sbatch_failure(done.returncode, done.stderr)
        job_id = done.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise slurm_command_error(done.returncode, f"no job id in sbatch's output {done.stdout!r}")
        with self._lock:
            self._scripts[job_id] = script
        return job_id

    def jobs(self, job_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Job dicts from `scontrol show job -o`, in the order asked; all: every job of this user that
        Slurm still knows (as the real server lists the user's jobs, also those an earlier
        incarnation of the sandbox submitted), in the order of their ids."""
        with self._lock:
            cancelled = dict(self._cancelled)
        if job_ids is None:
            fields_by_id = {f.get("JobId", ""): f for f in self._show_jobs(None) if _uid_of(f) == os.getuid()}
            wanted = sorted(fields_by_id, key=lambda i: (len(i), i))
        else:
            wanted = list(job_ids)
            if not wanted:
                return []
            fields_by_id = {f.get("JobId", ""): f for f in self._show_jobs(wanted)}
        cluster = self._cluster_name()
        return [
            job_dict(job_record(fields_by_id[i], cancelled.get(i), cluster)) for i in wanted if i in fields_by_id
        ]

    def metadata(self, job_id: str) -> dict[str, Any] | None:
        """Script and StdIn/StdOut/StdErr (patterns expanded by Slurm), or None once Slurm forgot the job."""
        found = self._show_jobs([job_id])
        if not found:
            return None
        fields = found[0]
        with self._lock:
            script = self._scripts.get(job_id)
        if script is None:
            done = self._run(["scontrol", "write", "batch_script", job_id, "-"])
            script = done.stdout if done.returncode == 0 else ""
        return metadata_dict(
            job_id, script, fields.get("StdIn", ""), fields.get("StdOut", ""), fields.get("StdErr", "")
        )

    def cancel(self, job_id: str, uid: int) -> None:
        """`scancel --verbose <id>`, its answer judged like the real server's ScancelCommand."""
        with self._lock:
            first = job_id not in self._cancelled
            self._cancelled.setdefault(job_id, uid)
        done = self._run(["scancel", "--verbose", job_id])
        if done.returncode != 0 or _SCANCEL_ERROR.search(done.stderr):
            if first:
                with self._lock:
                    self._cancelled.pop(job_id, None)
            raise slurm_command_error(done.returncode, done.stderr)

    def close(self) -> None:
        """Cancel the jobs this backend submitted that are still queued or running."""
        with self._lock:
            ids = list(self._scripts)
        if not ids:
            return
        try:
            active = [f["JobId"] for f in self._show_jobs(ids) if _base_state(f.get("JobState", "")) in _ACTIVE]
            if active:
                self._run(["scancel", *active])
        except BackendError:
            pass

    # --- Slurm commands ------------------------------------------------------------------------

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command with epoch timestamps; timeouts and missing binaries become BackendError."""
        env = dict(os.environ, SLURM_TIME_FORMAT="%s")
        try:
            return subprocess.run(
                args,
                input=stdin,
                capture_output=True,
                text=True,
                env=env,
                timeout=self.command_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BackendError(408, TIMEOUT_MESSAGE) from exc
        except OSError as exc:
            raise slurm_command_error(127, f"{args[0]}: {exc}\n") from exc

    def _show_jobs(self, job_ids: Sequence[str] | None) -> list[dict[str, str]]:
        """scontrol's fields of the known jobs among `job_ids` (one call per id for a single id, else one);
        None: of every job Slurm knows."""
        if job_ids is None:
            done = self._run(["scontrol", "show", "job", "-o"])
            if done.returncode != 0:
                raise slurm_command_error(done.returncode, done.stderr)
            return [f for f in map(parse_scontrol_line, done.stdout.splitlines()) if f.get("JobId")]
        ids = [i for i in job_ids if i.isdigit()]
        if not ids:
            return []
        args = ["scontrol", "show", "job", "-o"] + (ids if len(ids) == 1 else [])
        done = self._run(args)
        if done.returncode != 0:
            if _INVALID_JOB in done.stderr:
                return []
            raise slurm_command_error(done.returncode, done.stderr)
        wanted = set(ids)
        return [f for f in map(parse_scontrol_line, done.stdout.splitlines()) if f.get("JobId") in wanted]

    def _cluster_name(self) -> str:
        if self._cluster is None:
            done = self._run(["scontrol", "show", "config"])
            match = re.search(r"^ClusterName\s*=\s*(\S+)", done.stdout, re.MULTILINE)
            self._cluster = match.group(1) if match else "local"
        return self._cluster


def _uid_of(fields: dict[str, str]) -> int | None:
    """'root(0)' in UserId → 0."""
    match = re.search(r"\((\d+)\)", fields.get("UserId", ""))
    return int(match.group(1)) if match else None


def parse_scontrol_line(line: str) -> dict[str, str]:
    """`Key=Value` pairs of one `scontrol show job -o` line (values may contain spaces)."""
    return {m.group(1): m.group(2) for m in _FIELD.finditer(line.strip())}


def job_record(fields: Mapping[str, str], cancelled_by: int | None, cluster: str) -> JobRecord:
    """Map scontrol's fields to what FirecREST reports: for a pending job squeue's view (start and end are
    Slurm's estimates, null until it has one), then sacct's (start the real start, end null while running)."""
    state = _base_state(fields.get("JobState", ""))
    pending = state == "PENDING"
    terminal = state not in _ACTIVE
    exit_code, signal = _exit_code(fields.get("ExitCode", ""))
    nodes = _null(fields.get("NodeList", ""))
    return JobRecord(
        job_id=fields.get("JobId", ""),
        name=fields.get("JobName", ""),
        state=cancelled_state(cancelled_by) if state == "CANCELLED" else state,
        reason=fields.get("Reason", "None"),
        exit_code=None if pending else exit_code,
        signal=None if pending else signal,
        working_directory=fields.get("WorkDir", ""),
        user=_name_of(fields.get("UserId", "")),
        group=_name_of(fields.get("GroupId", "")),
        elapsed=duration_seconds(fields.get("RunTime", "")) or 0,
        start=_epoch(fields.get("StartTime", "")),  # pending: Slurm's estimate (BeginTime) or null, like squeue's
        end=None if state == "RUNNING" else _epoch(fields.get("EndTime", "")),
        suspended=None if pending else 0,
        limit=_limit(fields.get("TimeLimit", "")),
        account="(null)" if pending and fields.get("Account") == "(null)" else _null(fields.get("Account", "")),
        cluster=cluster,
        partition=fields.get("Partition", ""),
        nodes="None assigned" if terminal and not nodes else nodes,
        allocation_nodes=_leading_int(fields.get("NumNodes", "")) or 1,
        priority=_leading_int(fields.get("Priority", "")),
    )


def duration_seconds(text: str) -> int | None:
    """Seconds of scontrol's [D-]HH:MM:SS (or MM:SS); None for UNLIMITED, Partition_Limit and the like."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _limit(text: str) -> int | None:
    """TimeLimit in seconds; None for no limit (UNLIMITED, or the one year backfill substitutes for it)."""
    seconds = duration_seconds(text)
    return None if seconds is None or seconds >= _ONE_YEAR else seconds


def _base_state(text: str) -> str:
    """'CANCELLED by 0' or 'CANCELLED+' → 'CANCELLED'."""
    return text.split(" ")[0].rstrip("+")


def _exit_code(text: str) -> tuple[int | None, int | None]:
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def _epoch(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _null(text: str) -> str:
    return "" if text == "(null)" else text


def _name_of(text: str) -> str:
    """'root(0)' → 'root'."""
    return text.split("(")[0]


def _leading_int(text: str) -> int | None:
    match = re.match(r"\d+", text)
    return int(match.group()) if match else None
