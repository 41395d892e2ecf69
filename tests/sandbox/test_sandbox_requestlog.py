"""The request log: counts per endpoint, bytes returned, statuses; in-process and over HTTP; reset."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import firecrest as fc
import httpx
import pytest
from helpers.firecrest_clients import running_sandbox, sync_client

from ci_runner.sandbox.faults import Faults
from ci_runner.sandbox.requestlog import RequestLog, RequestRecord
from ci_runner.sandbox.server import Sandbox

TAIL = "/filesystem/{system_name}/ops/tail"


@pytest.fixture
def sb(tmp_path: Path) -> Iterator[Sandbox]:
    yield from running_sandbox(tmp_path, "local")


def test_counts_bytes_and_statuses_per_endpoint(sb: Sandbox) -> None:
    (sb.root / "out.txt").write_text("hello\n")
    client = sync_client(sb)
    sizes = []
    client._session.event_hooks["response"].append(lambda r: sizes.append((r.request.url.path, len(r.read()))))
    for _ in range(3):
        client.tail(sb.system, f"{sb.root}/out.txt", num_bytes=1, exclude_beginning=True)
    with pytest.raises(fc.UnexpectedStatusException):
        client.tail(sb.system, f"{sb.root}/missing.txt", num_bytes=1, exclude_beginning=True)

    log = sb.request_log
    endpoint = f"GET {TAIL}"
    assert log.counts[endpoint] == 4
    assert log.statuses[endpoint] == {200: 3, 404: 1}
    assert log.bytes[endpoint] == sum(size for path, size in sizes if path.endswith("/ops/tail"))
    assert log.counts["POST /auth/token"] == 1
    assert log.total_requests == 5 and log.total_bytes == sum(log.bytes.values())
    assert {r.client for r in log.records} == {"127.0.0.1", sb.client_id}  # token request: no token yet


def test_http_view_and_reset(sb: Sandbox) -> None:
    sync_client(sb).systems()
    with httpx.Client(base_url=sb.url) as raw:
        snapshot = raw.get("/_sandbox/requests").json()
        assert snapshot["counts"] == {"POST /auth/token": 1, "GET /status/systems": 1}
        assert snapshot["statuses"]["GET /status/systems"] == {"200": 1}
        assert snapshot["records"][1]["route"] == "/status/systems"
        assert snapshot == sb.request_log.snapshot()  # reading the log is not logged
        assert raw.delete("/_sandbox/requests").status_code == 204
        assert raw.get("/_sandbox/requests").json()["total_requests"] == 0
    assert sb.request_log.records == []


@pytest.mark.slow  # waits on a 4 s answer
def test_a_request_is_logged_at_its_arrival_before_its_answer(tmp_path: Path) -> None:
    """A site's quota counts arrivals, so the log does too; and whoever has the answer finds the request
    in the log (it is recorded before the last byte is sent)."""
    gen = running_sandbox(tmp_path, "local", faults=Faults(latency=0.3))
    sb = next(gen)
    try:
        client = sync_client(sb)
        client.systems()  # the token
        for n in range(2, 12):
            sent = time.time()
            client.systems()
            answered = time.time()
            records = [r for r in sb.request_log.records if r.route == "/status/systems"]
            assert len(records) == n
            assert sent <= records[-1].time <= answered - 0.3
    finally:
        gen.close()


def test_log_is_thread_safe() -> None:
    log = RequestLog()

    def writer() -> None:
        for i in range(500):
            log.record(RequestRecord(float(i), "c", "GET", "/r", 200, 2))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert log.count("GET", "/r", 200) == 2000 and log.total_bytes == 4000
