"""What the sandbox served: counts per endpoint, response bytes, status codes, one record per request.

Thread-safe: uvicorn's event loop thread records, tests and benchmarks read from other threads (or
over HTTP at `/_sandbox/requests`, see `app.py`).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RequestRecord:
    """One served request: `time` when it arrived (wall clock), `route` its route template
    (`/compute/{system_name}/jobs/{job_id}`), `bytes` the response body's size."""

    time: float
    client: str
    method: str
    route: str
    status: int
    bytes: int

    @property
    def endpoint(self) -> str:
        """`"GET /compute/{system_name}/jobs/{job_id}"`: the key of the per-endpoint counters."""
        return f"{self.method} {self.route}"


class RequestLog:
    """Accumulates `RequestRecord`s; every read returns a copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self._records.append(entry)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    @property
    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    @property
    def counts(self) -> dict[str, int]:
        """Requests per endpoint (`"METHOD /route/template"`)."""
        return dict(Counter(r.endpoint for r in self.records))

    @property
    def bytes(self) -> dict[str, int]:
        """Response body bytes per endpoint."""
        totals: Counter[str] = Counter()
        for r in self.records:
            totals[r.endpoint] += r.bytes
        return dict(totals)

    @property
    def statuses(self) -> dict[str, dict[int, int]]:
        """Status code counts per endpoint."""
        result: dict[str, Counter[int]] = {}
        for r in self.records:
            result.setdefault(r.endpoint, Counter())[r.status] += 1
        return {endpoint: dict(counter) for endpoint, counter in result.items()}

    @property
    def total_requests(self) -> int:
        return len(self.records)

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.records)

    def count(self, method: str, route: str, status: int | None = None) -> int:
        """Requests to one endpoint, optionally only those answered with `status`."""
        return sum(
            1 for r in self.records
            if r.method == method and r.route == route and (status is None or r.status == status)
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view (what `GET /_sandbox/requests` returns); status keys become strings."""
        records = self.records
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        statuses: dict[str, Counter[str]] = {}
        for r in records:
            counts[r.endpoint] += 1
            sizes[r.endpoint] += r.bytes
            statuses.setdefault(r.endpoint, Counter())[str(r.status)] += 1
        return {
            "total_requests": len(records),
            "total_bytes": sum(sizes.values()),
            "counts": dict(counts),
            "bytes": dict(sizes),
            "statuses": {endpoint: dict(counter) for endpoint, counter in statuses.items()},
            "records": [asdict(r) for r in records],
        }
