"""Local backend: batch scripts as subprocesses with Slurm-like queueing, states, time limits and output files.

For laptops and CI runners without Slurm. What it imitates (Slurm 22.05 without accounting, as seen
through FirecREST):
- `#SBATCH --output/-o`, `--error/-e`, `--input/-i` (patterns %j %x %u %%; relative to the working
  directory; default `slurm-%j.out`; stderr into the stdout file unless `--error`), `--job-name/-J`
  (default "sbatch", the name sbatch gives a script read from stdin), `--time/-t` (all Slurm formats).
- sbatch's refusals, worded like sbatch: an unknown option, a missing argument, a bad `--time`, a
  partition other than `debug` (the only one), and a QOS listed in `rejected_qos` (a sandbox fault:
  "QOSMaxSubmitJobPerUserLimit", which the server answers with 403; jobs without `--qos` get "normal").
- Job arrays (`--array`, patterns %A %a) as Slurm without accounting shows them: the array's job id
  stands for its tasks still pending; a task that starts gets the next job id of its own, except the
  last one, which takes the array's id; SLURM_ARRAY_JOB_ID/SLURM_ARRAY_TASK_ID are set; cancelling
  the array's id cancels every task of it.
- A fixed number of slots: jobs queue FIFO, PENDING with reason "Resources" until a slot frees, and
  "BeginTime" while a `pending_delay` lasts.
- RUNNING → COMPLETED (0:0) | FAILED (R:0, NonZeroExitCode) | TIMEOUT (0:15, TimeLimit: SIGTERM to the
  job's process group, SIGKILL after `kill_wait`) | "CANCELLED by <uid>" (0:15 when it ran, 0:0 when
  it was still pending). When the batch script ends, whatever it left behind in its group is killed
  (after a SIGTERM, once `kill_wait` has passed, as slurmstepd does).
- `fail_node(job_id)` (a test hook) ends a running job NODE_FAIL, as a node going down would.
- The allocation: `--ntasks` x `--cpus-per-task` CPUs (1 without them) on one node, and the variables a
  batch job gets on Slurm 22.05 (SLURM_CPUS_ON_NODE, SLURM_JOB_CPUS_PER_NODE, SLURM_NTASKS/SLURM_NPROCS/
  SLURM_TASKS_PER_NODE with --ntasks, SLURM_CPUS_PER_TASK with -c, SLURM_NNODES, SLURM_NODELIST,
  SLURMD_NODENAME, SLURM_JOB_USER/UID/GID, SLURM_SUBMIT_HOST, SLURM_PROCID/LOCALID/NODEID/GTIDS).
- Job steps: `srun` (the shim srun.py, first on the job's PATH) runs one task (`--nodes=1 --ntasks=1`;
  more is refused) in the job's process group, so a cancel ends it too. As srun 22.05 inside an
  allocation: a step waits (FIFO) until its `--cpus-per-task` CPUs are free, saying "srun: Job N step
  creation temporarily disabled, retrying (Requested nodes are busy)" and "srun: Step created for job
  N" unless `--quiet`; more CPUs than the job has fails at once, "srun: error: Unable to create step for
  job N: More processors requested than permitted" (status 1); `--overlap` or SLURM_OVERLAP (a step
  inside a step) takes no CPUs. Steps are numbered 0, 1, ... per job (SLURM_STEP_ID, SLURM_STEPID and
  the step's SLURM_NTASKS, SLURM_CPUS_ON_NODE, ...). srun's status is the task's, 128+S for signal S,
  with "srun: error: <node>: task 0: Exited with exit code N" or "...: task 0: Terminated" (strsignal)
  on stderr; a step `--time` (all formats, whole minutes, scaled by `time_scale`) ends the task with
  "slurmstepd-<node>: error: *** STEP J.S ON <node> CANCELLED AT <time> DUE TO TIME LIMIT ***",
  SIGTERM, SIGKILL after `kill_wait`, and "srun: Force Terminated StepId=J.S" unless `--quiet`; a cancel
  of the job prints "*** STEP J.S ON <node> CANCELLED AT <time> ***". `--exact`, `--mem*`, `--gpus*`,
  `--gres`, `--constraint`, `--job-name`, ... are accepted and ignored; other options fail like srun
  ("srun: unrecognized option '--x'", status 255), also some a real srun knows. Unlike real srun, a step
  without `--exact`/`-c` takes only its own CPUs (real Slurm gives it the job's and waits for them).
- A finished job is forgotten `min_job_age` seconds after it ended (Slurm's MinJobAge, 600 s): then
  `jobs` omits it and `metadata` returns None, as the real server answers "Job not found.".

Sandbox-only knob: `time_scale` multiplies every time limit before it is enforced (0.05 makes
`--time=1` end after 3 s) so tests reach TIMEOUT quickly; job dicts still report the requested limit.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ci_runner.sandbox.backends.base import (
    JobRecord,
    cancelled_state,
    check_env,
    job_dict,
    metadata_dict,
    slurm_command_error,
)
from ci_runner.sandbox.backends.sbatch_options import (
    DEFAULT_PARTITION,
    SbatchOptions,
    check_batch_script,
    check_submission,
    expand_pattern,
    parse_options,
)

_TICK = 0.05  # seconds between scheduler passes
_MAX_PRIORITY = 4294901760  # Slurm's priority of the first job on an idle cluster; later jobs get less


@dataclass
class _Job:
    """Mutable state of one local job; only touched under the backend's lock."""

    job_id: str
    script: str
    working_dir: str
    env: dict[str, str]
    name: str
    stdout: str
    stderr: str
    stdin: str
    limit: int | None
    begin: float
    state: str = "PENDING"
    reason: str = "None"
    exit_code: int | None = None
    signal: int | None = None
    start: float | None = None
    end: float | None = None
    nodes: str = ""
    proc: subprocess.Popen[bytes] | None = None
    term_sent: float | None = None
    killed: bool = False
    reaped: bool = False  # the batch script ended and whatever it left behind was killed
    timed_out: bool = False
    cancelled_by: int | None = None
    files: list[IO[bytes]] = field(default_factory=list)
    options: SbatchOptions | None = None  # a job array's: its tasks' file patterns
    array_id: str | None = None  # a job array's id (its first job id), on the array and on each task
    task: int | None = None  # the array task this job runs
    array_rest: list[int] = field(default_factory=list)  # the array's tasks not started yet

    @property
    def live(self) -> bool:
        """The job's batch process has started and not been reaped yet (it holds a slot)."""
        return self.proc is not None and self.proc.returncode is None


class LocalBackend:
    """Jobs as local subprocesses, each in its own session/process group (see module docstring)."""

    name = "local"

    def __init__(
        self,
        root: Path,
        slots: int = 2,
        *,
        time_scale: float = 1.0,
        kill_wait: float = 5.0,
        min_job_age: float = 600.0,
        rejected_qos: frozenset[str] = frozenset(),
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.root = Path(root)
        self.slots = slots
        self.time_scale = time_scale
        self.kill_wait = kill_wait
        self.min_job_age = min_job_age
        self.rejected_qos = rejected_qos
        self._spool = Path(tempfile.mkdtemp(prefix="ci-runner-local-jobs-"))
        self._bin = _install_srun(self._spool / "bin")
        self._jobs: dict[str, _Job] = {}
        self._next_id = 1
        self._lock = threading.Condition()
        self._closed = False
        self._user = _user_name()
        self._group = _group_name()
        self._node = socket.gethostname().split(".")[0] or "localhost"
        self._thread = threading.Thread(target=self._run, name="local-backend-scheduler", daemon=True)
        self._thread.start()

    # --- Backend interface -------------------------------------------------------------------

    def submit(self, script: str, working_dir: str, env: Mapping[str, str], pending_delay: float = 0.0) -> str:
        """Queue `script`; it starts when a slot is free and `pending_delay` seconds have passed."""
        check_env(env)
        check_batch_script(script)
        options = parse_options(script)
        check_submission(options, frozenset({DEFAULT_PARTITION}), self.rejected_qos)
        with self._lock:
            if self._closed:
                raise RuntimeError("backend is closed")
            job_id = str(self._next_id)
            self._next_id += 1
            self._jobs[job_id] = self._new_job(job_id, script, working_dir, env, options, pending_delay)
            self._lock.notify_all()
        return job_id

    def jobs(self, job_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Job dicts of `job_ids` (unknown or forgotten ones omitted), or of every job still remembered."""
        with self._lock:
            self._advance(time.time())
            ids = list(self._jobs) if job_ids is None else [i for i in job_ids if i in self._jobs]
            now = time.time()
            return [job_dict(self._record(self._jobs[i], now)) for i in ids]

    def metadata(self, job_id: str) -> dict[str, Any] | None:
        """Script and expanded stdin/stdout/stderr paths of the job, or None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return metadata_dict(job.job_id, job.script, job.stdin, job.stdout, job.stderr)

    def cancel(self, job_id: str, uid: int) -> None:
        """Cancel a pending or running job (its whole process group), or every task of a job array
        given by the array's id; anything else fails like scancel."""
        if not job_id.isdigit():
            raise slurm_command_error(1, f"scancel: error: Invalid job id {job_id}\n")
        with self._lock:
            job = self._jobs.get(job_id)
            targets = [] if job is None else [
                j for j in self._jobs.values()
                if (j is job or (job.array_id == job_id and j.array_id == job_id)) and j.state in ("PENDING", "RUNNING")]
            if job is None or not targets:
                reason = "Invalid job id specified" if job is None else "Job/step already completing or completed"
                raise slurm_command_error(0, f"scancel: Terminating job {job_id}\n"
                                             f"scancel: error: Kill job error on job id {job_id}: {reason}\n")
            now = time.time()
            for target in targets:
                if target.state == "PENDING":
                    target.state = cancelled_state(uid)
                    target.exit_code, target.signal = 0, 0
                    target.start = target.end = now
                    target.nodes = "None assigned"
                    target.array_rest = []
                else:
                    target.cancelled_by = uid
                    self._terminate(target, now)
            self._lock.notify_all()

    def fail_node(self, job_id: str) -> bool:
        """Test hook, the cluster failing under a running job: its processes are killed at once and it
        ends NODE_FAIL (reason NodeDown, exit code 0:0) as Slurm reports a job whose node went down.
        False when the job is unknown or not running."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != "RUNNING" or job.proc is None:
                return False
            job.state, job.reason, job.exit_code, job.signal, job.end = "NODE_FAIL", "NodeDown", 0, 0, time.time()
            job.killed = True
            _signal_group(job.proc, signal.SIGKILL)
            self._lock.notify_all()
            return True

    def close(self) -> None:
        """Stop the scheduler and kill every job process this backend started."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=5)
        with self._lock:
            for job in self._jobs.values():
                if job.proc is not None:
                    _signal_group(job.proc, signal.SIGKILL)
                    try:
                        job.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                _close_files(job)
        shutil.rmtree(self._spool, ignore_errors=True)

    # --- scheduling ----------------------------------------------------------------------------

    def _run(self) -> None:
        """Scheduler thread: advance every job's state until closed."""
        with self._lock:
            while not self._closed:
                self._advance(time.time())
                self._lock.wait(timeout=_TICK)

    def _advance(self, now: float) -> None:
        """Reap finished processes, enforce time limits, start queued jobs, forget old ones."""
        for job in self._jobs.values():
            if job.proc is not None and not job.reaped:
                self._check_running(job, now)
        self._start_queued(now)
        for job_id in [i for i, j in self._jobs.items() if self._forgettable(j, now)]:
            del self._jobs[job_id]

    def _check_running(self, job: _Job, now: float) -> None:
        assert job.proc is not None and job.start is not None
        returncode = job.proc.poll()
        if returncode is not None:
            if job.state == "RUNNING":
                self._finish(job, returncode, now)
            if job.term_sent is None or job.killed or now - job.term_sent >= self.kill_wait:
                # Leftovers of the batch script die with the job; after a SIGTERM they get the kill
                # wait, like slurmstepd gives them (so srun can still report its steps).
                _signal_group(job.proc, signal.SIGKILL)
                _close_files(job)
                job.reaped = True
            return
        if job.limit is not None and job.state == "RUNNING":
            if now - job.start >= job.limit * self.time_scale:
                job.timed_out = True
                job.state, job.reason = "TIMEOUT", "TimeLimit"
                job.exit_code, job.signal, job.end = 0, 15, now
                self._terminate(job, now)
        if job.term_sent is not None and not job.killed and now - job.term_sent >= self.kill_wait:
            job.killed = True
            _signal_group(job.proc, signal.SIGKILL)

    def _finish(self, job: _Job, returncode: int, now: float) -> None:
        """Final state of a job whose batch script ended by itself."""
        job.end = now
        if returncode == 0:
            job.state, job.reason, job.exit_code, job.signal = "COMPLETED", "None", 0, 0
        elif returncode > 0:
            job.state, job.reason, job.exit_code, job.signal = "FAILED", "NonZeroExitCode", returncode, 0
        else:
            sig = -returncode
            job.state, job.reason, job.exit_code, job.signal = "FAILED", f"RaisedSignal:{sig}({_signame(sig)})", 0, sig

    def _terminate(self, job: _Job, now: float) -> None:
        """SIGTERM the job's process group (SIGKILL follows after kill_wait); a cancel is final at once."""
        if job.cancelled_by is not None and not job.timed_out:
            job.state, job.exit_code, job.signal, job.end = cancelled_state(job.cancelled_by), 0, 15, now
        if job.term_sent is None and job.proc is not None:
            job.term_sent = now
            _signal_group(job.proc, signal.SIGCONT)
            _signal_group(job.proc, signal.SIGTERM)

    def _start_queued(self, now: float) -> None:
        free = self.slots - sum(1 for j in self._jobs.values() if j.live)
        for job in sorted(self._pending(), key=lambda j: int(j.job_id)):
            if job.begin > now:
                job.reason = "BeginTime"
                continue
            while free > 0 and job.state == "PENDING":
                started = self._next_task(job)
                self._launch(started, now)
                free -= started.live
            if job.state == "PENDING":
                job.reason = "Resources"

    def _next_task(self, job: _Job) -> _Job:
        """The job itself, or for a job array with several tasks left its first task as a new job."""
        if not job.array_rest:
            return job
        task = job.array_rest.pop(0)
        if not job.array_rest:
            job.task = task
            job.stdout, job.stderr, job.stdin = self._paths(job)
            return job
        job_id = str(self._next_id)
        self._next_id += 1
        started = _Job(job_id=job_id, script=job.script, working_dir=job.working_dir, env=job.env, name=job.name,
                       stdout="", stderr="", stdin="", limit=job.limit, begin=job.begin, options=job.options,
                       array_id=job.array_id, task=task)
        started.stdout, started.stderr, started.stdin = self._paths(started)
        self._jobs[job_id] = started
        return started

    def _pending(self) -> list[_Job]:
        return [j for j in self._jobs.values() if j.state == "PENDING"]

    def _forgettable(self, job: _Job, now: float) -> bool:
        return job.end is not None and not job.live and now - job.end >= self.min_job_age

    # --- one job -----------------------------------------------------------------------------

    def _new_job(
        self,
        job_id: str,
        script: str,
        working_dir: str,
        env: Mapping[str, str],
        options: SbatchOptions,
        pending_delay: float,
    ) -> _Job:
        job = _Job(job_id=job_id, script=script, working_dir=working_dir, env=dict(env),
                   name=options.job_name or "sbatch", stdout="", stderr="", stdin="", limit=options.time_limit,
                   begin=time.time() + max(0.0, pending_delay), options=options,
                   array_id=job_id if options.array else None, array_rest=list(options.array or ()))
        job.stdout, job.stderr, job.stdin = self._paths(job)
        return job

    def _paths(self, job: _Job) -> tuple[str, str, str]:
        """stdout, stderr and stdin of the job, its file patterns expanded (for an array task, %A and %a)."""
        options = job.options or SbatchOptions()

        def path(pattern: str) -> str:
            expanded = expand_pattern(pattern, job.job_id, job.name, self._user, job.array_id, job.task)
            return expanded if os.path.isabs(expanded) else os.path.join(job.working_dir, expanded)

        stdout = path(options.output or "slurm-%j.out")
        return (stdout, path(options.error) if options.error else stdout,
                path(options.input) if options.input else "/dev/null")

    def _launch(self, job: _Job, now: float) -> None:
        """Start the batch script like slurmstepd: own session, Slurm variables, output files opened first."""
        job.state, job.reason, job.start, job.nodes = "RUNNING", "None", now, self._node
        job.exit_code, job.signal = 0, 0
        script_path = self._spool / f"job{int(job.job_id):05d}" / "slurm_script"
        (script_path.parent / "steps").mkdir(parents=True, exist_ok=True)
        script_path.write_text(job.script)
        script_path.chmod(0o700)
        cwd = job.working_dir if os.path.isdir(job.working_dir) else "/tmp"
        try:
            out = open(job.stdout, "wb")  # noqa: SIM115 - closed when the job is reaped
            job.files.append(out)
            err: IO[bytes] | int = subprocess.STDOUT
            if job.stderr != job.stdout:
                err = open(job.stderr, "wb")  # noqa: SIM115
                job.files.append(err)
            stdin = open(job.stdin, "rb")  # noqa: SIM115
            job.files.append(stdin)
            if cwd != job.working_dir:
                (err if err != subprocess.STDOUT else out).write(  # type: ignore[union-attr]
                    f"slurmstepd: error: couldn't chdir to `{job.working_dir}': No such file or directory: "
                    "going to /tmp instead\n".encode()
                )
                out.flush()
            job.proc = subprocess.Popen(
                [str(script_path)],
                cwd=cwd,
                env=self._job_env(job),
                stdin=stdin,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            _close_files(job)
            job.state, job.reason, job.exit_code, job.signal, job.end = "FAILED", "NonZeroExitCode", 1, 0, now
            job.nodes = self._node
            _write_quietly(job.stderr, f"slurmstepd: error: {exc}\n")

    def _job_env(self, job: _Job) -> dict[str, str]:
        """`--export=ALL,K=V,...`: the sandbox's environment, the given variables, and Slurm's own (those
        of a batch job on real Slurm 22.05), with the srun shim first on PATH."""
        options = job.options or SbatchOptions()
        cpus = str(options.cpus)
        env = dict(os.environ)
        env.update(job.env)
        env.update(
            {
                "SLURM_JOB_ID": job.job_id,
                "SLURM_JOBID": job.job_id,
                "SLURM_JOB_NAME": job.name,
                "SLURM_JOB_PARTITION": "debug",
                "SLURM_JOB_NUM_NODES": "1",
                "SLURM_JOB_NODELIST": self._node,
                "SLURM_NNODES": "1",
                "SLURM_NODELIST": self._node,
                "SLURMD_NODENAME": self._node,
                "SLURM_SUBMIT_DIR": job.working_dir,
                "SLURM_SUBMIT_HOST": self._node,
                "SLURM_CLUSTER_NAME": "local",
                "SLURM_JOB_USER": self._user,
                "SLURM_JOB_UID": str(os.getuid()),
                "SLURM_JOB_GID": str(os.getgid()),
                "SLURM_CPUS_ON_NODE": cpus,
                "SLURM_JOB_CPUS_PER_NODE": cpus,
                "SLURM_NODEID": "0",
                "SLURM_PROCID": "0",
                "SLURM_LOCALID": "0",
                "SLURM_GTIDS": "0",
                "PATH": os.pathsep.join([str(self._bin), env.get("PATH", os.defpath)]),
                "CI_RUNNER_SANDBOX_STEPS": str(self._spool / f"job{int(job.job_id):05d}" / "steps"),
                "CI_RUNNER_SANDBOX_TIME_SCALE": repr(self.time_scale),
                "CI_RUNNER_SANDBOX_KILL_WAIT": repr(self.kill_wait),
            }
        )
        if options.ntasks is not None:
            ntasks = str(options.ntasks)
            env.update({"SLURM_NTASKS": ntasks, "SLURM_NPROCS": ntasks, "SLURM_TASKS_PER_NODE": ntasks})
        if options.cpus_per_task is not None:
            env["SLURM_CPUS_PER_TASK"] = str(options.cpus_per_task)
        if job.array_id is not None and job.task is not None:
            env.update({"SLURM_ARRAY_JOB_ID": job.array_id, "SLURM_ARRAY_TASK_ID": str(job.task)})
        return env

    def _record(self, job: _Job, now: float) -> JobRecord:
        start, end = _times(job, now)
        elapsed = 0 if job.start is None or start is None else (int(now) if end is None else end) - start
        return JobRecord(
            job_id=job.job_id,
            name=job.name,
            state=job.state,
            reason=job.reason,
            exit_code=job.exit_code,
            signal=job.signal,
            working_directory=job.working_dir,
            user=self._user,
            group=self._group,
            elapsed=elapsed,
            start=start,
            end=end,
            suspended=0 if job.start is not None else None,
            limit=job.limit,
            nodes=job.nodes,
            priority=_MAX_PRIORITY - int(job.job_id),
        )


def _install_srun(directory: Path) -> Path:
    """Copy the srun shim (srun.py next to this module) to `directory`/srun, run by this interpreter;
    `directory`, to put first on a job's PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = (Path(__file__).with_name("srun.py")).read_text()
    if not any(char.isspace() for char in sys.executable):  # a shebang cannot hold spaces
        shim = f"#!{sys.executable}\n" + shim.split("\n", 1)[1]
    target = directory / "srun"
    target.write_text(shim)
    target.chmod(0o755)
    return directory


def _times(job: _Job, now: float) -> tuple[int | None, int | None]:
    """`time.start` and `time.end` (whole epoch seconds) as the real server shows them: the true start
    and end once the job ran; while it waits for its begin time, Slurm's estimate (the begin time, and
    begin + limit when it has a limit); while it waits for a slot, null."""
    if job.start is not None:
        return int(job.start), None if job.end is None else int(job.end)
    if job.reason == "BeginTime" and job.begin > now:
        begin = int(job.begin)
        return begin, None if job.limit is None else begin + job.limit
    return None, None


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send `sig` to the job's whole process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _close_files(job: _Job) -> None:
    for handle in job.files:
        handle.close()
    job.files.clear()


def _write_quietly(path: str, text: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError:
        pass


def _signame(sig: int) -> str:
    try:
        return signal.strsignal(sig) or str(sig)
    except ValueError:
        return str(sig)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _group_name() -> str:
    try:
        return grp.getgrgid(os.getgid()).gr_name
    except KeyError:
        return str(os.getgid())
