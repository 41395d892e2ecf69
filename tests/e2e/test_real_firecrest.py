"""`ci-runner run` against the real, unmodified FirecREST v2 server on real Slurm (the fcv2-local
harness of our development setup; see real_firecrest.py). What works only against our sandbox is not
done: these tests catch what the real server does differently (a `tail` of a large backlog times out
instead of answering 413, a cancel of a finished job is a 500, sbatch's refusals are 500s, tokens
expire after 90 s here).

Every job is submitted as the harness's user into its home; every test cancels what it submitted.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
import uuid
from urllib.parse import quote
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.real_firecrest import TOKEN_TTL, RealFirecrest, find_real_firecrest, scancel, slurm_state
from helpers.run_process import ci_runner, git_repo, recorded_jobs, runner_env
from helpers.slurm_time_limit import time_out_at_next_check
from helpers.waiting import wait_until

from ci_runner.budget import RequestBudget
from ci_runner.cluster import Cluster
from ci_runner.credentials import Credentials
from ci_runner.job_spec import JOB_END_LINE

pytestmark = [pytest.mark.real_firecrest, pytest.mark.slurm]

MULTIBYTE = "é€𝄞 ✓"


@pytest.fixture(scope="module")
def server() -> RealFirecrest:
    return find_real_firecrest()


class Run:
    """One test's project: a git repo with `ci.yml`, a state file, a remote work dir of its own."""

    def __init__(self, server: RealFirecrest, tmp_path: Path, body: str, top: str, sbatch: str) -> None:
        self.server = server
        self.repo = git_repo(tmp_path / "repo")
        self.state_file = tmp_path / "state.json"
        self.workdir = f"{server.home}/ci-runner-tests/{uuid.uuid4().hex[:12]}"
        script = "".join(f"  {line}\n" for line in body.splitlines())
        options = "".join(f"  {line}\n" for line in sbatch.splitlines())
        (self.repo / "ci.yml").write_text(f"version: 1\nsystem: {server.system}\ncheckout: none\n{top}"
                                          f"sbatch:\n{options}script: |\n{script}")

    def args(self, *extra: str, requests_per_minute: int = 60) -> list[str]:
        return ["run", "--config", "ci.yml", "--state-file", str(self.state_file), "--workdir", self.workdir,
                "--requests-per-minute", str(requests_per_minute), *extra]

    def env(self) -> dict[str, str]:
        return runner_env(self.server)

    def printed_offset(self) -> int:
        entries = json.loads(self.state_file.read_text())["entries"] if self.state_file.exists() else {}
        return int(entries.get("default", {}).get("offset") or 0)

    def jobs(self) -> list[str]:
        return list(recorded_jobs(self.state_file).values())

    def output_lines(self, lines: list[str]) -> list[str]:
        return [line for line in lines if not line.startswith("ci-runner: ") and not line.startswith("entry ")
                and not re.match(r"default\s", line)]

    def server_log_since(self, start: int) -> list[str]:
        return self.server.server_log_lines()[start:]


Project = Callable[..., Run]


@pytest.fixture
def project(server: RealFirecrest, tmp_path: Path) -> Iterator[Project]:
    """`project(body, top="", sbatch="time: 5m")`: a Run whose jobs are cancelled after the test."""
    runs: list[Run] = []

    def make(body: str, top: str = "", sbatch: str = "time: 5m") -> Run:
        run = Run(server, tmp_path / f"p{len(runs)}", body, top, sbatch)
        runs.append(run)
        return run

    yield make
    for run in runs:
        scancel(run.jobs())


def finish(run: Run, *extra: str, timeout: float = 180.0, requests_per_minute: int = 60) -> tuple[int, list[str]]:
    with ci_runner(run.args(*extra, requests_per_minute=requests_per_minute), run.repo, run.env()) as process:
        code = process.finish(timeout=timeout)
        return code, process.lines()


# -- streaming ---------------------------------------------------------------------------------------

def test_output_streams_live_and_exactly_once_with_multibyte_text(project: Project) -> None:
    # 15 s of output: the first line must arrive while the job runs, with room for a loaded machine
    run = project(f'for i in $(seq 1 15); do echo "line $i {MULTIBYTE}"; sleep 1; done\n'
                  f"printf 'last line without newline {MULTIBYTE}'")
    with ci_runner(run.args(), run.repo, run.env()) as process:
        process.wait_for(r"^line 1 ", timeout=90)
        job_id = run.jobs()[0]
        assert slurm_state(job_id) == "RUNNING"  # the first line arrived while the job still ran: live
        code = process.finish(timeout=120)
        lines = process.lines()
    assert code == 0, lines[-20:]
    assert run.output_lines(lines)[:16] == [f"line {i} {MULTIBYTE}" for i in range(1, 16)] + [
        f"last line without newline {MULTIBYTE}{JOB_END_LINE}0"]  # the job script's last line follows
    assert sum(1 for line in lines if line.startswith("line ")) == 15


def test_a_20_mib_backlog_written_at_once_prints_exactly_without_server_timeouts(project: Project) -> None:
    """The real server's `tail` of a rest over its 5 MiB output cap times out (408 after 5 s) instead
    of answering 413; the reads must be sized from the known size and never run into that."""
    run = project("python3 -I -c 'import sys\n"
                  "for n in range(200000): sys.stdout.write(\"%06d \" % n + \"x\" * 97 + \"€\\n\")'\n"
                  "echo done")
    before = len(run.server.server_log_lines())
    code, lines = finish(run, timeout=240)
    assert code == 0, lines[-20:]
    numbered = [line for line in lines if re.fullmatch(r"\d{6} x{97}€", line)]
    assert len(numbered) == 200000 and numbered[0].startswith("000000") and numbered[-1].startswith("199999")
    assert [int(line[:6]) for line in numbered] == list(range(200000))
    reads = [line for line in run.server_log_since(before) if quote(run.workdir, safe="") in line and "/ops/" in line]
    assert reads and not [line for line in reads if '" 408' in line or '" 500' in line], reads[-5:]


# -- exit codes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [0, 1])
def test_the_exit_code_follows_the_job(project: Project, status: int) -> None:
    run = project(f"echo running\nexit {status}")
    code, lines = finish(run)
    assert code == status, lines[-10:]


@pytest.mark.slow
def test_time_limit_exits_4_and_tokens_are_renewed_on_a_long_run(project: Project) -> None:
    """The run passes its first token's renewal point (TTL 90 s here, renewed with < 60 s left) and
    keeps following the job with the new token until Slurm ends it at its time limit. Slurm's smallest
    limit is a minute, checked every 30 s (60-90 s); once the token was renewed the running job's limit
    is lowered to zero, and Slurm's own check ends it with TIMEOUT within 30 s."""
    run = project("echo started\nsleep 600", sbatch="time: 1m")
    assert run.server.token_lifetime() <= TOKEN_TTL, "start fcv2-local with FCV2_TOKEN_TTL=90"
    tokens_before = run.server.token_requests()
    with ci_runner(run.args(requests_per_minute=20), run.repo, run.env()) as process:
        process.wait_for(r"^started$", timeout=90)
        wait_until(lambda: run.server.token_requests() - tokens_before >= 2, 90, "the run to renew its token",
                   interval=0.5)
        job_id = run.jobs()[0]
        assert slurm_state(job_id) == "RUNNING"  # renewed while following the job, not after its end
        time_out_at_next_check(job_id)
        code = process.finish(timeout=120)
        lines = process.lines()
    assert code == 4, lines[-10:]
    assert any(re.match(r"default\s+TIMEOUT\s", line) for line in lines), lines[-10:]
    assert slurm_state(job_id) == "TIMEOUT"


# -- cancel, attach, queue ------------------------------------------------------------------------------

def test_sigterm_cancels_the_job_in_slurm_within_two_seconds(project: Project) -> None:
    run = project("echo started\nsleep 300")
    with ci_runner(run.args(), run.repo, run.env()) as process:
        process.wait_for(r"^started$", timeout=90)
        job_id = run.jobs()[0]
        process.send(signal.SIGTERM)
        wait_until(lambda: slurm_state(job_id).startswith("CANCELLED"), 2.0, "Slurm to show the job CANCELLED")
        code = process.finish(timeout=30)
    assert code == 130


def test_sigterm_cancels_every_task_of_a_job_array_running_or_pending(project: Project) -> None:
    """Three entries with the same options are one job array; two tasks run (2 CPUs), one waits. SIGTERM:
    within 2 s Slurm shows every task of the array CANCELLED, the pending one included."""
    run = project('echo "{{ n }} started"\nsleep 300', top="matrix:\n  n: [a, b, c]\n")
    with ci_runner(run.args(), run.repo, run.env()) as process:
        submitted = process.wait_for(r"submitted as Slurm job (\d+)_0 ", timeout=90)
        array_id = submitted.group(1)
        process.wait_for(r"^\[[abc]\] [abc] started$", timeout=90)
        process.send(signal.SIGTERM)

        def array_states() -> list[str]:
            shown = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=15)
            return [word.removeprefix("JobState=") for line in shown.stdout.splitlines()
                    if f"ArrayJobId={array_id} " in line for word in line.split() if word.startswith("JobState=")]

        try:
            wait_until(lambda: array_states() and all(s.startswith("CANCELLED") for s in array_states()), 2.0,
                       "Slurm to show every task of the array CANCELLED")
            code = process.finish(timeout=30)
        finally:
            scancel([array_id])
    assert code == 130


def test_attach_after_sigkill_loses_and_repeats_nothing(project: Project) -> None:
    run = project(f'for i in $(seq 1 30); do echo "line $i {MULTIBYTE}"; sleep 0.2; done')
    with ci_runner(run.args(), run.repo, run.env()) as first:
        first.wait_for(r"^line 5 ", timeout=90)
        shown = sum(len(line.encode()) + 1 for line in first.lines() if line.startswith("line "))
        wait_until(lambda: run.printed_offset() >= shown, 10, "the state file to record what was printed")
        first.kill()
        before = first.lines()
    with ci_runner(run.args("--attach"), run.repo, run.env()) as second:
        code = second.finish(timeout=120)
        after = second.lines()
    assert code == 0, after[-10:]
    printed = [line for line in before + after if line.startswith("line ")]
    assert printed == [f"line {i} {MULTIBYTE}" for i in range(1, 31)]


def test_queue_timeout_cancels_a_job_that_stays_pending(project: Project) -> None:
    run = project("echo never", top="queue_timeout: 8s\n", sbatch="time: 5m\nbegin: now+1hour")
    code, lines = finish(run, timeout=120)
    assert code == 3, lines[-10:]
    assert any("queue_timeout" in line for line in lines), lines[-10:]
    job_id = run.jobs()[0]
    assert slurm_state(job_id).startswith("CANCELLED") or slurm_state(job_id) == ""


def test_queue_time_is_slurms_not_when_the_runner_saw_the_job(project: Project) -> None:
    """The job is submitted held and released once the runner saw it waiting; it then runs 5 s while
    the runner is stopped (SIGSTOP: a runner starved of CPU or of its request budget looks late): the
    runner sees the end of the wait only after the job ended; the log line says Slurm's figure. (A
    release starts the job at once; a begin time waits for Slurm's next scheduling pass, up to 30 s.)"""
    run = project("echo ran\nsleep 5", sbatch="time: 5m\nhold: true")
    with ci_runner(run.args(), run.repo, run.env()) as process:
        process.wait_for(r"default: PENDING \(JobHeldUser\), waiting for", timeout=90)
        job_id = run.jobs()[0]
        process.send(signal.SIGSTOP)
        try:
            released = subprocess.run(["scontrol", "release", job_id], capture_output=True, text=True, timeout=30)
            assert released.returncode == 0, released.stderr
            wait_until(lambda: slurm_state(job_id) == "COMPLETED", 120, "the job to end while the runner is stopped",
                       interval=0.5)
        finally:
            process.send(signal.SIGCONT)
        code = process.finish(timeout=120)
        lines = process.lines()
    assert code == 0, lines[-10:]
    shown = subprocess.run(["scontrol", "show", "job", run.jobs()[0], "-o"], capture_output=True, text=True).stdout
    times = dict(word.split("=", 1) for word in shown.split() if "=" in word)
    waited = _epoch(times["StartTime"]) - _epoch(times["SubmitTime"])
    line = next(line for line in lines if "in the queue" in line)
    match = re.search(r"after (?:(\d+)m )?(\d+)s in the queue", line)
    assert match, line
    printed = int(match.group(1) or 0) * 60 + int(match.group(2))
    assert abs(printed - waited) <= 2, (line, waited)


def _epoch(slurm_time: str) -> float:
    return time.mktime(time.strptime(slurm_time, "%Y-%m-%dT%H:%M:%S"))


# -- what Slurm refuses -------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, says", [
    ("partition", "nosuch", "invalid partition specified: nosuch"),
    ("bogus-opt", "1", "unrecognized option '--bogus-opt=1'"),
])
def test_a_job_sbatch_rejects_is_a_config_error_at_once(project: Project, option: str, value: str,
                                                         says: str) -> None:
    run = project("echo never", sbatch=f"time: 5m\n{option}: {value}")
    before = len(run.server.server_log_lines())
    code, lines = finish(run, timeout=60)
    assert code == 2, lines[-10:]
    assert any(says in line and f"--{option}" in line for line in lines), lines[-10:]
    submits = [line for line in run.server_log_since(before) if "POST /compute/" in line]
    assert len(submits) == 1, submits  # no retry, no look-up


def test_cancel_of_a_finished_job_is_done_at_once(server: RealFirecrest) -> None:
    """The real server answers 500 "already completing or completed": nothing to cancel, no retries."""
    async def main() -> tuple[str, bool]:
        async with Cluster(Credentials.from_env(server.env()), budget=RequestBudget(600)) as cluster:
            job_id = await cluster.submit("#!/bin/bash\necho hi\n", server.home)
            try:
                for _ in range(120):
                    status = await cluster.job(job_id)
                    if status is not None and status.state.startswith("COMPLETED"):
                        break
                    await asyncio.sleep(0.5)
                return job_id, await cluster.cancel(job_id)
            finally:
                scancel([job_id])

    before = len(server.server_log_lines())
    job_id, cancelled = asyncio.run(main())
    assert cancelled is False
    deletes = [line for line in server.server_log_lines()[before:] if f"DELETE /compute/{server.system}/jobs/{job_id}" in line]
    assert len(deletes) == 1, deletes


@pytest.mark.parametrize("pack", [False, True])
def test_small_artifacts_come_back_in_one_download_of_the_job_s_tar(project: Project, pack: bool) -> None:
    """The job packs its small artifacts into one tar (packed: the packed job packs its entries'
    tars into one); the real server's `ops/download` returns it whole, and no listing of the checkout
    is needed."""
    run = project(f'mkdir -p results\necho "one {MULTIBYTE}" > results/a.txt\necho "<testsuites/>" > results/junit.xml',
                  top=("pack: true\n" if pack else "") + 'artifacts: ["results/*.txt"]\njunit: ["results/*.xml"]\n')
    before = len(run.server.server_log_lines())
    code, lines = finish(run, timeout=120)
    assert code == 0, lines[-10:]
    fetched = run.repo / "ci-runner-artifacts" / "default" / "results"
    assert (fetched / "a.txt").read_text() == f"one {MULTIBYTE}\n"
    assert (fetched / "junit.xml").read_text() == "<testsuites/>\n"
    ours = [line for line in run.server_log_since(before) if quote(run.workdir, safe="") in line]
    downloads = [line for line in ours if "/ops/download?" in line]
    assert len(downloads) == 1 and "artifacts.tar" in downloads[0] and '" 200' in downloads[0], downloads
    assert not [line for line in ours if "/ops/ls?" in line and quote("/default/src", safe="") in line]


def test_unreadable_output_of_a_finished_job_keeps_its_exit_code_and_says_what_is_missing(
    project: Project
) -> None:
    """The job's output cannot be read (403) after it ended: the exit code follows Slurm's COMPLETED,
    a warning names the missing bytes and the file, and the finished job is not cancelled."""
    run = project('echo first\nsleep 2\nfor i in $(seq 1 50); do echo "more $i"; done\n'
                  'chmod 000 "$CI_RUNNER_OUTPUT"')
    before = len(run.server.server_log_lines())
    code, lines = finish(run, timeout=120)
    assert code == 0, lines[-10:]
    warning = next((line for line in lines if "output is incomplete" in line), None)
    assert warning is not None and "not printed" in warning and f"default.{run.jobs()[0]}.out" in warning, lines[-10:]
    assert not [line for line in run.server_log_since(before) if "DELETE /compute/" in line]


def test_a_matrix_is_followed_with_the_run_s_job_list_and_output_listing(project: Project) -> None:
    """Every entry's state comes from one job list (the run's job name) and every size from one listing
    of the run's output directory, as the real server answers them: no per-job state or stat request.
    The four entries have the same options: one submit, a job array whose tasks Slurm runs two at a
    time (2 CPUs), each task's lines on its own entry."""
    run = project(f'for i in 1 2 3; do echo "{{{{ n }}}}: line $i {MULTIBYTE}"; sleep 2; done',
                  top="matrix:\n  n: [a, b, c, d]\n")
    before = len(run.server.server_log_lines())
    code, lines = finish(run, timeout=240)
    assert code == 0, lines[-20:]
    for entry in "abcd":
        assert [line for line in lines if line.startswith(f"[{entry}] {entry}: line")] == [
            f"[{entry}] {entry}: line {i} {MULTIBYTE}" for i in (1, 2, 3)]
    log = run.server_log_since(before)
    system = run.server.system
    assert [line for line in log if f"GET /compute/{system}/jobs?name=" in line]
    assert not [line for line in log if re.search(rf"GET /compute/{system}/jobs/\d+ ", line)]
    assert not [line for line in log if "/ops/stat" in line]
    assert [line for line in log if "/ops/ls?" in line]
    submitted = [line for line in lines if "submitted as Slurm job" in line]
    array_ids = {line.rsplit("Slurm job ", 1)[1].split("_")[0].split()[0] for line in submitted}
    assert len(submitted) == 4 and len(array_ids) == 1, submitted
    # In Slurm: four jobs of the run's name, all tasks of that one array (the server log is shared
    # with other clients, Slurm's records tell which jobs are this run's).
    shown = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30).stdout
    ours = [line for line in shown.splitlines() if f"ArrayJobId={next(iter(array_ids))} " in line]
    assert len(ours) == 4, ours
