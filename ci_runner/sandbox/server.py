"""Start and stop the sandbox in-process: `start_sandbox(SandboxOptions(...))` → `Sandbox` handle.

Stack: Starlette + uvicorn. Starlette is small, well kept and plain ASGI (no code generation, no
pydantic layer we would have to fight to reproduce the server's exact bodies); the real FirecREST is
FastAPI, i.e. Starlette underneath, so routing, form/multipart parsing and error paths behave the
same way. uvicorn is the reference ASGI server; it runs here in a background thread on a socket we
bind ourselves to 127.0.0.1 (port 0 = a free port), so the port is known before the first request.

Dropped connections: uvicorn answers 500 when an app raises before responding, so the sandbox uses a
small subclass of uvicorn's h11 protocol that closes the socket instead when the app raises
`DropConnection` (the client sees "Server disconnected without sending a response").
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ci_runner.sandbox.app import TOKEN_PATH, DropConnection, SandboxState, build_app
from ci_runner.sandbox.auth import TokenAuthority
from ci_runner.sandbox.backends import Backend, pick_backend
from ci_runner.sandbox.faults import Faults
from ci_runner.sandbox.files import SandboxFiles
from ci_runner.sandbox.requestlog import RequestLog

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class SandboxOptions:
    """How to run the sandbox.

    root: the system's only filesystem (`defaultWorkDir`); None → a temp dir created now, removed on stop.
    backend: "auto" (slurm if sbatch works, else local), "slurm" or "local". slots: local backend's parallel jobs.
    port: 0 picks a free port. The server always binds 127.0.0.1.
    token_ttl: lifetime of issued tokens (s); `faults.token_ttl` overrides it. min_token_ttl: tokens with
    less left are refused (the server default, 30 s). client_id/client_secret: generated when None.
    api_key: also accept this key in `X-API-Key` (None: API-key auth off).
    max_ops_size: the ops output/upload/view-size limit (server default 5 MiB); smaller keeps tests fast.
    command_timeout: seconds an ops command may run before 408 "Command execution timeout limit exceeded."
    (server default 5; `/status/systems` reports it rounded up to whole seconds). Small values keep tests fast.
    local_time_scale: local backend only: multiplies `--time` limits (tests reach TIMEOUT fast).
    """

    root: Path | None = None
    backend: str = "auto"
    port: int = 0
    system: str = "local"
    token_ttl: float = 300.0
    min_token_ttl: float = 30.0
    client_id: str | None = None
    client_secret: str | None = None
    api_key: str | None = None
    slots: int = 2
    max_ops_size: int = 5 * 1024 * 1024
    command_timeout: float = 5.0
    local_time_scale: float = 1.0
    faults: Faults = field(default_factory=Faults)


class _DroppingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus: `DropConnection` from the app closes the socket, sends nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            try:
                await inner(scope, receive, send)
            except DropConnection:
                self.transport.close()
                cycle = self.cycle
                if cycle is not None:  # nothing more to send for this request
                    cycle.response_started = True
                    cycle.response_complete = True

        self.app = app


class Sandbox:
    """A running sandbox. Use as a context manager or call `stop()`."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # first: a busy port fails early
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind(("127.0.0.1", options.port))
        except OSError:
            self._socket.close()
            raise
        self.port = self._socket.getsockname()[1]
        self._own_root = options.root is None
        root = Path(tempfile.mkdtemp(prefix="ci-runner-sandbox-")) if options.root is None else options.root
        self.root = Path(os.path.realpath(root))
        self.system = options.system
        self.client_id = options.client_id or f"ci-runner-sandbox-{secrets.token_hex(4)}"
        self.client_secret = options.client_secret or secrets.token_urlsafe(24)
        self.api_key = options.api_key
        self.request_log = RequestLog()
        self._state_dir = Path(tempfile.mkdtemp(prefix="ci-runner-sandbox-state-"))
        try:
            self.backend: Backend = self._make_backend()
        except ValueError:  # options the backend refuses: leave nothing behind
            self._socket.close()
            shutil.rmtree(self._state_dir, ignore_errors=True)
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.backend_name = self.backend.name
        faults = options.faults
        authority = TokenAuthority(
            client_id=self.client_id, client_secret=self.client_secret, username=pwd.getpwuid(os.getuid()).pw_name,
            token_ttl=options.token_ttl, min_token_ttl=options.min_token_ttl, api_key=options.api_key,
        )
        state = SandboxState(
            system=options.system,
            files=SandboxFiles(self.root, options.system, options.max_ops_size, options.command_timeout),
            backend=self.backend, authority=authority, faults=faults, log=self.request_log,
            token_ttl=faults.token_ttl if faults.token_ttl is not None else options.token_ttl,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_url = self.url + TOKEN_PATH
        config = uvicorn.Config(build_app(state), http=_DroppingH11Protocol, ws="none", lifespan="off",
                                log_config=None, access_log=False, log_level="warning", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name=f"ci-runner-sandbox-{self.port}", daemon=True)
        self._stopped = False

    def _make_backend(self) -> Backend:
        kwargs: dict[str, Any] = {}
        if self.options.local_time_scale != 1.0:
            kwargs["time_scale"] = self.options.local_time_scale
        if self.options.faults.reject_qos:
            kwargs["rejected_qos"] = frozenset(self.options.faults.reject_qos)
        return pick_backend(self.options.backend, self._state_dir, self.options.slots, **kwargs)

    def start(self) -> Sandbox:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sandbox server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def env(self) -> dict[str, str]:
        """The environment a FirecREST client (ci-runner, pyfirecrest's CLI) needs to use this sandbox."""
        return {
            "FIRECREST_URL": self.url,
            "AUTH_TOKEN_URL": self.token_url,
            "FIRECREST_CLIENT_ID": self.client_id,
            "FIRECREST_CLIENT_SECRET": self.client_secret,
            "FIRECREST_SYSTEM": self.system,
        }

    def stop(self) -> None:
        """Stop serving, end the backend (the local backend kills its jobs), remove a temp root."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT)
        self._socket.close()
        self.backend.close()
        shutil.rmtree(self._state_dir, ignore_errors=True)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def start_sandbox(options: SandboxOptions) -> Sandbox:
    """Start a sandbox server in a background thread and return once it accepts connections."""
    return Sandbox(options).start()
