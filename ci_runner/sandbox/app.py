"""The sandbox's ASGI app: FirecREST v2 routes, the token endpoint, fault injection and the request log.

Each API route authenticates first, then resolves the system (404 "System not found"), then validates
its parameters (400, `errorType: "validation"`), in the order the real FastAPI dependencies run.
Error bodies are the server's `{errorType, message, causedBy, data, user}`; every response carries
`F7T-AppVersion` and `F7T-Timestamp` like the real server's.

Outside the FirecREST API: `POST /auth/token` (OAuth2 client credentials) and `/_sandbox/requests`
(GET the request log as JSON, DELETE to reset it). The latter needs no token: the server binds to
127.0.0.1 only, and it is neither logged nor subject to faults.
"""

from __future__ import annotations

import asyncio
import grp
import json
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ci_runner.sandbox.auth import AuthError, Principal, TokenAuthority
from ci_runner.sandbox.backends import Backend, BackendError
from ci_runner.sandbox.faults import FaultInjector, Faults, corrupted
from ci_runner.sandbox.files import FsError, SandboxFiles, UnmappedError
from ci_runner.sandbox.requestlog import RequestLog, RequestRecord

SERVER_VERSION = "2.6.0"
TOKEN_PATH = "/auth/token"
REQUESTS_PATH = "/_sandbox/requests"
JOB_ID_PATTERN = re.compile(r"^[a-zA-Z0-9]+$")
TIME_WINDOWS = ("1h", "8h", "24h", "3d", "7d")
DEFAULT_JOB_ENV = {"F7T_version": "v2.0.0"}


class DropConnection(Exception):
    """Raised out of the ASGI app to make the server close the connection without a response."""


class ApiError(Exception):
    """An error answer in the server's body shape."""

    def __init__(self, status: int, message: str, *, error_type: str = "error",
                 data: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.data = data
        self.headers = headers or {}


@dataclass
class SandboxState:
    """Everything the routes share. Mutable only in `submitted` (job id → monotonic submit time)."""

    system: str
    files: SandboxFiles
    backend: Backend
    authority: TokenAuthority
    faults: Faults
    log: RequestLog
    token_ttl: float
    injector: FaultInjector = field(init=False)
    submitted: dict[str, float] = field(default_factory=dict)
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def __post_init__(self) -> None:
        self.injector = FaultInjector(self.faults)


# -- bodies ------------------------------------------------------------------------------------

def error_body(message: str, user: str | None, error_type: str = "error",
               data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"errorType": error_type, "message": message, "causedBy": None, "data": data, "user": user}


@dataclass(frozen=True)
class FieldProblem:
    """One pydantic-style validation error."""

    kind: str
    location: str
    name: str
    message: str
    value: Any = None
    context: dict[str, Any] | None = None


def validation_error(*problems: FieldProblem) -> ApiError:
    """400 with the server's validation body (message = pydantic's text, lower-cased like the server's)."""
    lines = []
    for p in problems:
        item: dict[str, Any] = {"type": p.kind, "loc": (p.location, p.name), "msg": p.message, "input": p.value}
        if p.context:
            item["ctx"] = p.context
        lines.append(f"  {item}")
    count = len(problems)
    message = f"{count} validation error{'s' if count != 1 else ''}:\n" + "\n".join(lines)
    fields = [{"location": p.location, "name": p.name, "message": p.message} for p in problems]
    return ApiError(400, message.lower(), error_type="validation", data={"fields": fields})


def job_id_param(request: Request) -> str:
    job_id = request.path_params["job_id"]
    if not JOB_ID_PATTERN.match(job_id):
        pattern = JOB_ID_PATTERN.pattern
        raise validation_error(FieldProblem("string_pattern_mismatch", "path", "job_id",
                                            f"String should match pattern '{pattern}'", job_id, {"pattern": pattern}))
    return job_id


def int_param(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise validation_error(FieldProblem("int_parsing", "query", name,
                                            "Input should be a valid integer, unable to parse string as an integer",
                                            raw)) from None


TRUE = {"1", "true", "t", "yes", "y", "on"}
FALSE = {"0", "false", "f", "no", "n", "off"}


def bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise validation_error(FieldProblem("bool_parsing", "query", name,
                                        "Input should be a valid boolean, unable to interpret input", raw))


def required_query(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if value is None:
        raise validation_error(FieldProblem("missing", "query", name, "Field required"))
    return value


# -- route plumbing ----------------------------------------------------------------------------

Handler = Callable[[Request, SandboxState], Awaitable[Response]]


def api(handler: Handler, state: SandboxState, *, system: bool = True) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a route: authenticate, resolve `{system_name}`, then call `handler(request, state)`."""

    async def endpoint(request: Request) -> Response:
        principal = state.authority.authenticate({k.lower(): v for k, v in request.headers.items()})
        request.state.principal = principal
        if system and request.path_params.get("system_name", "").lower() != state.system.lower():
            raise ApiError(404, "System not found")
        return await handler(request, state)

    return endpoint


def user_of(request: Request) -> str | None:
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal.username if principal else None


async def handle_error(request: Request, exc: Exception) -> Response:
    """Every error class of the sandbox → the server's error body."""
    headers: dict[str, str] = {}
    error_type, data = "error", None
    if isinstance(exc, ApiError):
        status, message, error_type, data, headers = exc.status, exc.message, exc.error_type, exc.data, exc.headers
    elif isinstance(exc, AuthError):
        status, message = exc.status, exc.message
        if message == "Not authenticated":
            headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, (FsError, BackendError)):
        status, message = exc.status, exc.message
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    else:  # pragma: no cover - a bug in the sandbox: still answer in the server's shape
        status, message = 500, f"An error occurred during the request process: {type(exc).__name__}: {exc}"
    user = None if status == 401 or isinstance(exc, UnmappedError) else user_of(request)
    return JSONResponse(error_body(message, user, error_type, data), status_code=status, headers=headers)


# -- status ------------------------------------------------------------------------------------

def system_description(state: SandboxState) -> dict[str, Any]:
    """The `/status/systems` entry: one system whose only filesystem is the sandbox root."""
    checked = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    root = str(state.files.root)
    return {
        "name": state.system,
        "ssh": {"host": "127.0.0.1", "port": 22, "proxyHost": None, "proxyPort": None, "maxClients": 100,
                "timeout": {"connection": 5, "login": 5, "commandExecution": math.ceil(state.files.command_timeout),
                            "idleTimeout": 60, "keepAlive": 5}},
        "scheduler": {"type": "slurm", "connectionMode": "ssh", "version": f"sandbox-{state.backend.name}",
                      "apiUrl": None, "apiVersion": None, "timeout": 10},
        "servicesHealth": [
            {"serviceType": "scheduler", "lastChecked": checked, "latency": 0.0, "healthy": True, "message": None},
            {"serviceType": "ssh", "lastChecked": checked, "latency": 0.0, "healthy": True, "message": None},
            {"serviceType": "filesystem", "lastChecked": checked, "latency": 0.0, "healthy": True,
             "message": None, "path": root},
        ],
        "probing": {"services": {"ssh": {"timeout": 5}, "scheduler": {"timeout": 10}, "filesystem": {"timeout": 5}},
                    "intervalCheck": 60},
        "lastHealthCheck": checked,
        "fileSystems": [{"path": root, "dataType": "users", "defaultWorkDir": True}],
        "dataOperation": {"datatransfer_jobs_directives": [], "max_ops_file_size": state.files.max_ops_size,
                          "data_transfer": None},
    }


async def get_systems(request: Request, state: SandboxState) -> Response:
    return JSONResponse({"systems": [system_description(state)]})


async def get_liveness(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    return JSONResponse({"healthcheckRuns": {state.system: state.started.isoformat().replace("+00:00", "Z")},
                         "lastUpdate": 0})


async def get_userinfo(request: Request, state: SandboxState) -> Response:
    uid, gid = os.getuid(), os.getgid()
    group = {"id": str(gid), "name": _group_name(gid)}
    groups = [{"id": str(g), "name": _group_name(g)} for g in sorted(set(os.getgroups()) | {gid})]
    return JSONResponse({"user": {"id": str(uid), "name": user_of(request)}, "group": group, "groups": groups,
                         "accounts": []})


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# -- compute -----------------------------------------------------------------------------------

def hidden(state: SandboxState, job_id: str) -> bool:
    """True inside the injected job-not-found window after this job's submit."""
    window = state.faults.not_found_window
    submitted = state.submitted.get(job_id)
    return bool(window) and submitted is not None and time.monotonic() - submitted < window


async def post_job(request: Request, state: SandboxState) -> Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise validation_error(FieldProblem("json_invalid", "body", "job", "JSON decode error")) from None
    job = body.get("job") if isinstance(body, dict) else None
    if not isinstance(job, dict):
        raise validation_error(FieldProblem("missing", "body", "job", "Field required"))
    working_dir = job.get("workingDirectory", job.get("working_directory"))
    if not isinstance(working_dir, str):
        raise validation_error(FieldProblem("missing", "body", "workingDirectory", "Field required"))
    script = job.get("script")
    script_path = job.get("scriptPath", job.get("script_path"))
    env = job.get("env", DEFAULT_JOB_ENV)
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env if isinstance(item, str))
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise validation_error(FieldProblem("dict_type", "body", "env", "Input should be a valid dictionary", env))
    state.files.check(working_dir)
    if not isinstance(script, str):
        if not isinstance(script_path, str):
            raise ApiError(400, "Either `script` or `scriptPath` must be given.")
        state.files.check(script_path)
        script = await run_in_threadpool(_read_script, script_path)
    job_id = await run_in_threadpool(state.backend.submit, script, working_dir, env, state.faults.pending_delay)
    state.submitted[job_id] = time.monotonic()
    return JSONResponse({"jobId": job_id}, status_code=201)


def _read_script(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise BackendError(400, f"sbatch: error: Unable to open file {path}: {exc.strerror}") from exc


async def get_jobs(request: Request, state: SandboxState) -> Response:
    window = request.query_params.get("time_window", "24h")
    if window not in TIME_WINDOWS:
        raise validation_error(FieldProblem("enum", "query", "time_window",
                                            "Input should be '1h', '8h', '24h', '3d' or '7d'", window))
    bool_param(request, "allusers")
    name = request.query_params.get("name")
    jobs = await run_in_threadpool(state.backend.jobs, None)
    jobs = [j for j in jobs if not hidden(state, j["jobId"]) and (name is None or j.get("name") == name)]
    return JSONResponse({"jobs": jobs})


async def get_job(request: Request, state: SandboxState) -> Response:
    job_id = job_id_param(request)
    jobs = [] if hidden(state, job_id) else await run_in_threadpool(state.backend.jobs, [job_id])
    if not jobs:
        raise ApiError(404, "Job not found.")
    return JSONResponse({"jobs": jobs})


async def get_job_metadata(request: Request, state: SandboxState) -> Response:
    job_id = job_id_param(request)
    metadata = None if hidden(state, job_id) else await run_in_threadpool(state.backend.metadata, job_id)
    if metadata is None:
        raise ApiError(404, "Job not found.")
    return JSONResponse({"jobs": [metadata]})


async def delete_job(request: Request, state: SandboxState) -> Response:
    job_id = job_id_param(request)
    await run_in_threadpool(state.backend.cancel, job_id, os.getuid())
    return Response(status_code=204)


# -- filesystem --------------------------------------------------------------------------------

def fs_path(request: Request, state: SandboxState) -> str:
    """The `path` query parameter after the filesystem dependency's checks (400/403)."""
    return state.files.check(request.query_params.get("path"), follow=False)


async def get_ls(request: Request, state: SandboxState) -> Response:
    path = fs_path(request, state)
    args = [bool_param(request, n) for n in ("showHidden", "numericUid", "recursive", "dereference")]
    output = await run_in_threadpool(state.files.ls, path, *args)
    return JSONResponse({"output": output})


def _head_tail_query(request: Request, skip_param: str) -> tuple[int | None, int | None, bool, int | None]:
    """`bytes`, `lines`, the skip flag, and the count signed as tail echoes it (+N with skip, -N without;
    None when neither is given). `bytes=0`/`lines=0` pass through: GNU tools then print 10 lines."""
    num_bytes, lines = int_param(request, "bytes"), int_param(request, "lines")
    if lines and num_bytes:
        raise ApiError(400, "Only one of `bytes` or `lines` can be specified.")
    skip = bool_param(request, skip_param)
    count = lines if lines is not None else num_bytes
    return num_bytes, lines, skip, None if count is None else (count if skip else -count)


async def get_head(request: Request, state: SandboxState) -> Response:
    path = fs_path(request, state)
    num_bytes, lines, skip, signed = _head_tail_query(request, "skipTrailing")
    content = await run_in_threadpool(state.files.head, path, num_bytes, lines, skip)
    return JSONResponse({"output": {"content": content, "contentType": "bytes" if num_bytes else "lines",
                                    "startPosition": 0, "endPosition": 10 if signed is None else -signed}})


async def get_tail(request: Request, state: SandboxState) -> Response:
    path = fs_path(request, state)
    num_bytes, lines, skip, signed = _head_tail_query(request, "skipHeading")
    content = await run_in_threadpool(state.files.tail, path, num_bytes, lines, skip)
    return JSONResponse({"output": {"content": content, "contentType": "bytes" if num_bytes else "lines",
                                    "startPosition": 10 if signed is None else signed, "endPosition": -1}})


async def get_view(request: Request, state: SandboxState) -> Response:
    path = fs_path(request, state)
    limit = state.files.max_ops_size
    size = int_param(request, "size", limit)  # the server default (5 MiB) is its default limit
    offset = int_param(request, "offset", 0)
    assert size is not None and offset is not None
    if offset < 0:
        raise ApiError(400, "`offset` value must be an integer value equal or greater than 0")
    if size <= 0:
        raise ApiError(400, "`size` value must be an integer value greater than 0")
    if size > limit:
        raise ApiError(400, f"`size` value must be less than {limit} bytes")
    return JSONResponse({"output": await run_in_threadpool(state.files.view, path, offset, size)})


async def get_stat(request: Request, state: SandboxState) -> Response:
    path = fs_path(request, state)
    output = await run_in_threadpool(state.files.stat, path, bool_param(request, "dereference"))
    return JSONResponse({"output": output})


async def get_checksum(request: Request, state: SandboxState) -> Response:
    path = fs_path(request, state)
    return JSONResponse({"output": await run_in_threadpool(state.files.checksum, path)})


async def get_download(request: Request, state: SandboxState) -> Response:
    path = fs_path(request, state)
    content = await run_in_threadpool(state.files.download, path)
    return Response(content, media_type="application/octet-stream")


async def delete_rm(request: Request, state: SandboxState) -> Response:
    path = fs_path(request, state)
    await run_in_threadpool(state.files.rm, path)
    return Response(status_code=204)


async def post_mkdir(request: Request, state: SandboxState) -> Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "Unable to decode request and retreive the required path or source_path parameter.")
    path = body.get("sourcePath", body.get("source_path"))
    state.files.check(path)
    parent = body.get("parent", False)
    if not isinstance(parent, bool):
        raise validation_error(FieldProblem("bool_type", "body", "parent", "Input should be a valid boolean", parent))
    output = await run_in_threadpool(state.files.mkdir, path, parent)
    return JSONResponse({"output": output}, status_code=201)


async def post_upload(request: Request, state: SandboxState) -> Response:
    directory = fs_path(request, state)
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise validation_error(FieldProblem("missing", "body", "file", "Field required"))
    filename = upload.filename or "upload"
    content = corrupted(state.faults, filename, await upload.read())
    await run_in_threadpool(state.files.upload, directory, filename, content)
    return Response(status_code=204)


# -- token and sandbox-only endpoints -----------------------------------------------------------

async def post_token(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        token = state.authority.issue(fields, request.headers.get("authorization"), ttl=state.token_ttl)
    except AuthError as exc:
        return JSONResponse({"error": exc.oauth_error, "error_description": exc.message}, status_code=exc.status)
    return JSONResponse(token, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def sandbox_requests(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    if request.method == "DELETE":
        state.log.reset()
        return Response(status_code=204)
    return JSONResponse(state.log.snapshot())


def routes(state: SandboxState) -> list[BaseRoute]:
    def r(path: str, handler: Handler, method: str, system: bool = True) -> Route:
        return Route(path, api(handler, state, system=system), methods=[method])

    ops = "/filesystem/{system_name}/ops"
    jobs = "/compute/{system_name}/jobs"
    return [
        Route(TOKEN_PATH, post_token, methods=["POST"]),
        Route(REQUESTS_PATH, sandbox_requests, methods=["GET", "DELETE"]),
        Route("/status/liveness/", get_liveness, methods=["GET"]),
        r("/status/systems", get_systems, "GET", system=False),
        r("/status/{system_name}/userinfo", get_userinfo, "GET"),
        r(jobs, get_jobs, "GET"),
        r(jobs, post_job, "POST"),
        r(jobs + "/{job_id}", get_job, "GET"),
        r(jobs + "/{job_id}", delete_job, "DELETE"),
        r(jobs + "/{job_id}/metadata", get_job_metadata, "GET"),
        r(ops + "/ls", get_ls, "GET"),
        r(ops + "/head", get_head, "GET"),
        r(ops + "/tail", get_tail, "GET"),
        r(ops + "/view", get_view, "GET"),
        r(ops + "/stat", get_stat, "GET"),
        r(ops + "/checksum", get_checksum, "GET"),
        r(ops + "/download", get_download, "GET"),
        r(ops + "/rm", delete_rm, "DELETE"),
        r(ops + "/mkdir", post_mkdir, "POST"),
        r(ops + "/upload", post_upload, "POST"),
    ]


# -- middleware: faults, request log, F7T headers ----------------------------------------------

def route_template(route_list: list[BaseRoute], scope: Scope) -> str:
    """The matching route's template (`/compute/{system_name}/jobs/{job_id}`), else the raw path."""
    partial = None
    for route in route_list:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", scope["path"])
        if match == Match.PARTIAL and partial is None:
            partial = getattr(route, "path", None)
    return partial or scope["path"]


class SandboxMiddleware:
    """Outermost layer: decides injected faults, counts the request, stamps F7T headers."""

    def __init__(self, app: ASGIApp, state: SandboxState, route_list: list[BaseRoute]) -> None:
        self.app = app
        self.state = state
        self.route_list = route_list

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox/"):
            await self.app(scope, receive, send)
            return
        arrived = time.time()  # a site's quota counts requests when they arrive
        state = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = (scope.get("client") or ("?", 0))[0]
        client = state.authority.identify(headers, fallback=host)
        status = 0
        sent = 0
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                state.log.record(RequestRecord(arrived, client, scope["method"],
                                               route_template(self.route_list, scope), status, sent))

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"f7t-appversion", SERVER_VERSION.encode()),
                                                  (b"f7t-timestamp", str(time.time()).encode())]}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    record()  # before the client can have the whole answer: a test reading the log sees it
            await send(message)

        try:
            if scope["path"] != TOKEN_PATH or state.faults.apply_to_token:
                verdict = state.injector.decide(client, time.monotonic())
                if state.faults.latency:
                    await asyncio.sleep(state.faults.latency)
                if verdict.action == "drop":
                    raise DropConnection(verdict.reason)
                if verdict.action != "pass":
                    extra = {"Retry-After": str(verdict.retry_after)} if verdict.retry_after is not None else {}
                    response = JSONResponse(error_body(f"{verdict.reason} (sandbox fault injection)", None),
                                            status_code=verdict.status, headers=extra)
                    await response(scope, receive, counting_send)
                    return
            await self.app(scope, receive, counting_send)
        finally:
            record()  # a dropped connection or an error before the last body message


def build_app(state: SandboxState) -> ASGIApp:
    """The complete ASGI app for `state`."""
    route_list = routes(state)
    handlers: dict[Any, Any] = {cls: handle_error
                                for cls in (ApiError, AuthError, FsError, BackendError, HTTPException, Exception)}
    app = Starlette(routes=route_list, exception_handlers=handlers)
    app.state.sandbox = state
    return SandboxMiddleware(app, state, route_list)
