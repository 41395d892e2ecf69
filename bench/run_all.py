"""Run every benchmark, print one table (baselines and ci-runner side by side), write JSON.

    python bench/run_all.py            # full run (see bench/README.md for the expected time)
    python bench/run_all.py --smoke    # tiny sizes, seconds; what tests/integration/test_bench_smoke.py runs
    python bench/run_all.py --only latency,rss --json /tmp/b.json

Progress goes to stderr; the table (markdown) goes to stdout. Absolute numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BASELINE, CI_RUNNER, PYTHON, TOOLS, ToolResult, Workload, clean_environ, measure, quick_start
from bench.metrics import (
    EntrySink, StreamSink, api_requests, common_window, expected_sized, output_read_bytes, percentile, requests_between,
)
from ci_runner.budget import max_in_window

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
METRICS = ("latency", "amplification", "completeness", "requests", "scale", "economy", "pack", "exit", "rss",
           "coldstart", "quickstart")


@dataclass(frozen=True)
class Params:
    """Every size, duration and budget of a run. `full()` is the benchmark, `smoke()` keeps the scripts alive."""

    backend: str = "auto"
    baseline_interval: float = 10.0
    latency_budgets: tuple[int, ...] = (10, 20, 50)
    latency_lines: int = 30
    latency_interval: float = 2.0
    sizes: tuple[int, ...] = (KIB, MIB, 100 * MIB)
    size_budget: int = 50
    idle_seconds: float = 120.0
    requests_entries: tuple[int, ...] = (1, 8)  # row 4: idle runs of this many entries (all running at once)
    requests_budget: int = 0  # row 4: ci-runner's --requests-per-minute (0: its default, 10/min)
    chatty_lines: int = 1200
    chatty_interval: float = 0.1
    scale_entries: tuple[int, ...] = (16, 64)
    scale_quota: int = 10
    scale_lines: int = 5
    scale_interval: float = 1.0
    scale_timeout: float = 1800.0
    economy_entries: tuple[int, ...] = (1, 2, 4, 8, 16, 64)
    economy_quota: int = 10
    economy_latency: float = 0.2
    economy_lines: int = 6
    economy_interval: float = 1.0
    economy_timeout: float = 1800.0  # per tool and entry count: stopped after this ("killed after N s")
    pack_entries: tuple[int, ...] = (8, 64)  # row 5c: the economy workload packed into one job of 2 CPUs
    pack_queue_entries: int = 8  # ... and this many, separate and packed, with each job held pending
    pack_pending_delay: float = 30.0  # seconds (a busy queue)
    exit_repeats: int = 5  # row 6: single-job runs of its own, at exit_quota with exit_latency per request
    exit_quota: int = 10
    exit_latency: float = 0.2
    rss_bytes: int = GIB
    rss_budget: int = 600
    coldstart_repeats: int = 10
    quickstart_repeats: int = 10  # row 9: the README's quick start, each run in a fresh sandbox
    quickstart_quota: int = 10    # what `run --sandbox` enforces (the config's budget, default 10/min)
    quickstart_latency: float = 0.0  # the README's sandbox adds none; a site adds 0.1-2 s
    run_timeout: float = 900.0
    tools: tuple[str, ...] = TOOLS

    @classmethod
    def full(cls) -> Params:
        return cls()

    @classmethod
    def smoke(cls) -> Params:
        return cls(baseline_interval=0.3, latency_budgets=(600,), latency_lines=3, latency_interval=0.1,
                   sizes=(KIB, 64 * KIB), size_budget=600, idle_seconds=1.0, requests_entries=(1, 2), requests_budget=600,
                   chatty_lines=5,
                   chatty_interval=0.1, scale_entries=(2,), scale_quota=600, scale_lines=2, scale_interval=0.1,
                   scale_timeout=60.0, economy_entries=(2,), economy_quota=600, economy_latency=0.0,
                   economy_lines=2, economy_interval=0.1, economy_timeout=60.0, pack_entries=(2,), pack_queue_entries=2,
                   pack_pending_delay=1.0, exit_repeats=1, exit_quota=600,
                   exit_latency=0.0, rss_bytes=2 * MIB, rss_budget=600, coldstart_repeats=1, quickstart_repeats=1,
                   quickstart_quota=600, run_timeout=60.0)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    """Runs the measurements, collects JSON-ready results per metric and tool."""

    params: Params
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    end_to_exit: dict[str, list[float]] = field(default_factory=dict)
    counter: int = 0

    def run(self, tool: str, workload: Workload, **kwargs: Any) -> ToolResult:
        self.counter += 1
        log(f"{tool}: {' '.join(workload.args)} {kwargs.get('entries', 1)} entr(y/ies)")
        sink_factory = kwargs.pop("sink_factory", StreamSink)
        result = measure(tool, self.params.backend, workload, run_dir=f"run{self.counter:03d}-{tool}",
                         timeout=kwargs.pop("timeout", self.params.run_timeout), sink_factory=sink_factory,
                         baseline_interval=self.params.baseline_interval, **kwargs)
        if result.failure():
            log(f"  {tool} did not pass: {result.failure()}")
        self.end_to_exit.setdefault(tool, []).extend(result.end_to_exit())
        return result

    # -- 1. log latency ------------------------------------------------------------------------------
    def latency(self) -> None:
        p = self.params
        workload = Workload(("stamped", str(p.latency_lines), str(p.latency_interval)))
        for tool in p.tools:
            per_budget = {}
            for budget in p.latency_budgets:
                r = self.run(tool, workload, requests_per_minute=budget if tool == "ci-runner" else None,
                             quota_per_minute=budget,
                             sink_factory=lambda: StreamSink(expect_stamped=p.latency_lines))
                values = r.runs[0].sink.latencies()
                per_budget[str(budget)] = {
                    "p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
                    "shown": sum(1 for v in values if math.isfinite(v)) / len(values),
                    "requests": len(api_requests(r.served)), "429": _count_429(r), "failure": r.failure()}
            self.results.setdefault("latency", {})[tool] = per_budget

    # -- 2 + 3. amplification and completeness -------------------------------------------------------
    def amplification(self) -> None:
        p = self.params
        for tool in p.tools:
            per_size = {}
            for size in p.sizes:
                lines, expected_bytes = expected_sized(size, multibyte=True)
                r = self.run(tool, Workload(("sized", str(size), "--multibyte")),
                             requests_per_minute=p.size_budget if tool == "ci-runner" else None,
                             quota_per_minute=p.size_budget,
                             sink_factory=lambda n=lines: StreamSink(expect_sized=n, multibyte=True))
                sink = r.runs[0].sink
                api = api_requests(r.served)
                output = max(r.output_bytes, 1)
                per_size[str(size)] = {
                    "output_bytes": r.output_bytes, "workload_bytes": expected_bytes,
                    "read_amplification": output_read_bytes(api) / output,
                    "api_amplification": sum(x.bytes for x in api) / output,
                    "exactly_once": sink.exactly_once_fraction(), "duplicated": sink.duplicated_fraction(),
                    "corrupt_lines": sink.corrupt_lines, "requests": len(api), "failure": r.failure()}
            self.results.setdefault("amplification", {})[tool] = per_size
            largest = per_size[str(max(p.sizes))]
            self.results.setdefault("completeness", {})[tool] = {
                "size": max(p.sizes), "exactly_once": largest["exactly_once"],
                "duplicated": largest["duplicated"], "corrupt_lines": largest["corrupt_lines"],
                "failure": largest["failure"]}

    def completeness(self) -> None:
        if "completeness" not in self.results:
            self.amplification()

    # -- 4. requests per job-minute -----------------------------------------------------------------
    def requests(self) -> None:
        """Idle jobs (`requests_entries` of them at once, `idle_seconds` each): requests per minute of
        the whole run and while every job sleeps (from the request log); a chatty job: the whole run."""
        p = self.params
        idle = Workload(("idle", str(p.idle_seconds)))
        chatty = Workload(("stamped", str(p.chatty_lines), str(p.chatty_interval)))
        budget = {"requests_per_minute": p.requests_budget or None}
        for tool in p.tools:
            told = budget if tool == "ci-runner" else {}
            per_job = {}
            for entries in p.requests_entries:
                r = self.run(tool, idle, entries=entries, slots=max(2, entries), **told)
                per_job[f"idle-{entries}"] = _rates(r, common_window(r.job_ends, p.idle_seconds))
            per_job["chatty"] = _rates(self.run(tool, chatty, **told), None)
            self.results.setdefault("requests", {})[tool] = per_job

    def _at_quota(self, tool: str, workload: Workload, entries: int, quota: int, **kwargs: Any) -> ToolResult:
        """`tool` on `entries` copies of `workload` against a sandbox quota; ci-runner is told the budget.
        Stopped after `timeout` (default `scale_timeout`)."""
        kwargs.setdefault("timeout", self.params.scale_timeout)
        return self.run(tool, workload, entries=entries, quota_per_minute=quota,
                        requests_per_minute=quota if tool == "ci-runner" else None, **kwargs)

    # -- 5. scale -------------------------------------------------------------------------------------
    def scale(self) -> None:
        p = self.params
        workload = Workload(("stamped", str(p.scale_lines), str(p.scale_interval)))
        for tool in p.tools:
            per_n = {}
            for entries in p.scale_entries:
                r = self._at_quota(tool, workload, entries, p.scale_quota, slots=max(2, entries))
                per_n[str(entries)] = {
                    "wall": r.wall, "finished": not any(x.killed for x in r.runs),
                    "passed": sum(1 for x in r.runs if x.exit_code == 0) if tool != "ci-runner" else int(r.ok),
                    "429": _count_429(r), "requests": len(api_requests(r.served)),
                    "max_60s": max_in_window(x.time for x in api_requests(r.served)),
                    "max_60s_answered": max_in_window(x.time for x in api_requests(r.served) if x.status != 429),
                    "failure": r.failure()}
            self.results.setdefault("scale", {})[tool] = per_n

    # -- 5b. request economy: a matrix at a real quota with a site's latency ------------------------
    def economy(self) -> None:
        """N entries printing a few lines a second apart, at a 10/min quota with 0.2 s per request:
        the first line, line latency, wall time, requests and 429s, against one baseline process per entry."""
        p = self.params
        workload = Workload(("stamped", str(p.economy_lines), str(p.economy_interval)))
        for tool in p.tools:
            per_n = {}
            for entries in p.economy_entries:
                r = self._at_quota(tool, workload, entries, p.economy_quota, latency=p.economy_latency, slots=2,
                                   sink_factory=EntrySink, timeout=p.economy_timeout)
                per_n[str(entries)] = self._economy_figures(tool, r, entries)
            self.results.setdefault("economy", {})[tool] = per_n

    def _economy_figures(self, tool: str, r: ToolResult, entries: int) -> dict[str, Any]:
        p = self.params
        sinks = [run.sink for run in r.runs if isinstance(run.sink, EntrySink)]
        latencies = [v for sink in sinks for v in sink.entry_latencies()]
        first = min((sink.first_line_at_time() for sink in sinks), default=math.inf)
        expected = p.economy_lines * (entries if tool == "ci-runner" else 1)
        return {
            "first_line": first - r.started, "p50": percentile(latencies, 0.5),
            "max": max(latencies, default=math.inf), "wall": r.wall,
            "requests": len(api_requests(r.served)), "429": _count_429(r),
            "exactly_once": all(sink.exactly_once(expected) for sink in sinks) and len(sinks) == len(r.runs),
            "delivered": sum(len(sink.seen) for sink in sinks) / (p.economy_lines * entries),
            "finished": not any(run.killed for run in r.runs), "timeout": p.economy_timeout,
            "failure": r.failure()}

    # -- 5c. pack mode: the economy workload as the steps of one job --------------------------------
    def pack(self) -> None:
        """Row 5b's workload packed into one job of 2 CPUs (ci-runner only: the baselines have no such
        thing), at the same quota and latency; then `pack_queue_entries` entries separate and packed
        with every job held `pack_pending_delay` s in the queue: what the queue waits cost."""
        p = self.params
        workload = Workload(("stamped", str(p.economy_lines), str(p.economy_interval)))
        if "ci-runner" not in p.tools:
            return
        per_n: dict[str, Any] = {}
        for entries in p.pack_entries:
            r = self._at_quota("ci-runner", workload, entries, p.economy_quota, latency=p.economy_latency, slots=2,
                               sink_factory=EntrySink, timeout=p.economy_timeout, pack=2)
            per_n[str(entries)] = self._economy_figures("ci-runner", r, entries)
        for label, pack in (("separate", 0), ("packed", 2)):
            r = self._at_quota("ci-runner", workload, p.pack_queue_entries, p.economy_quota, latency=p.economy_latency,
                               slots=2, sink_factory=EntrySink, timeout=p.economy_timeout, pack=pack,
                               pending_delay=p.pack_pending_delay)
            per_n[f"queued-{label}"] = {**self._economy_figures("ci-runner", r, p.pack_queue_entries),
                                        "entries": p.pack_queue_entries, "pending_delay": p.pack_pending_delay}
        self.results.setdefault("pack", {})["ci-runner"] = per_n

    # -- 6. job end -> exit (from every single-job run above) ----------------------------------------
    def exit(self) -> None:
        """`exit_repeats` single-job runs of its own (3 stamped lines) at `exit_quota` with `exit_latency`
        per request (ci-runner told the budget), beside every single-job run of the rows before it."""
        p = self.params
        earlier = {tool: list(values) for tool, values in self.end_to_exit.items()}
        workload = Workload(("stamped", "3", str(p.latency_interval)))
        for tool in p.tools:
            values, failures = [], []
            for _ in range(p.exit_repeats):
                r = self.run(tool, workload, quota_per_minute=p.exit_quota, latency=p.exit_latency,
                             requests_per_minute=p.exit_quota if tool == "ci-runner" else None)
                values += r.end_to_exit()
                failures += [r.failure()] if r.failure() else []
            self.results.setdefault("exit", {})[tool] = {
                **_spread(values), "values": [round(v, 3) for v in values], "quota": p.exit_quota,
                "latency": p.exit_latency,
                "other_rows": _spread(earlier.get(tool, [])), "failure": failures[0] if failures else ""}

    # -- 7. peak RSS while streaming -----------------------------------------------------------------
    def rss(self) -> None:
        p = self.params
        for tool in p.tools:
            r = self.run(tool, Workload(("sized", str(p.rss_bytes))), sink_factory=lambda: StreamSink(analyse=False),
                         requests_per_minute=p.rss_budget if tool == "ci-runner" else None)
            run = r.runs[0]
            samples = [kib for _, kib in run.rss_samples]
            self.results.setdefault("rss", {})[tool] = {
                "peak_mb": run.max_rss_kib / 1024, "first_mb": samples[0] / 1024 if samples else math.nan,
                "last_mb": samples[-1] / 1024 if samples else math.nan, "stdout_bytes": run.sink.stdout_bytes,
                "output_bytes": r.output_bytes, "wall": r.wall, "failure": r.failure()}

    # -- 8. cold start --------------------------------------------------------------------------------
    def coldstart(self) -> None:
        p = self.params
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"ci-runner-bench-cold-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        (work / ".ci-runner.yml").write_text("version: 1\nsystem: local\nsbatch:\n  partition: debug\n"
                                             "script: |\n  echo hello\n", encoding="utf-8")
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "bench"]):
            subprocess.run([*git, *args], cwd=work, check=True, capture_output=True, timeout=30)
        commands = {
            "ci-runner": {"help": [str(CI_RUNNER), "--help"], "render": [str(CI_RUNNER), "render"]},
            "baseline": {"help": [PYTHON, str(BASELINE), "--help"]},
        }
        timings: dict[str, dict[str, Any]] = {}
        for tool, named in commands.items():
            for name, argv in named.items():
                times = []
                subprocess.run(argv, cwd=work, env=clean_environ({}), capture_output=True, timeout=60)  # warm caches
                for _ in range(p.coldstart_repeats):
                    start = time.perf_counter()
                    done = subprocess.run(argv, cwd=work, env=clean_environ({}), capture_output=True, timeout=60)
                    times.append(time.perf_counter() - start)
                timings.setdefault(tool, {})[name] = {"median": statistics.median(times), "min": min(times),
                                                      "exit": done.returncode}
        subprocess.run(["rm", "-rf", str(work)], check=False, timeout=60)
        self.results["coldstart"] = {"ci-runner": timings["ci-runner"], "baseline-head": timings["baseline"],
                                     "baseline-tail": timings["baseline"]}

    # -- 9. the README's quick start ------------------------------------------------------------------
    def quickstart(self) -> None:
        """`quickstart_repeats` runs of the README's example (packed, artifacts, JUnit), each against a
        fresh sandbox at `quickstart_quota` with `quickstart_latency` per request: wall times, requests,
        429s, and how many runs stayed within the quota's first minute (ci-runner only)."""
        p = self.params
        if "ci-runner" not in p.tools:
            return
        runs = []
        for _ in range(p.quickstart_repeats):
            log(f"ci-runner: the quick start ({len(runs) + 1} of {p.quickstart_repeats})")
            runs.append(quick_start(p.backend, p.quickstart_quota, p.quickstart_latency, p.run_timeout))
        walls = [r.wall for r in runs]
        requests = [len(api_requests(r.served)) for r in runs]
        failures = [r.failure() for r in runs if r.failure()]
        self.results["quickstart"] = {"ci-runner": {
            **_spread(walls), "under_a_minute": sum(1 for w in walls if w < 60.0), "walls": walls,
            "requests": requests, "429": sum(_count_429(r) for r in runs), "quota": p.quickstart_quota,
            "latency": p.quickstart_latency, "failure": failures[0] if failures else ""}}


def _count_429(result: ToolResult) -> int:
    return sum(1 for r in result.served if r.status == 429)


def _spread(values: list[float]) -> dict[str, Any]:
    return {"p50": statistics.median(values) if values else math.nan,
            "max": max(values) if values else math.nan, "n": len(values)}


def _rates(result: ToolResult, window: tuple[float, float] | None) -> dict[str, Any]:
    """Requests per minute of the whole run (first process start to last exit) and, with a `window`
    (every job idle), inside it; the token endpoint is not counted."""
    api = api_requests(result.served)
    rates: dict[str, Any] = {"requests": len(api), "wall": result.wall, "per_minute": len(api) / (result.wall / 60),
                             "failure": result.failure()}
    if window is not None:
        start, end = window
        inside = requests_between(result.served, start, end)
        rates.update(idle_requests=inside, idle_seconds=end - start, idle_per_minute=inside / ((end - start) / 60))
    return rates


def _idle_rate(d: dict[str, Any]) -> float:
    """The rate a target is about: while idle when measured, else the whole run's."""
    return d.get("idle_per_minute", d["per_minute"])


# --- table ------------------------------------------------------------------------------------------

def _s(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "never"
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"


def _size(n: int) -> str:
    for unit, div in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f} %"


def _failed(d: dict[str, Any]) -> str:
    return " ⚠" if d.get("failure") else ""


def cells(metric: str, data: dict[str, Any]) -> str:
    """One table cell: the metric's numbers for one tool."""
    if "error" in data:
        return f"error: {data['error'][:80]}"
    if metric == "latency":
        return "; ".join(f"{b}/min: p50 {_s(d['p50'])}, p95 {_s(d['p95'])}{_failed(d)}" for b, d in data.items())
    if metric == "amplification":
        reads = " · ".join(f"{_size(int(s))} {d['read_amplification']:.3g}{_failed(d)}" for s, d in data.items())
        api = " · ".join(f"{d['api_amplification']:.3g}" for d in data.values())
        return f"reads {reads} (all API: {api})"
    if metric == "completeness":
        dup = f", {_pct(data['duplicated'])} repeated" if data["duplicated"] else ""
        return f"{_pct(data['exactly_once'])} of {_size(data['size'])}{dup}{_failed(data)}"
    if metric == "requests":
        parts = []
        for kind, d in data.items():
            if kind.startswith("idle-"):
                idle = f"{d['idle_per_minute']:.1f}/min idle" if "idle_per_minute" in d else "idle n/a"
                parts.append(f"idle ×{kind[5:]}: {idle}, {d['per_minute']:.1f}/min run{_failed(d)}")
            else:
                parts.append(f"{kind} {d['per_minute']:.1f}/min{_failed(d)}")
        return " · ".join(parts)
    if metric == "scale":
        parts = []
        for n, d in data.items():
            wall = _s(d["wall"]) if d["finished"] else f"> {_s(d['wall'])} (killed)"
            parts.append(f"{n}: {wall}, {d['429']}×429, max {d['max_60s']}/60 s{_failed(d)}")
        return "; ".join(parts)
    if metric == "economy":
        parts = []
        for n, d in data.items():
            killed = "" if d.get("finished", True) else \
                f"killed after {d['timeout']:.0f} s with {_pct(d['delivered'])} of the lines, "
            parts.append(f"{n}: {killed}first {_s(d['first_line'])}, p50 {_s(d['p50'])}, max {_s(d['max'])}, "
                         f"wall {_s(d['wall'])}, {d['requests']} req, {d['429']}×429"
                         + ("" if d["exactly_once"] else ", NOT exactly once") + _failed(d))
        return "; ".join(parts)
    if metric == "pack":
        parts = []
        for n, d in data.items():
            what = (f"{d['entries']} {n.removeprefix('queued-')}, each job pending {d['pending_delay']:g} s"
                    if n.startswith("queued-") else f"{n}")
            parts.append(f"{what}: first {_s(d['first_line'])}, wall {_s(d['wall'])}, {d['requests']} req, "
                         f"{d['429']}×429" + ("" if d["exactly_once"] else ", NOT exactly once") + _failed(d))
        return "; ".join(parts)
    if metric == "exit":
        cell = (f"{data['quota']}/min + {data['latency']:g} s: p50 {_s(data['p50'])}, max {_s(data['max'])} "
                f"(n={data['n']}){_failed(data)}")
        other = data["other_rows"]
        return cell + (f"; other rows' single-job runs: p50 {_s(other['p50'])}, max {_s(other['max'])} (n={other['n']})"
                       if other["n"] else "")
    if metric == "rss":
        printed = f"{data['stdout_bytes'] / MIB:.3g} of {data['output_bytes'] / MIB:.0f} MiB printed"
        return f"peak {data['peak_mb']:.0f} MB (last {data['last_mb']:.0f} MB), {printed}{_failed(data)}"
    if metric == "coldstart":
        return " · ".join(f"{k} {_s(d['median'])}" for k, d in data.items())
    if metric == "quickstart":
        return (f"{data['quota']}/min + {data['latency']:g} s: {data['under_a_minute']} of {data['n']} under a minute, "
                f"wall p50 {_s(data['p50'])}, max {_s(data['max'])}, {min(data['requests'])}-{max(data['requests'])} "
                f"req, {data['429']}×429{_failed(data)}")
    return json.dumps(data)


TITLES = {
    "latency": "1 log latency (write → stdout)",
    "amplification": "2 transfer amplification (bytes served / output bytes)",
    "completeness": "3 completeness (bytes printed exactly once)",
    "requests": "4 API requests per minute (idle job × entries: while idle, whole run · chatty job)",
    "scale": "5 scale at the quota (entries: wall, 429s, max req in 60 s)",
    "economy": "5b economy at 10/min + 0.2 s (entries: first line, line p50 and max, wall, requests)",
    "pack": "5c pack mode at 10/min + 0.2 s (entries in one job of 2 CPUs: first line, wall, requests)",
    "exit": "6 job end → process exit",
    "rss": "7 peak RSS while streaming",
    "coldstart": "8 cold start",
    "quickstart": "9 README quick start (runs under a minute, wall, requests)",
}
TARGETS = {
    "latency": "p50 ≤ 3 s at 20/min",
    "amplification": "≤ 1.05",
    "completeness": "100 %",
    "requests": "idle ≤ 3/min (1 and 8 entries)",
    "scale": "0 × 429 at 64 entries, 10/min",
    "economy": "1: first ≤ 5 s, wall ≤ 12 s; 4: ≤ 10 s, ≤ 70 s; 8: ≤ 20 s, ≤ 100 s, ≤ 22 req; 64: ≤ 120 req; "
               "all: 0×429, exactly once",
    "pack": "8: first ≤ 10 s, wall ≤ 45 s; 64: ≤ 60 req; all: 0×429, exactly once",
    "exit": "p50 ≤ 2 s",
    "rss": "≤ 100 MB, flat",
    "coldstart": "--help ≤ 0.3 s",
    "quickstart": "every run under a minute at 10/min",
}


# Issue 12's economy targets per entry count (seconds, requests); every counted entry also needs 0×429,
# every line exactly once, and a run that finished.
ECONOMY_TARGETS: dict[str, dict[str, float]] = {
    "1": {"first_line": 5, "wall": 12}, "4": {"first_line": 10, "wall": 70},
    "8": {"first_line": 20, "wall": 100, "requests": 22}, "64": {"requests": 120}}


def economy_verdict(d: dict[str, Any]) -> str:
    """'met', 'MISSED (8: wall, requests)' or 'n/a' (no entry count with a target was run)."""
    missed = []
    for n, limits in ECONOMY_TARGETS.items():
        if n not in d:
            continue
        e = d[n]
        names = [name.replace("_", " ") for name, limit in limits.items() if e[name] > limit]
        names += ["429s"] if e["429"] else []
        names += ["not exactly once"] if not e["exactly_once"] else []
        names += ["killed"] if not e.get("finished", True) else []
        if names:
            missed.append(f"{n}: {', '.join(names)}")
    if not any(n in d for n in ECONOMY_TARGETS):
        return "n/a"
    return f"MISSED ({'; '.join(missed)})" if missed else "met"


def verdict(metric: str, d: dict[str, Any]) -> str:
    """'met' / 'MISSED' / 'n/a' for ci-runner's numbers against the issue's target."""
    if not d or "error" in d:
        return "n/a"
    try:
        if metric == "latency":
            ok = d["20"]["p50"] <= 3.0
        elif metric == "amplification":
            ok = all(x["read_amplification"] <= 1.05 and not x["failure"] for x in d.values())
        elif metric == "completeness":
            ok = d["exactly_once"] == 1.0
        elif metric == "requests":
            idle = [x for kind, x in d.items() if kind.startswith("idle-")]
            ok = bool(idle) and all(_idle_rate(x) <= 3.0 for x in idle)
        elif metric == "scale":
            ok = d["64"]["429"] == 0 and d["64"]["finished"]
        elif metric == "economy":
            return economy_verdict(d)
        elif metric == "pack":
            runs = [x for n, x in d.items()]
            ok = (all(x["429"] == 0 and x["exactly_once"] and x.get("finished", True) for x in runs)
                  and ("8" not in d or (d["8"]["first_line"] <= 10 and d["8"]["wall"] <= 45))
                  and ("64" not in d or d["64"]["requests"] <= 60))
        elif metric == "exit":
            ok = (d if d["n"] else d["other_rows"])["p50"] <= 2.0
        elif metric == "rss":
            ok = d["peak_mb"] <= 100 and not d["failure"] and d["stdout_bytes"] >= d["output_bytes"]
        elif metric == "coldstart":
            ok = d["help"]["median"] <= 0.3
        elif metric == "quickstart":
            ok = d["under_a_minute"] == d["n"] and not d["429"] and not d["failure"]
        else:
            return "n/a"
    except (KeyError, TypeError):
        return "n/a"
    return "met" if ok else "MISSED"


def headline(metric: str, results: dict[str, Any]) -> str:
    """ci-runner relative to baseline-head (the live-printing baseline): the number users feel."""
    try:
        base, ours = results["baseline-head"], results["ci-runner"]
        if metric == "latency":
            pairs = [(base[b]["p50"], ours[b]["p50"]) for b in ours]
            return " · ".join(f"{b}/min {_ratio(x, y)}" for b, (x, y) in zip(ours, pairs))
        if metric == "amplification":
            return " · ".join(f"{_size(int(s))} {_ratio(ours[s]['read_amplification'], base[s]['read_amplification'], 'x')}"
                              for s in ours)
        if metric == "completeness":
            return f"{_pct(ours['exactly_once'])} vs {_pct(base['exactly_once'])}"
        if metric == "requests":
            return " · ".join(f"{k} {_ratio(_idle_rate(ours[k]), _idle_rate(base[k]), 'x')}" for k in ours)
        if metric == "scale":
            return " · ".join(f"{n}: wall {_ratio(base[n]['wall'], ours[n]['wall'])}" + ("" if base[n]["finished"] else " (baseline killed)")
                              for n in ours)
        if metric == "economy":
            return " · ".join(f"{n}: first line {_ratio(base[n]['first_line'], ours[n]['first_line'])}, "
                              f"wall {_ratio(base[n]['wall'], ours[n]['wall'])}" for n in ours)
        if metric == "exit":
            return _ratio(base["p50"], ours["p50"])
        if metric == "rss":
            return _ratio(ours["peak_mb"], base["peak_mb"], "x")
        if metric == "coldstart":
            return f"--help {_ratio(base['help']['median'], ours['help']['median'])}"
    except (KeyError, TypeError, ZeroDivisionError):
        return "n/a"
    return "n/a"


def _ratio(numerator: float, denominator: float, style: str = "faster") -> str:
    """style 'faster': baseline/ours as 'N× faster'; 'x': ours/baseline as 'N×'."""
    if any(math.isnan(v) for v in (numerator, denominator)):
        return "n/a"
    if denominator == 0:
        return "∞" if numerator else "1×"
    ratio = numerator / denominator
    if math.isinf(ratio):
        return "∞" + (" faster" if style == "faster" else "")
    if style != "faster":
        return f"{ratio:.2g}×"
    return f"{ratio:.2g}× faster" if ratio >= 1 else f"{1 / ratio:.2g}× slower"


def table(results: dict[str, dict[str, Any]], metrics: tuple[str, ...]) -> str:
    header = ("metric", "baseline-head (100 lines/10 s)", "baseline-tail (1000 lines at end)", "ci-runner",
              "ci-runner vs baseline-head", "target", "ci-runner meets")
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metrics:
        data = results.get(metric, {})
        row = [TITLES[metric]] + [cells(metric, data[t]) if t in data else "not run" for t in TOOLS]
        row += [headline(metric, data), TARGETS[metric], verdict(metric, data.get("ci-runner", {}))]
        rows.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and durations (seconds)")
    parser.add_argument("--only", default=",".join(METRICS), help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--backend", choices=["auto", "slurm", "local"], default="auto")
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "latest.json")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter, e.g. --set sizes=1024,1048576 --set idle_seconds=60")
    args = parser.parse_args(argv)
    params = replace(Params.smoke() if args.smoke else Params.full(), backend=args.backend)
    params = _override(params, args.set)
    metrics = tuple(m for m in METRICS if m in args.only.split(","))
    bench = Bench(params)
    started = time.time()
    for metric in metrics:
        if metric in bench.results:
            continue
        log(f"== {metric}")
        try:
            getattr(bench, metric)()
        except Exception as error:  # noqa: BLE001 - one broken metric must not hide the others' rows
            traceback.print_exc()
            bench.results[metric] = {t: {"error": f"{type(error).__name__}: {error}"} for t in TOOLS}
    rendered = table(bench.results, metrics)
    print(rendered, flush=True)
    document = {"params": asdict(params), "smoke": args.smoke, "started": started, "seconds": time.time() - started,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
                "results": bench.results, "table": rendered}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_finite(document), indent=1, default=str, allow_nan=False) + "\n",
                         encoding="utf-8")
    log(f"wrote {args.json} after {time.time() - started:.0f} s")
    return 0


def _finite(value: object) -> object:
    """Strict JSON: a line never shown (inf) becomes "inf", an undefined number (nan) null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _override(params: Params, assignments: list[str]) -> Params:
    changes: dict[str, Any] = {}
    for text in assignments:
        name, _, raw = text.partition("=")
        current = getattr(params, name)
        if isinstance(current, tuple):
            kind = type(current[0]) if current else str
            changes[name] = tuple(kind(v) for v in raw.split(",") if v)
        else:
            changes[name] = type(current)(raw)
    return replace(params, **changes)


if __name__ == "__main__":
    sys.exit(main())
