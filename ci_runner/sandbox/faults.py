"""Fault injection: what can go wrong between a FirecREST client and the real service, on demand.

`Faults` is the configuration (all off by default). `FaultInjector` holds the state (seeded RNG,
429 burst counter, per-client sliding quota window) and decides, per request, what the server does
instead of answering normally. The job-not-found window, token TTL override, pending delay and rejected
QOS are read by the routes, the token endpoint and the backend; latency is applied by the middleware.
"""

from __future__ import annotations

import fnmatch
import math
import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Faults:
    """Injected faults; every field's zero value means "off".

    latency: seconds added before every affected request is answered.
    error_rate: probability (0..1) of answering with a random status from `error_statuses` instead.
    error_statuses: the 5xx codes `error_rate` picks from.
    seed: seeds the RNG used by `error_rate` and `drop_rate` (None: unpredictable).
    burst_every, burst_length, retry_after: after every `burst_every` answered requests, the next
        `burst_length` requests get 429 with `Retry-After: retry_after` (whole seconds, as pyfirecrest parses).
    token_ttl: overrides the sandbox's token lifetime (seconds) for newly issued tokens.
    drop_rate: probability of closing the connection without sending any response byte.
    not_found_window: seconds after a submit during which job info/metadata of that job answer 404 "Job not found.".
    quota_per_minute: requests per client in any sliding 60 s window; beyond it 429 with Retry-After.
    pending_delay: seconds a newly submitted job is held PENDING (passed to the backend).
    reject_qos: local backend only: submits in these QOS (`--qos`; "normal" without one) fail as Slurm
        refuses a job over a QOS limit ("QOSMaxSubmitJobPerUserLimit"), which the server answers with 403.
    apply_to_token: also inject latency/errors/429/drops into the token endpoint (off by default).
    corrupt_uploads: names (fnmatch patterns) of uploaded files whose first byte the sandbox flips
        before storing them, as a transfer that damaged a file would; the upload itself succeeds.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    seed: int | None = None
    burst_every: int = 0
    burst_length: int = 0
    retry_after: int = 1
    token_ttl: float | None = None
    drop_rate: float = 0.0
    not_found_window: float = 0.0
    quota_per_minute: int = 0
    pending_delay: float = 0.0
    reject_qos: tuple[str, ...] = ()
    apply_to_token: bool = False
    corrupt_uploads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("latency", "not_found_window", "pending_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("burst_every", "burst_length", "quota_per_minute", "retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.token_ttl is not None and self.token_ttl <= 0:
            raise ValueError("token_ttl must be positive")
        if any(not 500 <= status <= 599 for status in self.error_statuses) or not self.error_statuses:
            raise ValueError("error_statuses must be 5xx codes")


def corrupted(faults: Faults, filename: str, content: bytes) -> bytes:
    """`content` as the sandbox stores upload `filename`: first byte flipped when `corrupt_uploads` names it."""
    if content and any(fnmatch.fnmatchcase(filename, pattern) for pattern in faults.corrupt_uploads):
        return bytes([content[0] ^ 0xFF]) + content[1:]
    return content


@dataclass(frozen=True)
class Verdict:
    """What to do with one request: answer normally, answer `status` instead, or drop the connection."""

    action: Literal["pass", "error", "throttle", "drop"]
    status: int = 200
    retry_after: int | None = None
    reason: str = ""


PASS = Verdict("pass")
WINDOW = 60.0


class FaultInjector:
    """Stateful decisions for `Faults`; safe to call from several threads."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()
        self._answered = 0
        self._burst_left = 0
        self._windows: dict[str, deque[float]] = {}

    def decide(self, client: str, now: float) -> Verdict:
        """The verdict for the next request of `client` at monotonic time `now` (in this order:
        drop, quota, 429 burst, 5xx). Requests refused by the quota do not count against it."""
        f = self.faults
        with self._lock:
            if f.drop_rate and self._rng.random() < f.drop_rate:
                return Verdict("drop", reason="injected dropped connection")
            if f.quota_per_minute:
                window = self._windows.setdefault(client, deque())
                while window and window[0] <= now - WINDOW:
                    window.popleft()
                if len(window) >= f.quota_per_minute:
                    wait = max(1, math.ceil(window[0] + WINDOW - now))
                    return Verdict("throttle", 429, wait, f"quota of {f.quota_per_minute} requests per minute exceeded")
                window.append(now)
            if self._burst_left:
                self._burst_left -= 1
                return Verdict("throttle", 429, f.retry_after, "injected 429 burst")
            if f.error_rate and self._rng.random() < f.error_rate:
                return Verdict("error", self._rng.choice(f.error_statuses), reason="injected server error")
            self._answered += 1
            if f.burst_every and f.burst_length and self._answered % f.burst_every == 0:
                self._burst_left = f.burst_length
            return PASS
