"""Cluster over real HTTP against the in-process sandbox (local backend): auth, retries, 429, budget, files, jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from ci_runner.budget import RequestBudget
from ci_runner.api import SERVER_OUTPUT_CAP, ApiError, OutputTooLarge, RemoteFileMissing, SystemInfo
from ci_runner.cluster import Cluster, RetryPolicy, script_job_name
from ci_runner.credentials import Credentials
from ci_runner.errors import UsageError
from ci_runner.sandbox.faults import Faults
from ci_runner.sandbox.server import Sandbox, SandboxOptions, start_sandbox
from ci_runner.stream import OutputReader

T = TypeVar("T")
FAST = RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=12, request_timeout=10)


async def drained(reader: OutputReader) -> str:
    """Everything `drain_chunks` yields, joined (the runner prints it chunk by chunk)."""
    return "".join([text async for text in reader.drain_chunks()])


def start(tmp_path: Path, **options: object) -> Sandbox:
    root = tmp_path / "cluster"
    root.mkdir(exist_ok=True)
    return start_sandbox(SandboxOptions(root=root, backend="local", **options))  # type: ignore[arg-type]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = start(tmp_path)
    try:
        yield sb
    finally:
        sb.stop()


def run(sb: Sandbox, body: Callable[[Cluster], Awaitable[T]], *, retry: RetryPolicy = FAST,
        budget: RequestBudget | None = None) -> T:
    async def main() -> T:
        async with Cluster(Credentials.from_env(sb.env()), budget=budget or RequestBudget(10_000),
                           retry=retry, seed=1) as cluster:
            return await body(cluster)

    return asyncio.run(main())


# -- credentials -----------------------------------------------------------------------------------

def test_credentials_name_missing_variables_never_values() -> None:
    with pytest.raises(UsageError) as err:
        Credentials.from_env({"FIRECREST_URL": "http://x", "FIRECREST_CLIENT_SECRET": "s3cret"})
    assert "AUTH_TOKEN_URL" in str(err.value) and "FIRECREST_CLIENT_ID" in str(err.value)
    assert "FIRECREST_CLIENT_SECRET," not in str(err.value) and "s3cret" not in str(err.value)
    with pytest.raises(UsageError, match="FIRECREST_URL"):
        Credentials.from_env({"FIRECREST_API_KEY": "k"})
    key = Credentials.from_env({"FIRECREST_URL": "http://x", "FIRECREST_API_KEY": "k",
                                "FIRECREST_API_KEY_HEADER": "X-Key", "FIRECREST_SYSTEM": "daint"})
    assert (key.api_key, key.api_key_header, key.system) == ("k", "X-Key", "daint")
    assert "k'" not in repr(key)


def test_script_job_name() -> None:
    assert script_job_name("#!/bin/bash\n#SBATCH --job-name=ci-1-gcc\n") == "ci-1-gcc"
    assert script_job_name("#SBATCH -J other\n") == "other"
    assert script_job_name("echo --job-name=x\n") is None


def test_wrong_client_secret_is_a_usage_error(sandbox: Sandbox) -> None:
    env = dict(sandbox.env(), FIRECREST_CLIENT_SECRET="wrong")

    async def main() -> None:
        async with Cluster(Credentials.from_env(env), budget=RequestBudget(100), retry=FAST) as cluster:
            await cluster.systems()

    with pytest.raises(UsageError, match="token request") as err:
        asyncio.run(main())
    assert "wrong" not in str(err.value)


# -- files and jobs ------------------------------------------------------------------------------

def test_system_info_gives_the_sites_output_cap(tmp_path: Path) -> None:
    sb = start(tmp_path, max_ops_size=123_456)
    try:
        info = run(sb, lambda c: c.system_info())
        assert (info.name, info.default_workdir, info.output_cap) == (sb.system, str(sb.root), 123_456)
    finally:
        sb.stop()
    # a server that does not say: the documented default
    bare = SystemInfo.from_api({"name": "x", "fileSystems": [], "dataOperation": {"max_ops_file_size": True}})
    assert (bare.default_workdir, bare.output_cap) == (None, SERVER_OUTPUT_CAP)


def test_files_round_trip(sandbox: Sandbox) -> None:
    work = str(sandbox.root / "run" / "entry")

    async def body(c: Cluster) -> None:
        assert (await c.system_info()).default_workdir == str(sandbox.root)
        await c.mkdir(work)
        await c.mkdir(work)  # exists: fine
        await c.upload("a\nb é\n".encode(), work, "f.out")
        assert await c.download(work + "/f.out") == "a\nb é\n".encode()
        assert await c.stat_size(work + "/f.out") == 7
        assert await c.stat_size(work + "/nope") is None
        assert await c.tail_from(work + "/f.out", 0) == "a\nb é\n"
        assert await c.tail_from(work + "/f.out", 2) == "b é\n"
        assert await c.tail_from(work + "/f.out", 7) == ""
        assert await c.view(work + "/f.out", 2, 4) == "b é\n"  # characters, as the real server
        with pytest.raises(RemoteFileMissing):
            await c.tail_from(work + "/nope", 0)
        await c.rm(work)
        await c.rm(work)
        assert await c.stat_size(work + "/f.out") is None

    run(sandbox, body)
    assert "GET /filesystem/{system_name}/ops/tail" in sandbox.request_log.counts


def test_list_files_recursive_with_hidden_files_and_links(sandbox: Sandbox) -> None:
    work = sandbox.root / "run" / "entry"
    (work / "results" / "deep").mkdir(parents=True)
    (work / "results" / "deep" / "a.xml").write_text("<a/>")
    (work / ".hidden").write_text("h")
    (work / "escape").symlink_to("/etc/passwd")

    async def body(c: Cluster) -> list[dict[str, object]]:
        return await c.list_files(str(work), recursive=True)

    listing = {str(item["name"]): item for item in run(sandbox, body)}
    assert {"results", "results/deep", "results/deep/a.xml", ".hidden", "escape"} <= set(listing)
    assert listing["results/deep/a.xml"]["type"] == "-" and listing["results"]["type"] == "d"
    assert listing["escape"]["type"] == "l" and listing["escape"]["linkTarget"] == "/etc/passwd"

@pytest.mark.slow  # streams past a server's cap (2-4 s)
def test_output_cap_gives_413_and_the_reader_streams_past_it(tmp_path: Path) -> None:
    sb = start(tmp_path, max_ops_size=64 * 1024)
    try:
        data = ("".join(f"line {i} ✓ é\n" for i in range(12000))).encode()
        (sb.root / "big.out").write_bytes(data)
        path = str(sb.root / "big.out")

        async def body(c: Cluster) -> tuple[str, OutputReader]:
            with pytest.raises(OutputTooLarge):
                await c.tail_from(path, 0)
            reader = OutputReader(c, path, block_size=16 * 1024, output_cap=64 * 1024)
            parts = [await reader.poll() for _ in range(40)]
            return "".join(parts) + await drained(reader), reader

        text, reader = run(sb, body)
        assert text == data.decode()
        assert reader.offset == len(data)
        assert "GET /filesystem/{system_name}/ops/view" in sb.request_log.counts
    finally:
        sb.stop()


def test_job_lifecycle_and_unknown_job(sandbox: Sandbox) -> None:
    work = str(sandbox.root / "w")
    script = f"#!/bin/bash\n#SBATCH --job-name=ci-test-1\n#SBATCH --output={work}/o.out\necho hi\nexit 3\n"

    async def body(c: Cluster) -> tuple[str, object]:
        await c.mkdir(work)
        job_id = await c.submit(script, work)
        status = None
        for _ in range(200):
            status = await c.job(job_id)
            if status is not None and status.state == "FAILED":
                break
            await asyncio.sleep(0.05)
        assert await c.job("999999") is None
        await c.cancel("999999")  # unknown: nothing to cancel
        return job_id, status

    job_id, status = run(sandbox, body)
    assert status is not None
    assert (status.job_id, status.state, status.exit_code, status.name) == (job_id, "FAILED", 3, "ci-test-1")


def test_job_not_found_window_returns_none(tmp_path: Path) -> None:
    sb = start(tmp_path, faults=Faults(not_found_window=30))
    try:
        async def body(c: Cluster) -> object:
            job_id = await c.submit("#!/bin/bash\n#SBATCH --job-name=ci-nf\ntrue\n", str(sb.root))
            return await c.job(job_id)

        assert run(sb, body) is None
    finally:
        sb.stop()


def test_cancel_running_job(sandbox: Sandbox) -> None:
    async def body(c: Cluster) -> str:
        job_id = await c.submit("#!/bin/bash\nsleep 60\n", str(sandbox.root))
        try:
            await c.cancel(job_id)
        finally:
            await c.cancel(job_id)
        state = ""
        for _ in range(200):
            status = await c.job(job_id)
            state = status.state if status else ""
            if state.startswith("CANCELLED"):
                break
            await asyncio.sleep(0.05)
        return state

    assert run(sandbox, body).startswith("CANCELLED")


# -- faults ----------------------------------------------------------------------------------------

@pytest.mark.slow  # waits out the retries' back-off (2-4 s)
def test_5xx_and_dropped_connections_are_retried(tmp_path: Path) -> None:
    sb = start(tmp_path, faults=Faults(error_rate=0.3, drop_rate=0.1, seed=5))
    try:
        (sb.root / "f.out").write_text("x" * 100)

        async def body(c: Cluster) -> list[int | None]:
            return [await c.stat_size(str(sb.root / "f.out")) for _ in range(20)]

        assert run(sb, body) == [100] * 20
        statuses = sb.request_log.statuses["GET /filesystem/{system_name}/ops/stat"]
        assert statuses[200] == 20 and sum(n for s, n in statuses.items() if s >= 500) > 0
    finally:
        sb.stop()


def test_retries_are_bounded(tmp_path: Path) -> None:
    sb = start(tmp_path, faults=Faults(error_rate=1.0, seed=1))
    try:
        with pytest.raises(ApiError, match=r"listing FirecREST systems: HTTP 50\d.*gave up after 3 attempts"):
            run(sb, lambda c: c.systems(), retry=RetryPolicy(base_delay=0.01, max_delay=0.02, max_attempts=3))
        assert sb.request_log.counts["GET /status/systems"] == 3
    finally:
        sb.stop()


def test_429s_do_not_use_up_the_attempts(tmp_path: Path) -> None:
    """A quota's 429s are pacing: more of them in a row than `max_attempts` still ends in the answer."""
    sb = start(tmp_path, faults=Faults(burst_every=1, burst_length=4, retry_after=0))
    try:
        policy = RetryPolicy(base_delay=0.01, max_delay=0.02, max_attempts=2)

        async def body(c: Cluster) -> None:
            await c.systems()  # answered: the next 4 requests get 429
            await c.systems()

        run(sb, body, retry=policy)
        assert sb.request_log.statuses["GET /status/systems"] == {200: 2, 429: 4}
    finally:
        sb.stop()


def test_submit_is_not_resubmitted_blindly(tmp_path: Path) -> None:
    """Every request fails with 5xx: a submit is followed by a look-up, never by a blind resubmit."""
    sb = start(tmp_path, faults=Faults(error_rate=1.0, error_statuses=(503,), seed=1))
    try:
        policy = RetryPolicy(base_delay=0.01, max_delay=0.02, max_attempts=2)
        with pytest.raises(ApiError):
            run(sb, lambda c: c.submit("#!/bin/bash\n#SBATCH --job-name=ci-dup\ntrue\n", str(sb.root)), retry=policy)
        counts = sb.request_log.counts
        assert counts["POST /compute/{system_name}/jobs"] <= counts.get("GET /compute/{system_name}/jobs", 0) + 1
        with pytest.raises(ApiError, match="no job name"):
            run(sb, lambda c: c.submit("#!/bin/bash\ntrue\n", str(sb.root)), retry=policy)
    finally:
        sb.stop()


def test_429_retry_after_pauses_the_budget(tmp_path: Path) -> None:
    sb = start(tmp_path, faults=Faults(burst_every=3, burst_length=1, retry_after=1))
    try:
        budget = RequestBudget(10_000)
        results = run(sb, lambda c: asyncio.gather(*(c.systems() for _ in range(5))), budget=budget)
        assert len(results) == 5
        statuses = sb.request_log.statuses["GET /status/systems"]
        assert statuses.get(429, 0) >= 1 and statuses[200] == 5
        sent = budget.sent
        # every 429 made the whole budget wait at least Retry-After before the next request
        gaps = [b - a for a, b in zip(sent, sent[1:])]
        assert sum(1 for g in gaps if g >= 0.99) >= statuses[429]
    finally:
        sb.stop()


def test_short_lived_tokens_are_renewed(tmp_path: Path) -> None:
    """Tokens live 31 s and the server rejects those with < 30 s left: with no client-side margin
    the 401 path must fetch a new token; with the default margin every request gets a fresh one."""
    sb = start(tmp_path, token_ttl=31, min_token_ttl=30)
    try:
        lenient = RetryPolicy(base_delay=0.01, max_delay=0.05, min_token_validity=0)

        async def body(c: Cluster) -> int:
            deadline = time.monotonic() + 10
            calls = 0
            while time.monotonic() < deadline:
                await c.systems()
                calls += 1
                if sb.request_log.statuses["GET /status/systems"].get(401, 0) >= 1 and calls >= 3:
                    break
                await asyncio.sleep(0.1)
            return calls

        run(sb, body, retry=lenient)
        statuses = sb.request_log.statuses["GET /status/systems"]
        assert statuses.get(401, 0) >= 1
        assert sb.request_log.counts["POST /auth/token"] >= 2
        sb.request_log.reset()
        run(sb, lambda c: asyncio.gather(*(c.systems() for _ in range(4))))
        assert sb.request_log.statuses["GET /status/systems"] == {200: 4}
    finally:
        sb.stop()


def test_budget_is_never_exceeded_on_the_server(tmp_path: Path) -> None:
    """The server enforces the same quota (429 beyond it): our budget keeps every request under it."""
    sb = start(tmp_path, faults=Faults(quota_per_minute=12))
    try:
        budget = RequestBudget(12)
        (sb.root / "f.out").write_text("y")

        async def body(c: Cluster) -> None:
            await asyncio.gather(*(c.stat_size(str(sb.root / "f.out")) for _ in range(12)))
            assert budget.available() == 0
            with pytest.raises(asyncio.TimeoutError):  # the 13th request has to wait for the window
                await asyncio.wait_for(c.systems(), timeout=0.5)

        run(sb, body, budget=budget)
        assert budget.max_in_any_window() == 12
        assert 429 not in sb.request_log.statuses["GET /filesystem/{system_name}/ops/stat"]
        assert sb.request_log.total_requests - sb.request_log.counts.get("POST /auth/token", 0) == 12
    finally:
        sb.stop()
