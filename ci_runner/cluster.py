"""Async facade over FirecREST v2 (pyfirecrest's `AsyncFirecrest`): the only module that talks HTTP.

Every HTTP request to FirecREST goes through one shared `RequestBudget` (one place in it per attempt,
held until the answer; retries and 401 re-tries included). Token requests go to the identity
provider, a different server with its own limits, and are not counted.

Requests are sent with the client's own `_get_request`/`_post_request`/`_delete_request` (auth
headers, tracing ids, API-version detection) and we check the status ourselves. That gives exactly
one HTTP request per call, which the budget needs: pyfirecrest's `download` stats first, `rm` may
start a transfer job, async `upload` only takes local paths, and `view` sends no offset/size.

Retries: reads, cancel, mkdir, upload and rm are retried on 408/424/500/502/503/504 and transport
errors/timeouts with jittered exponential backoff (bounded failed attempts and total time), except
where the answer is a verdict that a repeat would only get again: a Slurm command's own refusal
(500 "Unexpected Slurm command response", see scheduler_messages.py), and a timeout (408, or the
500 it sometimes becomes) of a `tail`, whose answer size is unbounded: that means "read smaller"
(`OutputTooLarge`), and the reader switches to bounded `view` reads. 429 is
retried after `Retry-After` (capped) for every call and pauses the whole budget; it is the quota's
pacing, not a failure, so only the total time bounds it (`max_attempts` counts the other failures).
A 401 rebuilds the auth object once (a fresh token) and retries. `submit` is not retried blindly:
after a 408/5xx/transport error the job may be queued, so we list the user's jobs and look for the
job name (`#SBATCH --job-name`, unique per entry and run); found → its id, not found → submit again.
Without a job name an ambiguous submit failure is an InfraError (never risk a duplicate job).

Errors after retries → `InfraError` naming what was being done, the HTTP status and the server's
message; never headers (401 responses echo the token) and never credentials.
"""

from __future__ import annotations

import asyncio
import email.utils
import json as jsonlib
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping

from ci_runner.api import (
    RETRYABLE_STATUSES, ApiError, JobStatus, OutputTooLarge, RemoteFileMissing, SlurmRefused, SystemInfo,
)
from ci_runner.budget import RequestBudget
from ci_runner.config_defaults import DEFAULT_API_RETRY_LIMIT
from ci_runner.credentials import Credentials
from ci_runner.errors import SubmitRejected, UsageError
from ci_runner.scheduler_messages import is_slurm_answer, job_already_over, sbatch_rejection

@dataclass(frozen=True)
class RetryPolicy:
    """Bounded jittered exponential backoff, plus timeouts."""

    max_attempts: int = 30  # failed attempts (5xx, transport); a backstop, `max_total` is the real bound
    max_total: float = DEFAULT_API_RETRY_LIMIT  # seconds from the first attempt; no retry starts after it
    limit_name: str = "api_retry_limit"  # what sets `max_total`, for the give-up message
    base_delay: float = 0.5
    max_delay: float = 15.0
    max_retry_after: float = 60.0  # cap on a 429's Retry-After
    request_timeout: float = 30.0
    token_timeout: float = 30.0
    min_token_validity: float = 60.0  # the server rejects tokens with < 30 s left

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter backoff before retry number `attempt` (1-based)."""
        return rng.uniform(self.base_delay / 2, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


class _TokenUnavailable(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class _Auth:
    """Async auth for AsyncFirecrest: fetches tokens in a worker thread (pyfirecrest's are blocking),
    one fetch at a time; `rebuild()` forces a new token after a 401."""

    def __init__(self, credentials: Credentials, policy: RetryPolicy,
                 on_secret: Callable[[str], None] | None = None) -> None:
        self._credentials = credentials
        self._policy = policy
        self._on_secret = on_secret
        self._last_token: str | None = None
        self._lock = asyncio.Lock()
        self._inner: Any = self._build()

    def _build(self) -> Any:
        import firecrest

        c = self._credentials
        if c.api_key:
            return firecrest.ApiKeyAuth(c.api_key, header_name=c.api_key_header)
        auth = firecrest.ClientCredentialsAuth(
            c.client_id, c.client_secret, c.token_url, min_token_validity=self._policy.min_token_validity
        )
        auth.timeout = self._policy.token_timeout
        auth.disable_client_logging = True
        return auth

    def rebuild(self) -> None:
        if not self._credentials.api_key:
            self._inner = self._build()

    async def auth_headers(self) -> dict[str, str]:
        if self._credentials.api_key:
            return dict(self._inner.auth_headers())
        import requests
        from firecrest import ClientsCredentialsException

        async with self._lock:
            try:
                token = await asyncio.to_thread(self._inner.get_access_token)
            except ClientsCredentialsException as e:
                status = e.responses[-1].status_code if e.responses else None
                raise _TokenUnavailable(
                    f"token request to {self._credentials.token_url} failed with HTTP {status}",
                    retryable=status is None or status in RETRYABLE_STATUSES or status == 429,
                ) from None
            except requests.RequestException as e:
                raise _TokenUnavailable(
                    f"token request to {self._credentials.token_url} failed: {type(e).__name__}", retryable=True
                ) from None
            if token != self._last_token:
                self._last_token = token
                if self._on_secret is not None:
                    self._on_secret(token)  # e.g. GitHub ::add-mask:: before anything could print it
        return {"Authorization": f"Bearer {token}"}


def _server_message(response: Any) -> str:
    """The error body's `message` (whole: a Slurm command's stderr spans lines), at most 4000 chars."""
    try:
        body = response.json()
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    text = str(message) if message else (response.text or "")[:200]
    return text.strip()[:4000]


def _unbind(response: Any) -> None:
    """Break the reference cycle between a read response and its spent body stream.

    httpx binds every response and its stream to each other (`BoundAsyncStream` holds the response),
    so a response and its body are freed only by the cyclic garbage collector, whose full passes are
    rare: while a large output streams, each `view` answer (2 MiB) stayed in memory for many more
    reads (bench row 7: 116 MB peak for 1 GiB; 71 MB with this). Our requests are not streamed: the
    body is read and the stream closed when the client returns it, so an empty stream in its place
    changes nothing else; the body is then freed as soon as its caller drops the response."""
    import httpx

    if response.is_closed:
        response.stream = httpx.ByteStream(b"")


def _first_line(message: str) -> str:
    return message.splitlines()[0][:300] if message else ""


def _retry_after(response: Any, now_wall: float) -> float | None:
    value = response.headers.get("Retry-After") or response.headers.get("RateLimit-Reset")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_wall)


_JOB_NAME = re.compile(r"^#SBATCH\s+(?:--job-name[= ]\s*|-J\s*)['\"]?([^\s'\"]+)", re.MULTILINE)


def script_job_name(script: str) -> str | None:
    """The job name set by `#SBATCH --job-name=NAME` / `-J NAME` in a script, if any (the last wins)."""
    names = _JOB_NAME.findall(script)
    return names[-1] if names else None


class Cluster:
    """FirecREST v2 for one system. All methods are coroutines; call `close()` at the end."""

    def __init__(
        self,
        credentials: Credentials,
        system: str | None = None,
        budget: RequestBudget | None = None,
        retry: RetryPolicy = RetryPolicy(),
        *,
        verify: bool | str = True,
        seed: int | None = None,
        on_secret: Callable[[str], None] | None = None,
    ) -> None:
        import firecrest

        self.credentials = credentials
        self.system = system or credentials.system
        self.budget = budget if budget is not None else RequestBudget()
        self.retry = retry
        self._rng = random.Random(seed)
        self.on_secret = on_secret
        self._auth = _Auth(credentials, retry, on_secret)
        self._client = firecrest.v2.AsyncFirecrest(credentials.url, self._auth, verify=verify)
        self._client.timeout = retry.request_timeout
        self._client.num_retries_rate_limit = 0  # we handle 429 (and tell the budget)
        self._client.disable_client_logging = True

    async def close(self) -> None:
        await self._client.close_session()

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _sys(self) -> str:
        if not self.system:
            raise UsageError("no FirecREST system given: set `system` in the config or FIRECREST_SYSTEM")
        return self.system

    # -- the one request path ------------------------------------------------------------------

    async def _request(
        self,
        what: str,
        method: str,
        endpoint: str,
        expected: int,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        files: Any = None,
        retry: bool = True,
        too_large: frozenset[int] = frozenset(),
    ) -> Any:
        """Send one logical request; return the httpx response with the expected status.

        `retry=False`: 408/5xx/transport errors raise at once (`ApiError`, status None for transport).
        `too_large`: statuses that mean, for this read, "the answer was too large" (a timeout of an
        unbounded read): `OutputTooLarge` at once, not retried. A Slurm command's own refusal raises
        `SlurmRefused` at once. 429 and one 401 re-try are always handled.
        """
        import httpx

        started = time.monotonic()
        attempt = failures = 0  # every try / the failed ones (a 429 is pacing, not a failure)
        reauthed = False
        while True:
            attempt += 1
            status: int | None = None
            pause: float | None = None
            try:
                await self._auth.auth_headers()  # fetch a token before taking a budget slot
                async with self.budget.request():
                    if method == "GET":
                        response = await self._client._get_request(endpoint=endpoint, params=params)
                    elif method == "POST":
                        response = await self._client._post_request(
                            endpoint=endpoint, params=params, json_data=json, files=files
                        )
                    else:
                        response = await self._client._delete_request(endpoint=endpoint, params=params)
            except _TokenUnavailable as e:
                if not e.retryable:
                    raise UsageError(f"{what}: {e} (check FIRECREST_CLIENT_ID/FIRECREST_CLIENT_SECRET)") from None
                detail = str(e)
            except httpx.TransportError as e:
                detail = f"{type(e).__name__} talking to {self.credentials.url}"
                if not retry:
                    raise ApiError(f"{what}: {detail}", None) from None
            else:
                _unbind(response)
                status = response.status_code
                if status == expected:
                    return response
                message = _server_message(response)
                detail = f"HTTP {status}" + (f": {_first_line(message)}" if message else "")
                if status == 401 and not reauthed:
                    reauthed = True
                    self._auth.rebuild()
                    continue
                if status == 429:
                    after = _retry_after(response, time.time())
                    pause = min(self.retry.max_retry_after, after if after is not None else 10.0)
                    self.budget.backoff_until(time.monotonic() + pause)
                    self.budget.throttled()  # the quota is shared: lower our own rate (AIMD, budget.py)
                elif status not in RETRYABLE_STATUSES or not retry or status in too_large \
                        or is_slurm_answer(status, message):
                    raise self._error(what, status, message, too_large=status in too_large)
            if pause is None:
                failures += 1
            delay = pause if pause is not None else self.retry.delay(failures, self._rng)
            elapsed = time.monotonic() - started
            if failures >= self.retry.max_attempts or elapsed + delay > self.retry.max_total:
                raise ApiError(f"{what}: {detail} (gave up after {attempt} attempts in {elapsed:.0f} s; "
                               f"{self.retry.limit_name} is {self.retry.max_total:g} s)", status, detail)
            await asyncio.sleep(delay)

    @staticmethod
    def _error(what: str, status: int, message: str, *, too_large: bool = False) -> ApiError:
        text = f"{what}: HTTP {status}" + (f": {_first_line(message)}" if message else "")
        if status == 404 and "No such file or directory" in message:
            return RemoteFileMissing(text, status, message)
        if status == 413 or too_large:
            return OutputTooLarge(text, status, message)
        if is_slurm_answer(status, message):
            return SlurmRefused(text, status, message)
        return ApiError(text, status, message)

    # -- status ----------------------------------------------------------------------------------

    async def systems(self) -> list[dict[str, Any]]:
        """GET /status/systems: the systems with their health and file systems."""
        response = await self._request("listing FirecREST systems", "GET", "/status/systems", 200)
        return list(response.json()["systems"])

    async def system_info(self, system: str | None = None) -> SystemInfo:
        """The system's entry in GET /status/systems: its default work dir and its output cap."""
        name = (system or self._sys()).lower()
        for entry in await self.systems():
            if str(entry.get("name", "")).lower() == name:
                return SystemInfo.from_api(entry)
        raise UsageError(f"FirecREST has no system named {name!r}")

    # -- jobs ------------------------------------------------------------------------------------

    async def submit(
        self, script: str, working_dir: str, env: Mapping[str, str] | None = None, *, job_name: str | None = None,
        output_prefix: str | None = None, exclude: Collection[str] = (), job_of: Callable[[str, str], str] | None = None,
    ) -> str:
        """Submit a batch script; return the job id. When a failed submit may nevertheless have queued
        the job, it is looked up (`find_job`) by `job_name` (default: from `#SBATCH --job-name`), its
        output file starting with `output_prefix`, and not one of `exclude` (earlier attempts)."""
        name = job_name or script_job_name(script)
        job: dict[str, Any] = {"working_directory": working_dir, "script": script}
        if env:
            job["env"] = dict(env)
        what = f"submitting the job in {working_dir}"
        started = time.monotonic()
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                response = await self._request(what, "POST", f"/compute/{self._sys()}/jobs", 201,
                                               json={"job": job}, retry=False)
                return str(response.json()["jobId"])
            except SlurmRefused as e:
                raise SubmitRejected(f"{what}: {sbatch_rejection(e.server_message).describe()}") from None
            except ApiError as e:
                if e.status is not None and e.status not in RETRYABLE_STATUSES:
                    raise
                if name is None:
                    raise ApiError(f"{e} — the job may have been queued; no job name to look it up", e.status) from None
                last = e
            found = await self.find_job(name, output_prefix, exclude, job_of)
            if found is not None:
                return found
            if attempt == self.retry.max_attempts or time.monotonic() - started > self.retry.max_total:
                break
            await asyncio.sleep(self.retry.delay(attempt, self._rng))
        raise ApiError(f"{last} (gave up after {attempt} submit attempts)", last.status)

    async def find_job(self, name: str, output_prefix: str | None = None, exclude: Collection[str] = (),
                       job_of: Callable[[str, str], str] | None = None) -> str | None:
        """Id of the user's newest job named `name` (GET /compute/{sys}/jobs) other than `exclude`, or
        None. Every job of a run has the run's name: with `output_prefix`, the job's output file (from
        its metadata, one request per candidate, newest first) must start with it. `job_of(id, output
        file)`: the id to return for that job (a job array's id for one of its tasks). A listed id
        FirecREST cannot address (sacct's `A_1` or `A_[2-7]` for array tasks) is looked up as `A`."""
        listed = await self.jobs_named(name, f"looking up job {name!r} after a failed submit")
        ids = {status.job_id.split("_", 1)[0] for status in listed}
        for job_id in sorted(ids - set(exclude), key=lambda i: (len(i), i), reverse=True):
            if output_prefix is None:
                return job_id
            path = await self.output_path(job_id) or ""
            if path.startswith(output_prefix):
                return job_of(job_id, path) if job_of is not None else job_id
        return None

    async def jobs_named(self, name: str, what: str = "") -> list[JobStatus]:
        """Every job of the user named `name` that Slurm still lists (one request for a whole run).
        `what`: what the request is for, in an error message."""
        response = await self._request(what or f"listing the jobs named {name!r}", "GET",
                                       f"/compute/{self._sys()}/jobs", 200, params={"name": name})
        return [JobStatus.from_api(j) for j in response.json().get("jobs") or [] if j.get("name") == name]

    async def output_path(self, job_id: str) -> str | None:
        """The job's standard output file (its metadata), or None when FirecREST does not know it."""
        try:
            response = await self._request(f"reading the metadata of job {job_id}", "GET",
                                           f"/compute/{self._sys()}/jobs/{job_id}/metadata", 200)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        jobs = response.json().get("jobs") or []
        return str(jobs[0].get("standardOutput") or "") if jobs else None

    async def job(self, job_id: str) -> JobStatus | None:
        """The job's status, or None when FirecREST does not know it (404 "Job not found.": just
        submitted, or purged); the caller decides how long to tolerate that."""
        try:
            response = await self._request(f"reading the state of job {job_id}", "GET",
                                           f"/compute/{self._sys()}/jobs/{job_id}", 200)
        except ApiError as e:
            if e.status == 404 and "job not found" in e.server_message.lower():
                return None
            raise
        jobs = response.json().get("jobs") or []
        return JobStatus.from_api(jobs[0]) if jobs else None

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job. False when there was nothing to cancel: the job had already ended (scancel:
        "already completing or completed") or FirecREST no longer knows it (404)."""
        try:
            await self._request(f"cancelling job {job_id}", "DELETE", f"/compute/{self._sys()}/jobs/{job_id}", 204)
        except SlurmRefused as e:
            if job_already_over(e.server_message):
                return False
            raise
        except ApiError as e:
            if e.status != 404:
                raise
            return False
        return True

    # -- files -----------------------------------------------------------------------------------

    async def tail_from(self, path: str, offset: int) -> str:
        """Text of the file from 0-based byte `offset` to EOF (`tail --bytes=+offset+1`; never bytes=0).
        Raises RemoteFileMissing (404) and OutputTooLarge: 413 (≥ the server's output cap), or 408/500
        at once, not retried: the real server's `tail` of a large rest blocks on its output buffer
        until the command timeout, so repeating the same read would only time out again."""
        body = await self._read_output(f"reading {path}", f"/filesystem/{self._sys()}/ops/tail",
                                       {"path": path, "bytes": offset + 1, "skipHeading": True}, frozenset({408, 500}))
        return str(body["output"]["content"])

    async def view(self, path: str, offset: int, size: int) -> str:
        """Raw `ops/view?offset=&size=`, as the server computes it: with k = offset // size, the text
        decode(bytes[k·size, k·size + 2·size))[offset % size : offset % size + size] — a slice in
        *characters* (see stream.py for how offsets stay byte-exact). A timeout (408) raises
        OutputTooLarge at once: ask for a smaller size."""
        body = await self._read_output(f"reading {path} at byte {offset}", f"/filesystem/{self._sys()}/ops/view",
                                       {"path": path, "offset": offset, "size": size}, frozenset({408}))
        return str(body["output"])

    async def _read_output(self, what: str, endpoint: str, params: dict[str, Any], too_large: frozenset[int]) -> Any:
        """The parsed JSON body of a read of file content (`tail`, `view`: up to a few MiB), its raw
        bytes freed before it is parsed: two copies of the text in memory at a time (the decoded body,
        the parsed string), not three (bench row 7)."""
        response = await self._request(what, "GET", endpoint, 200, params=params, too_large=too_large)
        text = response.content.decode("utf-8")
        del response  # the only reference (no cycle, `_unbind`): its bytes are freed here
        return jsonlib.loads(text)

    async def list_files(self, path: str, *, recursive: bool = False) -> list[dict[str, Any]]:
        """`ops/ls` entries of a directory (hidden files included; symlinks not followed): dicts with
        `name` (relative to `path`), `type` ("-", "d", "l"), `linkTarget`, `size`."""
        response = await self._request(f"listing {path}", "GET", f"/filesystem/{self._sys()}/ops/ls", 200,
                                       params={"path": path, "showHidden": True, "recursive": recursive})
        return list(response.json()["output"])

    async def stat_size(self, path: str) -> int | None:
        """Size in bytes, or None when the file does not exist."""
        try:
            response = await self._request(f"checking {path}", "GET", f"/filesystem/{self._sys()}/ops/stat", 200,
                                           params={"path": path})
        except RemoteFileMissing:
            return None
        return int(response.json()["output"]["size"])

    async def mkdir(self, path: str) -> None:
        """Create a directory and its parents (no error when it exists)."""
        await self._request(f"creating {path}", "POST", f"/filesystem/{self._sys()}/ops/mkdir", 201,
                            json={"sourcePath": path, "parent": True})

    async def upload(self, data: bytes, directory: str, filename: str) -> None:
        """Write `data` to directory/filename with one direct upload: at most `api.MAX_DIRECT_UPLOAD`
        bytes (transfer.py cuts the source archive into such parts and refuses one of too many)."""
        await self._request(f"uploading {filename} to {directory}", "POST",
                            f"/filesystem/{self._sys()}/ops/upload", 204,
                            params={"path": directory}, files={"file": (filename, data)})

    async def download(self, path: str) -> bytes:
        """Bytes of a small remote file (direct download; the server's limit is about 3.75 MiB)."""
        response = await self._request(f"downloading {path}", "GET", f"/filesystem/{self._sys()}/ops/download",
                                       200, params={"path": path})
        return bytes(response.content)

    async def rm(self, path: str) -> None:
        """Remove a file or directory tree; a missing path is fine."""
        try:
            await self._request(f"removing {path}", "DELETE", f"/filesystem/{self._sys()}/ops/rm", 204,
                                params={"path": path})
        except RemoteFileMissing:
            pass
