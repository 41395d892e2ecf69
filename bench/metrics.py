"""Pure measurements over what a tool printed (with receive times) and what the sandbox served.

Sinks receive every stdout line of a tool with the time the benchmark process read it; they keep
only what their metric needs (a 1 GiB stream is never held in memory).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bench.lines import END_RE, LINE_RE, line_bytes, sized_line, sized_lines

JOB_ID_RE = re.compile(r"\b[Jj]ob (\d+)\b")
# Endpoints that return job output (the numerator of "output-read" amplification).
OUTPUT_ENDPOINT_PARTS = ("/ops/head", "/ops/tail", "/ops/view", "/ops/download")
TOKEN_ROUTE_PART = "/auth/token"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of `values`; inf counts as a value (a line never shown); nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass
class StreamSink:
    """Everything one tool run printed, reduced on the fly.

    expect_stamped: number of stamped lines the job writes (latency); expect_sized / multibyte:
    the sized output the job writes (completeness). Job ids come from lines like "submitted job 42".
    """

    expect_stamped: int = 0
    expect_sized: int = 0
    multibyte: bool = False
    analyse: bool = True
    stdout_bytes: int = 0
    lines: int = 0
    job_ids: set[str] = field(default_factory=set)
    first_seen: dict[int, float] = field(default_factory=dict)
    written: dict[int, float] = field(default_factory=dict)
    sized_counts: bytearray = field(default_factory=bytearray)
    corrupt_lines: int = 0
    first_line_at: float | None = None
    tail: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sized_counts = bytearray(self.expect_sized)

    def feed(self, received: float, raw: bytes) -> None:
        self.stdout_bytes += len(raw)
        self.lines += 1
        if not self.analyse:
            return
        line = raw.decode("utf-8", errors="replace")
        if len(self.tail) >= 40:
            del self.tail[:20]
        self.tail.append(line.rstrip("\n")[:300])
        match = LINE_RE.search(line)
        if match is None:
            job = JOB_ID_RE.search(line)
            if job and END_RE.search(line) is None:
                self.job_ids.add(job.group(1))
            return
        seq, payload = int(match.group(1)), match.group(2)
        if payload.startswith("t="):
            self.first_seen.setdefault(seq, received)
            self.written.setdefault(seq, float(payload[2:]))
        elif seq < self.expect_sized:
            if match.group(0) + "\n" == sized_line(seq, self.multibyte):
                self.sized_counts[seq] = min(255, self.sized_counts[seq] + 1)
            else:
                self.corrupt_lines += 1

    # -- results ---------------------------------------------------------------------------------

    def latencies(self) -> list[float]:
        """Seconds from write to first appearance for every expected stamped line; inf when never shown."""
        result = []
        for seq in range(self.expect_stamped):
            if seq in self.first_seen and seq in self.written:
                result.append(max(0.0, self.first_seen[seq] - self.written[seq]))
            else:
                result.append(math.inf)
        return result

    def exactly_once_fraction(self) -> float:
        """Fraction of the sized output's bytes printed exactly once and intact (all lines are equally long)."""
        if not self.expect_sized:
            return math.nan
        return sum(1 for c in self.sized_counts if c == 1) / self.expect_sized

    def duplicated_fraction(self) -> float:
        if not self.expect_sized:
            return math.nan
        return sum(1 for c in self.sized_counts if c > 1) / self.expect_sized


@dataclass
class EntrySink(StreamSink):
    """A StreamSink for several entries in one stream: stamped lines are told apart by what precedes
    the marker (ci-runner's `[entry] ` prefix), so each (entry, line) counts on its own."""

    seen: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    written_at: dict[tuple[str, int], float] = field(default_factory=dict)

    def feed(self, received: float, raw: bytes) -> None:
        super().feed(received, raw)
        line = raw.decode("utf-8", errors="replace")
        match = LINE_RE.search(line)
        if match is None or not match.group(2).startswith("t="):
            return
        key = (line[:match.start()], int(match.group(1)))
        self.seen.setdefault(key, []).append(received)
        self.written_at.setdefault(key, float(match.group(2)[2:]))

    def entry_latencies(self) -> list[float]:
        return [max(0.0, times[0] - self.written_at[key]) for key, times in self.seen.items()]

    def first_line_at_time(self) -> float:
        return min((times[0] for times in self.seen.values()), default=math.inf)

    def exactly_once(self, expected_lines: int) -> bool:
        return len(self.seen) == expected_lines and all(len(times) == 1 for times in self.seen.values())


def expected_sized(total_bytes: int, multibyte: bool) -> tuple[int, int]:
    """(lines, bytes) of a sized workload of `total_bytes`."""
    count = sized_lines(total_bytes, multibyte)
    return count, count * line_bytes(multibyte)


@dataclass(frozen=True)
class Served:
    """One request as the sandbox logged it (a copy of `RequestRecord`'s fields we use)."""

    time: float
    route: str
    status: int
    bytes: int


def api_requests(records: Iterable[Served]) -> list[Served]:
    """FirecREST API requests: everything except the OAuth token endpoint."""
    return [r for r in records if TOKEN_ROUTE_PART not in r.route]


def output_read_bytes(records: Iterable[Served]) -> int:
    return sum(r.bytes for r in records if any(part in r.route for part in OUTPUT_ENDPOINT_PARTS))


def requests_between(records: Iterable[Served], start: float, end: float) -> int:
    """FirecREST requests (token endpoint excluded) that arrived in [start, end]."""
    return sum(1 for r in api_requests(records) if start <= r.time <= end)


def common_window(job_ends: Sequence[float], seconds: float) -> tuple[float, float] | None:
    """The stretch when every job of a run was inside its idle sleep: jobs that sleep `seconds` and
    then write their end line at `job_ends` sleep over [end - seconds, end]; from the latest such
    start to the earliest end. None without jobs or when the sleeps did not overlap."""
    if not job_ends:
        return None
    start, end = max(job_ends) - seconds, min(job_ends)
    return (start, end) if end > start else None


def end_time(tail: bytes) -> float | None:
    """The job's last-write time from the `<END|t=...>` line near the end of an output file."""
    found = END_RE.findall(tail.decode("utf-8", errors="replace"))
    return float(found[-1]) if found else None
