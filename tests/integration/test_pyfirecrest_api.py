"""The few private parts of pyfirecrest that ci_runner/cluster.py relies on keep their shape.

cluster.py sends every request itself through `AsyncFirecrest._get_request` / `_post_request` /
`_delete_request` (one HTTP request per call, which the request budget needs), and sets three
attributes of the client. pyfirecrest may change private code in any release; pyproject.toml pins the
minor versions this was tested with, and this test, against the sandbox's real HTTP server, fails
when one of those calls no longer takes the same arguments, no longer returns the raw
`httpx.Response`, or retries a 429 although `num_retries_rate_limit` is 0.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import firecrest
import httpx
from firecrest.v2 import AsyncFirecrest

from ci_runner.sandbox.faults import Faults
from ci_runner.sandbox.server import SandboxOptions, start_sandbox

# What cluster.py sets on the client (Cluster.__init__) and the auth object (_Auth._build).
CLIENT_ATTRIBUTES = ("timeout", "num_retries_rate_limit", "disable_client_logging")
AUTH_ATTRIBUTES = ("timeout", "disable_client_logging")


def test_private_request_calls_keep_their_shape(tmp_path: Path) -> None:
    faults = Faults(burst_every=4, burst_length=1, retry_after=1)  # the 5th request gets a 429
    with start_sandbox(SandboxOptions(root=tmp_path, backend="local", port=0, faults=faults)) as sandbox:
        auth = firecrest.ClientCredentialsAuth(sandbox.client_id, sandbox.client_secret, sandbox.token_url,
                                               min_token_validity=60)
        for name in AUTH_ATTRIBUTES:
            assert hasattr(auth, name), f"ClientCredentialsAuth.{name} is gone"
        auth.timeout = 30
        auth.disable_client_logging = True

        async def calls() -> list[httpx.Response]:
            client = AsyncFirecrest(sandbox.url, auth)
            for name in CLIENT_ATTRIBUTES:
                assert hasattr(client, name), f"AsyncFirecrest.{name} is gone"
            client.timeout = 30
            client.num_retries_rate_limit = 0
            client.disable_client_logging = True
            ops = f"/filesystem/{sandbox.system}/ops"
            try:
                return [
                    await client._get_request(endpoint="/status/systems", params=None),
                    await client._post_request(endpoint=f"{ops}/mkdir", params=None,
                                               json_data={"sourcePath": f"{tmp_path}/d", "parent": True}, files=None),
                    await client._post_request(endpoint=f"{ops}/upload", params={"path": f"{tmp_path}/d"},
                                               json_data=None, files={"file": ("f.txt", b"hello")}),
                    await client._delete_request(endpoint=f"{ops}/rm", params={"path": f"{tmp_path}/d/f.txt"}),
                    await client._get_request(endpoint="/status/systems", params=None),
                ]
            finally:
                await client.close_session()

        responses = asyncio.run(calls())
    assert all(isinstance(r, httpx.Response) for r in responses)
    assert [r.status_code for r in responses] == [200, 201, 204, 204, 429]  # the 429 comes back, not retried
    assert not (tmp_path / "d" / "f.txt").exists() and (tmp_path / "d").is_dir()
