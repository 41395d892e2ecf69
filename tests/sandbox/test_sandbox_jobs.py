"""Job lifecycle through the sandbox with pyfirecrest's own v2 clients (sync and async), on both backends."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import firecrest as fc
import pytest
from helpers.firecrest_clients import (
    QUEUE_SLACK, async_client, bearer, cancel_refused, raw_client, running_sandbox, script, sync_client, wait_terminal,
)
from helpers.slurm_time_limit import time_out_at_next_check
from helpers.waiting import wait_until

from ci_runner.sandbox.server import Sandbox


@pytest.fixture
def sb(backend_name: str, tmp_path: Path) -> Iterator[Sandbox]:
    yield from running_sandbox(tmp_path, backend_name)


@pytest.mark.slow  # a job that writes for seconds (2-4 s)
def test_follow_output_while_running_then_completed(sb: Sandbox) -> None:
    client = sync_client(sb)
    out = f"{sb.root}/follow.out"
    body = script(f"#SBATCH --output={out}", "for i in $(seq 1 15); do echo \"line $i é\"; sleep 0.2; done")
    job_id = client.submit(sb.system, str(sb.root), script_str=body)["jobId"]

    offset, text, seen_running = 0, "", False

    def read_chunk() -> str:
        try:
            return client.tail(sb.system, out, num_bytes=offset + 1, exclude_beginning=True)["content"]
        except fc.UnexpectedStatusException as error:
            assert error.responses[-1].status_code == 404  # not created yet: normal while pending
            assert "No such file or directory" in error.responses[-1].json()["message"]
            return ""

    def finished() -> dict | None:
        nonlocal offset, text, seen_running
        job = client.job_info(sb.system, job_id)[0]
        chunk = read_chunk()
        if chunk and job["status"]["state"] == "RUNNING":
            seen_running = True
            assert client.head(sb.system, out, num_bytes=5)["content"] == "line "
            assert client._get_request(f"/filesystem/{sb.system}/ops/view",
                                       params={"path": out, "offset": 0, "size": 4}).json()["output"] == "line"
        text += chunk
        offset += len(chunk.encode())
        return job if job["status"]["state"].startswith(("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")) else None

    job = wait_until(finished, QUEUE_SLACK, "the job to complete", 0.1)
    text += read_chunk()  # drain after the terminal state

    assert seen_running, "never read output while the job was RUNNING"
    assert text == "".join(f"line {i} é\n" for i in range(1, 16))
    assert job["status"] == {"state": "COMPLETED", "stateReason": "None", "exitCode": 0, "interruptSignal": 0}
    metadata = client.job_metadata(sb.system, job_id)[0]
    assert (metadata["jobId"], metadata["standardOutput"], metadata["script"]) == (job_id, out, body)


def test_failed_job_reports_exit_code_3(sb: Sandbox) -> None:
    client = sync_client(sb)
    job_id = client.submit(sb.system, str(sb.root), script_str=script("#SBATCH -o fail.out", "exit 3"))["jobId"]
    job = wait_terminal(client, sb.system, job_id)
    assert job["status"] == {"state": "FAILED", "stateReason": "NonZeroExitCode", "exitCode": 3, "interruptSignal": 0}


def test_env_vars_reach_the_job(sb: Sandbox) -> None:
    client = sync_client(sb)
    body = script("#SBATCH -o env.out", 'echo "$CI_RUNNER_VALUE"')
    job_id = client.submit(sb.system, str(sb.root), script_str=body, env_vars={"CI_RUNNER_VALUE": "x y"})["jobId"]
    assert wait_terminal(client, sb.system, job_id)["status"]["state"] == "COMPLETED"
    assert client.view(sb.system, f"{sb.root}/env.out") == "x y\n"


def test_cancel_running_job(sb: Sandbox) -> None:
    client = sync_client(sb)
    job_id = client.submit(sb.system, str(sb.root), script_str=script("#SBATCH -o can.out", "echo up", "sleep 300"))["jobId"]
    wait_until(lambda: client.job_info(sb.system, job_id)[0]["status"]["state"] == "RUNNING", QUEUE_SLACK, "RUNNING", 0.2)

    assert client.cancel_job(sb.system, job_id) == {}

    job = wait_terminal(client, sb.system, job_id, timeout=60)
    assert job["status"]["state"] == f"CANCELLED by {os.getuid()}"
    assert job["status"]["exitCode"] == 0  # the signal reads 0 or 15 depending on when Slurm is asked


def test_unknown_bad_and_foreign_ids(sb: Sandbox) -> None:
    client = sync_client(sb)
    with pytest.raises(fc.UnexpectedStatusException) as unknown:
        client.job_info(sb.system, "999999")
    assert (unknown.value.responses[-1].status_code, unknown.value.responses[-1].json()["message"]) == (404, "Job not found.")
    with pytest.raises(fc.UnexpectedStatusException) as meta:
        client.job_metadata(sb.system, "999999")
    assert meta.value.responses[-1].status_code == 404
    with pytest.raises(fc.UnexpectedStatusException) as bad:
        client.job_info(sb.system, "12_3")
    body = bad.value.responses[-1].json()
    assert bad.value.responses[-1].status_code == 400 and body["errorType"] == "validation"
    assert body["data"] == {"fields": [{"location": "path", "name": "job_id",
                                        "message": "String should match pattern '^[a-zA-Z0-9]+$'"}]}
    with pytest.raises(fc.UnexpectedStatusException) as system:
        client.job_info("nosuch", "1")
    assert (system.value.responses[-1].status_code, system.value.responses[-1].json()["message"]) == (404, "System not found")
    with pytest.raises(fc.UnexpectedStatusException) as cancel:  # measured: scancel's error, not 404
        client.cancel_job(sb.system, "999999")
    assert cancel.value.responses[-1].status_code == 500
    assert cancel.value.responses[-1].json()["message"] == cancel_refused("999999", "Invalid job id specified")


def test_submit_outside_root_is_refused(sb: Sandbox) -> None:
    client = sync_client(sb)
    before = {job["jobId"] for job in sb.backend.jobs()}  # the user's jobs Slurm knows (other tests' too)
    with pytest.raises(fc.UnexpectedStatusException) as refused:
        client.submit(sb.system, "/etc", script_str=script("true"))
    response = refused.value.responses[-1]
    assert response.status_code == 400
    assert "does not match any of the defined filesystem paths" in response.json()["message"]
    assert {job["jobId"] for job in sb.backend.jobs()} == before


def test_job_list_contains_submitted_jobs(sb: Sandbox) -> None:
    client = sync_client(sb)
    job_id = client.submit(sb.system, str(sb.root), script_str=script("#SBATCH -o l.out", "true"))["jobId"]
    assert job_id in [job["jobId"] for job in client.job_info(sb.system)]
    with raw_client(sb) as raw:
        answer = raw.get(f"/compute/{sb.system}/jobs", params={"time_window": "2h"}, headers=bearer(sb))
    assert answer.status_code == 400 and answer.json()["errorType"] == "validation"


def test_async_client_lifecycle(sb: Sandbox) -> None:
    async def scenario() -> tuple[dict, dict, list]:
        client = async_client(sb)
        try:
            ok = await client.submit(sb.system, str(sb.root), script_str=script("#SBATCH -o a.out", "echo async"))
            bad = await client.submit(sb.system, str(sb.root), script_str=script("#SBATCH -o b.out", "exit 3"))

            async def state(job_id: str) -> dict:
                for _ in range(int(QUEUE_SLACK * 5)):
                    job = (await client.job_info(sb.system, job_id))[0]
                    if job["status"]["state"] not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
                        return job
                    await asyncio.sleep(0.2)
                raise AssertionError(f"job {job_id} did not finish")

            done_ok, done_bad = await asyncio.gather(state(ok["jobId"]), state(bad["jobId"]))
            listing = await client.list_files(sb.system, str(sb.root))
            return done_ok, done_bad, listing
        finally:
            await client.close_session()

    done_ok, done_bad, listing = asyncio.run(scenario())
    assert (done_ok["status"]["state"], done_ok["status"]["exitCode"]) == ("COMPLETED", 0)
    assert (done_bad["status"]["state"], done_bad["status"]["exitCode"]) == ("FAILED", 3)
    assert {"a.out", "b.out"} <= {entry["name"] for entry in listing}


@pytest.mark.slow  # waits out a time limit (2-4 s)
def test_time_limit_gives_timeout(sb: Sandbox, backend_name: str) -> None:
    """A job over its `--time` ends TIMEOUT. The local backend scales `--time` so one minute ends after
    3 s; on Slurm (smallest limit one minute, checked every 30 s: 60-90 s) the running job's limit is
    lowered to zero, so Slurm's own time-limit check ends it within 30 s."""
    client = sync_client(sb)
    job_id = client.submit(sb.system, str(sb.root), script_str=script("#SBATCH --time=1", "#SBATCH -o to.out",
                                                                      "sleep 300"))["jobId"]
    if backend_name == "slurm":
        wait_until(lambda: client.job_info(sb.system, job_id)[0]["status"]["state"] == "RUNNING", QUEUE_SLACK,
                   "the job to run", 0.2)
        time_out_at_next_check(job_id)
    job = wait_terminal(client, sb.system, job_id, timeout=QUEUE_SLACK + 120)
    assert job["status"] == {"state": "TIMEOUT", "stateReason": "TimeLimit", "exitCode": 0, "interruptSignal": 15}
