"""pyfirecrest's own v2 clients pointed at a sandbox, with every JSON response checked against the
FirecREST v2 OpenAPI description (tests/data/firecrest-v2-openapi.json), plus small polling helpers.

Not a test module: the sandbox tests import it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import firecrest as fc
import httpx
import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from helpers.waiting import wait_until

from ci_runner.sandbox.backends import Backend, BackendError
from ci_runner.sandbox.server import Sandbox, SandboxOptions, start_sandbox

DATA = Path(__file__).resolve().parent.parent / "data"
SPEC = json.loads((DATA / "firecrest-v2-openapi.json").read_text(encoding="utf-8"))
EXAMPLES = json.loads((DATA / "firecrest-v2-examples.json").read_text(encoding="utf-8"))
TERMINAL = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED")
QUEUE_SLACK = 180.0  # a Slurm job may wait behind other developers' jobs on this small machine


@dataclass
class OpenApiChecker:
    """Validates responses against the spec's response schema for (method, path template, status)."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        registry = Registry().with_resource("urn:firecrest", Resource.from_contents(
            SPEC, default_specification=DRAFT202012))
        self._registry = registry
        self._operations = [
            (re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", path) + "$"), method.upper(), operation)
            for path, item in SPEC["paths"].items() for method, operation in item.items()
        ]

    def schema_for(self, method: str, path: str, status: int) -> dict[str, Any] | None | str:
        """The JSON schema of that response, None for "no body", "unknown" when the spec lacks the path."""
        for pattern, op_method, operation in self._operations:
            if op_method == method and pattern.match(path):
                responses = operation["responses"]
                response = responses.get(str(status)) or responses.get(f"{status // 100}XX")
                if response is None:
                    return "unknown"
                content = response.get("content", {}).get("application/json")
                return None if content is None else content.get("schema", {})
        return "unknown"

    def check(self, method: str, path: str, status: int, body: bytes, content_type: str) -> None:
        """Raise AssertionError if the body does not match the documented schema."""
        schema = self.schema_for(method, path, status)
        if schema == "unknown":
            if not path.startswith(("/auth/", "/_sandbox/")):
                raise AssertionError(f"{method} {path} answered {status}, which the OpenAPI spec does not document")
            return
        self.checked += 1
        if schema is None:
            assert body == b"", f"{method} {path} {status}: expected no body, got {body[:200]!r}"
            return
        if not schema:  # e.g. download: any content
            return
        assert content_type.startswith("application/json"), f"{method} {path} {status}: {content_type}"
        validator = jsonschema.Draft202012Validator({"$ref": "urn:firecrest" + schema["$ref"]}, registry=self._registry)
        errors = sorted(validator.iter_errors(json.loads(body)), key=str)
        if errors:
            raise AssertionError(f"{method} {path} {status} does not match {schema['$ref']}: {errors[0].message}")

    def sync_hook(self, response: httpx.Response) -> None:
        response.read()
        self.check(response.request.method, response.request.url.path, response.status_code, response.content,
                   response.headers.get("content-type", ""))

    async def async_hook(self, response: httpx.Response) -> None:
        await response.aread()
        self.check(response.request.method, response.request.url.path, response.status_code, response.content,
                   response.headers.get("content-type", ""))


CHECKER = OpenApiChecker()


def auth_for(sb: Sandbox, **kwargs: Any) -> fc.ClientCredentialsAuth:
    kwargs.setdefault("min_token_validity", 60)
    return fc.ClientCredentialsAuth(sb.client_id, sb.client_secret, sb.token_url, **kwargs)


def sync_client(sb: Sandbox, authorization: Any = None) -> fc.v2.Firecrest:
    """The sync v2 client; every response is validated against the spec."""
    client = fc.v2.Firecrest(sb.url, authorization or auth_for(sb))
    client.timeout = 30
    client._session.event_hooks["response"].append(CHECKER.sync_hook)
    return client


def async_client(sb: Sandbox, authorization: Any = None) -> fc.v2.AsyncFirecrest:
    """The async v2 client; every response is validated against the spec."""
    client = fc.v2.AsyncFirecrest(sb.url, authorization or auth_for(sb))
    client.timeout = 30
    client._session.event_hooks["response"].append(CHECKER.async_hook)
    return client


def raw_client(sb: Sandbox) -> httpx.Client:
    """Plain httpx (for requests pyfirecrest cannot make), also validated."""
    return httpx.Client(base_url=sb.url, timeout=30, event_hooks={"response": [CHECKER.sync_hook]})


def bearer(sb: Sandbox, ttl_override: float | None = None) -> dict[str, str]:
    data = {"grant_type": "client_credentials", "client_id": sb.client_id, "client_secret": sb.client_secret}
    token = httpx.post(sb.token_url, data=data, timeout=30).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class StaticToken:
    """A fixed bearer token (pyfirecrest's `get_access_token` contract)."""

    token: str

    def get_access_token(self) -> str:
        return self.token


def running_sandbox(tmp_path: Path, backend: str, **options: Any) -> Iterator[Sandbox]:
    """Start a sandbox over `tmp_path/cluster`; on exit cancel every job of this test still active, then
    stop it."""
    root = tmp_path / "cluster"
    root.mkdir(parents=True, exist_ok=True)
    options.setdefault("local_time_scale", 0.05)  # local backend: --time=1 (minute) ends after 3 s
    sb = start_sandbox(SandboxOptions(root=root, backend=backend, port=0, **options))
    try:
        yield sb
    finally:
        try:
            cancel_active(sb.backend, tmp_path)
        finally:
            sb.stop()


def cancel_active(backend: Backend, under: Path) -> None:
    """Cancel every job of `backend` still queued or running whose working directory is under `under`
    (one that ends meanwhile is left alone). The slurm backend lists every job of the user, so without
    `under` a test would cancel the jobs of another test session sharing this Slurm."""
    for job in backend.jobs():
        if not Path(job["workingDirectory"] or "/").is_relative_to(under):
            continue
        if not job["status"]["state"].startswith(TERMINAL):
            try:
                backend.cancel(job["jobId"], os.getuid())
            except BackendError:
                pass  # it finished between the listing and the cancel


def cancel_refused(job_id: str, reason: str) -> str:
    """The real server's 500 message when `scancel --verbose <job_id>` reports `reason` for a numeric id."""
    return ("Unexpected Slurm command response. exit_status:0 std_err:scancel: Terminating job "
            f"{job_id}\nscancel: error: Kill job error on job id {job_id}: {reason}\n")



def wait_terminal(client: fc.v2.Firecrest, system: str, job_id: str, timeout: float = QUEUE_SLACK) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = client.job_info(system, job_id)[0]
        return job if job["status"]["state"].startswith(TERMINAL) else None

    return wait_until(done, timeout, f"job {job_id} to end", 0.2)


def script(*lines: str) -> str:
    return "\n".join(["#!/bin/bash", *lines]) + "\n"
