"""Every injected fault is observable from pyfirecrest (and the request log records it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import firecrest as fc
import httpx
import pytest
import requests
from helpers.firecrest_clients import QUEUE_SLACK, auth_for, running_sandbox, script, sync_client, wait_terminal
from helpers.waiting import wait_until

from ci_runner.sandbox.faults import FaultInjector, Faults, corrupted
from ci_runner.sandbox.server import Sandbox

SYSTEMS = "/status/systems"


def start(tmp_path: Path, faults: Faults, backend: str = "local", **options: object) -> Iterator[Sandbox]:
    yield from running_sandbox(tmp_path, backend, faults=faults, **options)


def status_of(call: object, *args: object) -> int:
    with pytest.raises(fc.UnexpectedStatusException) as error:
        call(*args)  # type: ignore[operator]
    return error.value.responses[-1].status_code


@pytest.mark.slow  # waits out the latency (2-4 s)
def test_latency_makes_a_short_client_timeout_expire(tmp_path: Path) -> None:
    for sb in start(tmp_path, Faults(latency=2.0)):
        client = sync_client(sb)
        client.timeout = 0.3
        with pytest.raises(httpx.ReadTimeout):
            client.systems()
        client.timeout = 30
        assert client.systems()[0]["name"] == sb.system


@pytest.mark.slow  # many requests for a rate (2-4 s)
def test_server_errors_at_the_configured_rate(tmp_path: Path) -> None:
    for sb in start(tmp_path, Faults(error_rate=1.0, error_statuses=(502,))):
        assert status_of(sync_client(sb).systems) == 502
    seen = []
    for run in range(2):
        for sb in start(tmp_path / str(run), Faults(error_rate=0.5, seed=7)):
            client = sync_client(sb)
            statuses = []
            for _ in range(20):
                try:
                    client.systems()
                    statuses.append(200)
                except fc.UnexpectedStatusException as error:
                    statuses.append(error.responses[-1].status_code)
            seen.append(statuses)
    assert seen[0] == seen[1], "the same seed must give the same faults"
    assert {200} < set(seen[0]) <= {200, 500, 502, 503}


def test_429_bursts_with_retry_after(tmp_path: Path) -> None:
    for sb in start(tmp_path, Faults(burst_every=2, burst_length=2, retry_after=0)):
        client = sync_client(sb)
        for _ in range(4):
            assert client.systems()[0]["name"] == sb.system  # pyfirecrest retries 429 after Retry-After
        assert sb.request_log.count("GET", SYSTEMS, 429) == 2
        assert sb.request_log.count("GET", SYSTEMS, 200) == 4
        client.num_retries_rate_limit = 0
        with pytest.raises(fc.UnexpectedStatusException) as error:
            client.systems()
        assert error.value.responses[-1].status_code == 429
        assert error.value.responses[-1].headers["retry-after"] == "0"


def test_token_ttl_override(tmp_path: Path) -> None:
    for sb in start(tmp_path, Faults(token_ttl=45)):
        answer = httpx.post(sb.token_url, data={"grant_type": "client_credentials", "client_id": sb.client_id,
                                                "client_secret": sb.client_secret})
        assert answer.json()["expires_in"] == 45


def test_dropped_connections_are_transport_errors(tmp_path: Path) -> None:
    for sb in start(tmp_path, Faults(drop_rate=1.0)):
        with pytest.raises(httpx.RemoteProtocolError):
            sync_client(sb).systems()  # the token endpoint is spared: the drop hits the API call
        assert sb.request_log.count("POST", "/auth/token", 200) == 1
        assert sb.request_log.count("GET", SYSTEMS) == 1 and sb.request_log.records[-1].status == 0


def test_faults_reach_the_token_endpoint_only_when_asked(tmp_path: Path) -> None:
    for sb in start(tmp_path, Faults(drop_rate=1.0, apply_to_token=True)):
        with pytest.raises(requests.ConnectionError):
            auth_for(sb).get_access_token()


@pytest.mark.slow  # waits out the job-not-found window (2-4 s)
def test_job_not_found_window_after_submit(tmp_path: Path) -> None:
    for sb in start(tmp_path, Faults(not_found_window=3.0)):
        client = sync_client(sb)
        job_id = client.submit(sb.system, str(sb.root), script_str=script("#SBATCH -o w.out", "true"))["jobId"]
        with pytest.raises(fc.UnexpectedStatusException) as error:
            client.job_info(sb.system, job_id)
        assert (error.value.responses[-1].status_code, error.value.responses[-1].json()["message"]) == (
            404, "Job not found.")
        assert status_of(client.job_metadata, sb.system, job_id) == 404
        assert job_id not in [job["jobId"] for job in client.job_info(sb.system)]

        def visible() -> bool:
            try:
                return client.job_info(sb.system, job_id)[0]["jobId"] == job_id
            except fc.UnexpectedStatusException:
                return False

        wait_until(visible, 10, "the job to become visible", 0.2)


def test_quota_per_minute_per_client(tmp_path: Path) -> None:
    for sb in start(tmp_path, Faults(quota_per_minute=3), api_key="other"):
        client = sync_client(sb)
        client.num_retries_rate_limit = 0
        for _ in range(3):
            client.systems()
        with pytest.raises(fc.UnexpectedStatusException) as error:
            client.systems()
        response = error.value.responses[-1]
        assert response.status_code == 429 and 1 <= int(response.headers["retry-after"]) <= 60
        assert sync_client(sb, fc.ApiKeyAuth("other")).systems()  # another client has its own quota


@pytest.fixture
def backend(backend_name: str) -> str:
    return backend_name


@pytest.mark.slow  # waits out a 4 s pending delay
def test_pending_delay_holds_jobs_pending(tmp_path: Path, backend: str) -> None:
    for sb in start(tmp_path, Faults(pending_delay=4.0), backend=backend):
        client = sync_client(sb)
        job_id = client.submit(sb.system, str(sb.root), script_str=script("#SBATCH -o p.out", "true"))["jobId"]
        assert client.job_info(sb.system, job_id)[0]["status"]["state"] == "PENDING"
        assert wait_terminal(client, sb.system, job_id, QUEUE_SLACK)["status"]["state"] == "COMPLETED"


def test_injector_decisions_are_pure_functions_of_time_and_seed() -> None:
    quota = FaultInjector(Faults(quota_per_minute=2))
    assert [quota.decide("a", t).action for t in (0, 1, 2)] == ["pass", "pass", "throttle"]
    assert quota.decide("a", 2).retry_after == 58
    assert quota.decide("b", 2).action == "pass"
    assert quota.decide("a", 60.5).action == "pass"  # the first request left the window
    burst = FaultInjector(Faults(burst_every=3, burst_length=2, retry_after=5))
    assert [burst.decide("a", 0).status for _ in range(8)] == [200, 200, 200, 429, 429, 200, 200, 200]
    with pytest.raises(ValueError):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError):
        Faults(error_statuses=(404,))


def test_corrupt_uploads_flip_the_first_byte_of_the_named_files_only() -> None:
    faults = Faults(corrupt_uploads=("*.part003",))
    assert corrupted(faults, "source.tar.gz.part003", b"\x00abc") == b"\xffabc"
    assert corrupted(faults, "source.tar.gz.part004", b"\x00abc") == b"\x00abc"
    assert corrupted(faults, "source.tar.gz.part003", b"") == b""
    assert corrupted(Faults(), "source.tar.gz.part003", b"\x00abc") == b"\x00abc"
