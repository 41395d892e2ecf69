"""Answers the sandbox gives the way the real, unmodified FirecREST v2 server gives them, as measured on
it (fcv2-local harness, Slurm 22.05, 5 MiB output limit, 5 s command timeout):

- ops output beyond the limit: 413 only while the SSH channel still takes the rest (about 2 MiB more),
  then 500 "('Channel not open for sending',)" (user null) and beyond about 3.2 MiB more 408
  "Command execution timeout limit exceeded.", both once the command timeout expired;
- DELETE of a finished, unknown or malformed job id: 500 with scancel's stderr;
- sbatch refusals: 500 with sbatch's stderr and exit status, 403 for a QOS limit;
- job times: start/end are Slurm's estimates while a job waits for its begin time, then the true ones.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.firecrest_clients import QUEUE_SLACK, bearer, cancel_refused, raw_client, running_sandbox, script
from helpers.waiting import wait_until

from ci_runner.sandbox.files import CHANNEL_SLACK, CLOSED_SLACK
from ci_runner.sandbox.server import Sandbox

LIMIT = 4096
TIMEOUT = 0.3
USER = pwd.getpwuid(os.getuid()).pw_name


def error(message: str, user: str | None = USER) -> dict[str, Any]:
    return {"errorType": "error", "message": message, "causedBy": None, "data": None, "user": user}


TIMED_OUT = error("Command execution timeout limit exceeded.")
TOO_LARGE = error("Command output exceeded buffer limit.")
CHANNEL_CLOSED = error("('Channel not open for sending',)", user=None)


def sbatch_refused(exit_status: int, stderr: str) -> str:
    return f"Unexpected Slurm command response. exit_status:{exit_status} std_err:{stderr}"


# -- 1. large ops reads -------------------------------------------------------------------------

@pytest.fixture
def files_sb(tmp_path: Path) -> Iterator[Sandbox]:
    yield from running_sandbox(tmp_path, "local", max_ops_size=LIMIT, command_timeout=TIMEOUT)


def timed_get(sb: Sandbox, op: str, **params: object) -> tuple[int, Any, float]:
    with raw_client(sb) as raw:
        began = time.monotonic()
        answer = raw.get(f"/filesystem/{sb.system}/ops/{op}", params=params, headers=bearer(sb))
        return answer.status_code, answer.json(), time.monotonic() - began


@pytest.mark.parametrize(("beyond", "status", "body"), [
    (-1, 200, None),
    (0, 413, TOO_LARGE),
    (CHANNEL_SLACK, 413, TOO_LARGE),
    (CHANNEL_SLACK + 4096, 500, CHANNEL_CLOSED),
    (CLOSED_SLACK + 4096, 408, TIMED_OUT),
    (4 * CLOSED_SLACK, 408, TIMED_OUT),
], ids=["below", "at-limit", "channel-full", "channel-closed", "stalled", "far-beyond"])
def test_tail_of_a_large_file_answers_like_the_real_server(files_sb: Sandbox, beyond: int, status: int,
                                                         body: dict[str, Any] | None) -> None:
    path = files_sb.root / "big.out"
    path.write_bytes(b"a" * (LIMIT + beyond))
    code, answer, took = timed_get(files_sb, "tail", path=str(path), bytes=1, skipHeading=True)
    assert code == status
    if body is not None:
        assert answer == body
    assert (took >= TIMEOUT) == (status in (408, 500)), took  # the real server answers those when its timeout expires


@pytest.mark.slow  # many requests (2-4 s)
def test_view_head_and_download_share_the_output_rules(files_sb: Sandbox) -> None:
    path = files_sb.root / "big.out"
    path.write_bytes(b"a" * (LIMIT + CLOSED_SLACK + 4096))
    p = str(path)
    half = LIMIT // 2
    assert timed_get(files_sb, "view", path=p, size=half - 1)[:2] == (200, {"output": "a" * (half - 1)})
    assert timed_get(files_sb, "view", path=p, size=half)[:2] == (413, TOO_LARGE)  # 2 blocks read
    # The default size is the limit, so 2 blocks: 5 MiB beyond the limit on the real server (408), but
    # only LIMIT here, which the channel still takes (the slack is the SSH window, it does not scale).
    assert timed_get(files_sb, "view", path=p)[:2] == (413, TOO_LARGE)
    assert timed_get(files_sb, "view", path=p, offset=CLOSED_SLACK, size=LIMIT // 4)[0] == 200
    assert timed_get(files_sb, "head", path=p, bytes=LIMIT)[:2] == (413, TOO_LARGE)
    assert timed_get(files_sb, "head", path=p)[:2] == (408, TIMED_OUT)  # no newline: "10 lines" is everything
    assert timed_get(files_sb, "download", path=p)[:2] == (408, TIMED_OUT)
    assert timed_get(files_sb, "checksum", path=p)[0] == 200


def test_a_command_that_hangs_times_out_with_the_servers_message(files_sb: Sandbox) -> None:
    fifo = files_sb.root / "never-written"
    os.mkfifo(fifo)
    code, answer, took = timed_get(files_sb, "tail", path=str(fifo), bytes=1, skipHeading=True)
    assert (code, answer) == (408, TIMED_OUT)
    assert TIMEOUT <= took < TIMEOUT + 5


def test_systems_reports_the_command_timeout_in_whole_seconds(files_sb: Sandbox) -> None:
    with raw_client(files_sb) as raw:
        system = raw.get("/status/systems", headers=bearer(files_sb)).json()["systems"][0]
    assert system["ssh"]["timeout"]["commandExecution"] == 1


# -- 2. cancel ------------------------------------------------------------------------------------

@pytest.fixture
def sb(backend_name: str, tmp_path: Path) -> Iterator[Sandbox]:
    yield from running_sandbox(tmp_path, backend_name)


def submit(raw: httpx.Client, sb: Sandbox, text: str) -> httpx.Response:
    return raw.post(f"/compute/{sb.system}/jobs", headers=bearer(sb),
                    json={"job": {"working_directory": str(sb.root), "script": text}})


def job_of(raw: httpx.Client, sb: Sandbox, job_id: str) -> dict[str, Any]:
    return raw.get(f"/compute/{sb.system}/jobs/{job_id}", headers=bearer(sb)).json()["jobs"][0]


def test_cancel_of_a_finished_unknown_or_malformed_job_is_scancels_500(sb: Sandbox) -> None:
    with raw_client(sb) as raw:
        job_id = submit(raw, sb, script("#SBATCH -o done.out", "true")).json()["jobId"]
        wait_until(lambda: job_of(raw, sb, job_id)["status"]["state"] == "COMPLETED", QUEUE_SLACK, "COMPLETED", 0.2)

        def cancel(target: str) -> tuple[int, Any]:
            answer = raw.delete(f"/compute/{sb.system}/jobs/{target}", headers=bearer(sb))
            return answer.status_code, answer.json()

        assert cancel(job_id) == (500, error(cancel_refused(job_id, "Job/step already completing or completed")))
        assert job_of(raw, sb, job_id)["status"]["state"] == "COMPLETED"
        assert cancel("999999") == (500, error(cancel_refused("999999", "Invalid job id specified")))
        assert cancel("abc") == (500, error(sbatch_refused(1, "scancel: error: Invalid job id abc\n")))


# -- 3. sbatch refusals ---------------------------------------------------------------------------

TRY_HELP = 'Try "sbatch --help" for more information\n'
REFUSALS = {
    "--partition=nosuch": sbatch_refused(1, "sbatch: error: invalid partition specified: nosuch\n"
                                            "sbatch: error: Batch job submission failed: Invalid partition name "
                                            "specified\n"),
    "-p nosuch": sbatch_refused(1, "sbatch: error: invalid partition specified: nosuch\n"
                                   "sbatch: error: Batch job submission failed: Invalid partition name specified\n"),
    "--bogus-opt=1": sbatch_refused(255, f"sbatch: unrecognized option '--bogus-opt=1'\n{TRY_HELP}"),
    "-y": sbatch_refused(255, f"sbatch: invalid option -- 'y'\n{TRY_HELP}"),
    "--hold=3": sbatch_refused(255, f"sbatch: option '--hold' doesn't allow an argument\n{TRY_HELP}"),
    "--nod=1": sbatch_refused(255, "sbatch: option '--nod=1' is ambiguous; possibilities: '--nodefile' "
                                   f"'--nodelist' '--nodes'\n{TRY_HELP}"),
    "--time=abc": sbatch_refused(255, "sbatch: error: Invalid --time specification\n"),
    '--job-name="abc': sbatch_refused(1, 'sbatch: fatal: stdin: line 2: Unmatched `"` in [--job-name="abc]\n'),
}


def test_sbatch_refusals_carry_sbatchs_stderr(sb: Sandbox) -> None:
    with raw_client(sb) as raw:
        for directive, message in REFUSALS.items():
            answer = submit(raw, sb, script(f"#SBATCH {directive}", "#SBATCH -o /dev/null", "true"))
            assert (answer.status_code, answer.json()) == (500, error(message)), directive
        missing = submit(raw, sb, script("#SBATCH --output"))
        assert missing.json()["message"] == sbatch_refused(
            255, f"sbatch: option '--output' requires an argument\n{TRY_HELP}")
        accepted = submit(raw, sb, script("#SBATCH --part=debug --account=nosuch -Qv", "#SBATCH -o ok.out", "true"))
        assert accepted.status_code == 201, accepted.text  # prefixes, combined flags; no accounting: any account


def test_a_rejected_qos_is_403_with_slurms_reason(tmp_path: Path) -> None:
    from ci_runner.sandbox.faults import Faults

    for sb in running_sandbox(tmp_path, "local", faults=Faults(reject_qos=("normal",))):
        with raw_client(sb) as raw:
            answer = submit(raw, sb, script("#SBATCH -o q.out", "true"))
            assert (answer.status_code, answer.json()) == (403, error(
                "Job submission rejected: accounting/QOS policy limit exceeded. "
                "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: "
                "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)"))
            assert submit(raw, sb, script("#SBATCH --qos=debug", "#SBATCH -o q.out", "true")).status_code == 201


def test_reject_qos_needs_the_local_backend(tmp_path: Path) -> None:
    from ci_runner.sandbox.faults import Faults
    from ci_runner.sandbox.server import SandboxOptions, start_sandbox

    with pytest.raises(ValueError, match="local backend"):
        start_sandbox(SandboxOptions(root=tmp_path, backend="slurm", faults=Faults(reject_qos=("normal",))))


# -- 4. times -------------------------------------------------------------------------------------

@pytest.fixture
def delayed_sb(backend_name: str, tmp_path: Path) -> Iterator[Sandbox]:
    from ci_runner.sandbox.faults import Faults

    yield from running_sandbox(tmp_path, backend_name, faults=Faults(pending_delay=2))


@pytest.mark.slow  # waits out a pending delay (2-4 s)
def test_job_times_show_the_true_start_after_a_pending_delay(delayed_sb: Sandbox) -> None:
    sb = delayed_sb
    with raw_client(sb) as raw:
        submitted = int(time.time())
        job_id = submit(raw, sb, script("#SBATCH --time=2", "#SBATCH -o t.out", "sleep 1")).json()["jobId"]
        pending = job_of(raw, sb, job_id)
        assert pending["status"]["state"] == "PENDING"
        estimate = pending["time"]
        assert submitted + 1 <= estimate["start"] <= int(time.time()) + 3  # the begin time, Slurm's estimate
        assert (estimate["end"], estimate["elapsed"], estimate["limit"]) == (estimate["start"] + 120, 0, 120)
        running = wait_until(lambda: (job := job_of(raw, sb, job_id))["status"]["state"] != "PENDING" and job,
                             QUEUE_SLACK, "start", 0.1)
        done = wait_until(lambda: (job := job_of(raw, sb, job_id))["status"]["state"] == "COMPLETED" and job,
                          QUEUE_SLACK, "end", 0.2)
    if running["status"]["state"] == "RUNNING":
        assert running["time"]["end"] is None and running["time"]["suspended"] == 0
    times = done["time"]
    assert times["start"] >= estimate["start"] >= submitted + 1  # queue time = start - submit covers the delay
    assert times["end"] - times["start"] == times["elapsed"] >= 1
    assert (times["limit"], times["suspended"]) == (120, 0)
