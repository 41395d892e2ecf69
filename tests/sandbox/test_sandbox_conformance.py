"""Conformance: the recorded real-server exchanges (tests/data/firecrest-v2-examples.json) replayed
against the sandbox, and the OpenAPI response check that every sandbox test runs on each response."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.firecrest_clients import (
    CHECKER, EXAMPLES, QUEUE_SLACK, OpenApiChecker, bearer, raw_client, running_sandbox,
)
from helpers.waiting import wait_until

from ci_runner.sandbox.server import Sandbox

REAL_SYSTEM, REAL_HOME, REAL_USER = "cluster-slurm-ssh", "/home/fireuser", "fireuser"
# Bodies compared exactly (after substituting system, paths and user): file contents and error texts.
EXACT = {"tail bytes=+1 (whole file from byte 1)", "tail bytes=+3 (skip 2 bytes)", "tail bytes=+100 (past EOF)",
         "tail bytes=0 (ignored -> last 10 lines)", "head bytes=3", "view offset/size", "tail missing file",
         "tail path outside file systems", "tail relative path", "view size too large", "job_info unknown job",
         "unknown system", "no token", "bad token", "tail whole 6 MB file (output cap)"}
# Job states that must match exactly once the job got there (job id → expected status).
FINAL_STATUS = {
    "job_info completed": {"state": "COMPLETED", "stateReason": "None", "exitCode": 0, "interruptSignal": 0},
    "job_info failed": {"state": "FAILED", "stateReason": "NonZeroExitCode", "exitCode": 3, "interruptSignal": 0},
}


def same_shape(real: Any, ours: Any, where: str = "") -> None:
    if real is None or ours is None:
        return
    if isinstance(real, dict):
        assert isinstance(ours, dict) and set(real) == set(ours), f"{where}: keys {sorted(real)} != {sorted(ours)}"
        for key in real:
            same_shape(real[key], ours[key], f"{where}.{key}")
    elif isinstance(real, list):
        assert isinstance(ours, list), where
        if real and ours:
            same_shape(real[0], ours[0], f"{where}[0]")
    else:
        assert type(real) is type(ours), f"{where}: {type(real).__name__} != {type(ours).__name__}"


class Replay:
    """Translates the recorded requests to this sandbox (system, paths, job ids) and its answers back."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.home = str(sb.root / "fireuser")
        self.jobs: dict[str, str] = {}
        self.user = pwd.getpwuid(os.getuid()).pw_name

    def to_ours(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(REAL_HOME, self.home).replace(REAL_SYSTEM, self.sb.system)
        if isinstance(value, dict):
            return {k: self.to_ours(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.to_ours(v) for v in value]
        return value

    def path(self, path: str) -> str:
        parts = self.to_ours(path).split("/")
        return "/".join(self.jobs.get(part, part) if i >= 4 else part for i, part in enumerate(parts))

    def expected(self, body: Any) -> Any:
        body = self.to_ours(body)
        if isinstance(body, dict) and body.get("user") == REAL_USER:
            body = {**body, "user": self.user}
        return body


@pytest.fixture
def sb(backend_name: str, tmp_path: Path) -> Iterator[Sandbox]:
    yield from running_sandbox(tmp_path, backend_name)


@pytest.mark.slow  # replays jobs that run for seconds (2-4 s)
def test_replay_recorded_real_server_exchanges(sb: Sandbox) -> None:
    replay = Replay(sb)
    auth = bearer(sb)
    with raw_client(sb) as raw:
        def job(real_id: str) -> dict[str, Any]:
            return raw.get(f"/compute/{sb.system}/jobs/{replay.jobs[real_id]}", headers=auth).json()["jobs"][0]

        def wait_state(real_id: str, prefix: str) -> None:
            wait_until(lambda: job(real_id)["status"]["state"].startswith(prefix), QUEUE_SLACK, f"{real_id} {prefix}", 0.2)

        def wait_file(name: str, size: int) -> None:
            path = Path(replay.home) / "examples" / name
            wait_until(lambda: path.exists() and path.stat().st_size == size, QUEUE_SLACK, f"{name} of {size} bytes", 0.2)

        before = {  # what must have happened on the cluster before the recorded request was made
            "tail bytes=+1 (whole file from byte 1)": lambda: wait_file("ok.out", 7),
            "job_info completed": lambda: wait_state("12", "COMPLETED"),
            "job_info cancelled": lambda: wait_state("15", "CANCELLED"),
            "job_info failed": lambda: wait_state("13", "FAILED"),
            "tail whole 6 MB file (output cap)": lambda: wait_file("big.out", 6_000_000),
        }
        for example in EXAMPLES["examples"]:
            name, request = example["name"], example["request"]
            if name in before:
                before[name]()
            headers = {} if name == "no token" else {"Authorization": "Bearer abc.def.ghi"} if name == "bad token" else auth
            answer = raw.request(request["method"], replay.path(request["path"]), headers=headers,
                                 params=replay.to_ours(request.get("params")), json=replay.to_ours(request.get("json")))
            assert answer.status_code == example["status"], (name, answer.text[:300])
            if example["status"] == 204:
                assert answer.content == b""
                continue
            body = answer.json()
            if name.startswith("submit"):
                replay.jobs[example["body"]["jobId"]] = body["jobId"]
            expected = replay.expected(example["body"])
            if name in EXACT:
                assert body == expected, name
            elif name == "tail last 1 MB of 6 MB file":
                assert len(body["output"]["content"]) == 1_000_000 and body["output"]["startPosition"] == 5_000_001
            else:
                same_shape(expected, body, name)
            if name in FINAL_STATUS:
                assert body["jobs"][0]["status"] == FINAL_STATUS[name], name
            if name == "job_info cancelled":
                assert body["jobs"][0]["status"]["state"] == f"CANCELLED by {os.getuid()}"
            if name == "job metadata":
                assert body == expected | {"jobs": [expected["jobs"][0] | {"jobId": replay.jobs["12"]}]}
            if name == "mkdir":
                assert body["output"]["name"] == f"{replay.home}/examples"


def test_openapi_checker_catches_a_wrong_body() -> None:
    checker = OpenApiChecker()
    good = b'{"jobs": [{"jobId": "1", "script": null}]}'
    checker.check("GET", "/compute/local/jobs/1/metadata", 200, good, "application/json")
    with pytest.raises(AssertionError, match="does not match"):
        checker.check("GET", "/compute/local/jobs/1/metadata", 200, b'{"jobs": [{"jobId": 1}]}', "application/json")
    with pytest.raises(AssertionError, match="expected no body"):
        checker.check("DELETE", "/compute/local/jobs/1", 204, b"{}", "application/json")
    with pytest.raises(AssertionError, match="does not document"):
        checker.check("GET", "/compute/local/nodes", 200, b"{}", "application/json")


def test_every_served_endpoint_answers_per_the_spec(sb: Sandbox) -> None:
    """One request to each served path (also through the check hook); the hook counted them."""
    before = CHECKER.checked
    auth = bearer(sb)
    root = str(sb.root)
    (sb.root / "f.txt").write_text("x\n")
    with raw_client(sb) as raw:
        calls = [
            ("GET", "/status/liveness/", {}, None), ("GET", "/status/systems", {}, None),
            ("GET", f"/status/{sb.system}/userinfo", {}, None), ("GET", f"/compute/{sb.system}/jobs", {}, None),
            ("GET", f"/filesystem/{sb.system}/ops/ls", {"path": root}, None),
            ("GET", f"/filesystem/{sb.system}/ops/stat", {"path": root + "/f.txt"}, None),
            ("GET", f"/filesystem/{sb.system}/ops/checksum", {"path": root + "/f.txt"}, None),
            ("GET", f"/filesystem/{sb.system}/ops/head", {"path": root + "/f.txt"}, None),
            ("GET", f"/filesystem/{sb.system}/ops/tail", {"path": root + "/f.txt"}, None),
            ("GET", f"/filesystem/{sb.system}/ops/view", {"path": root + "/f.txt"}, None),
            ("GET", f"/filesystem/{sb.system}/ops/download", {"path": root + "/f.txt"}, None),
            ("POST", f"/filesystem/{sb.system}/ops/mkdir", {}, {"sourcePath": root + "/d", "parent": False}),
            ("DELETE", f"/filesystem/{sb.system}/ops/rm", {"path": root + "/d"}, None),
        ]
        for method, path, params, body in calls:
            answer = raw.request(method, path, params=params, json=body, headers=auth)
            assert answer.status_code < 300, (path, answer.text)
            assert answer.headers["f7t-appversion"]
        upload = raw.post(f"/filesystem/{sb.system}/ops/upload", params={"path": root},
                          files={"file": ("u.txt", b"up")}, headers=auth)
        assert upload.status_code == 204
    assert CHECKER.checked - before == len(calls) + 1


def test_unknown_paths_and_methods(sb: Sandbox) -> None:
    with httpx.Client(base_url=sb.url) as raw:
        missing = raw.get("/nothing/here", headers=bearer(sb))
        assert missing.status_code == 404 and missing.json()["message"] == "Not Found"
        wrong = raw.put(f"/compute/{sb.system}/jobs", headers=bearer(sb))
        assert wrong.status_code == 405
