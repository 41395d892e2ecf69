"""`ci-runner run` processes against a faulty `ci-runner sandbox` process on real Slurm.

One scenario per fault, plus a storm of all of them. For each: the output the runner printed for the
entry equals the job's output file byte for byte (nothing lost, nothing twice), the exit code follows
the job (0, or 1 for a failing test: a fault must never turn into a test failure or the other way
round), exactly one Slurm job was submitted, the request budget held (sandbox request log: at most
`BUDGET` API requests in any 60 s window) and no traceback. When the API stays down the runner gives
up with exit 3 and one clear line.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers.reliability_harness import (
    ACTIVE,
    SandboxProcess,
    api_request_times,
    finish,
    job_script_lines,
    run_env,
    scancel_named,
    slurm_jobs_named,
    slurm_state,
    start_run,
    streamed_output,
    submitted_jobs,
    write_config,
)
from helpers.waiting import wait_until

from ci_runner.budget import max_in_window
from ci_runner.job_spec import job_name

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BUDGET = 30          # --requests-per-minute of every run
LINES, DELAY = 30, 0.2
RUN_TIMEOUT = 150.0


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: tuple[str, ...]
    job_exit: int = 0
    expected: int = 0
    restart: bool = False    # crash the sandbox while the job runs, start it again after `outage` s
    outage: float = 4.0
    note: str = ""
    evidence: Callable[[list[dict[str, Any]]], bool] = lambda records: True  # the fault really happened


def statuses(*codes: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda records: any(r["status"] in codes for r in records)


def is_job_list(record: dict[str, Any]) -> bool:
    return record["method"] == "GET" and record["route"].endswith("/jobs")


def job_not_found(records: list[dict[str, Any]], window: float = 6.0) -> bool:
    """The runner asked for its job while the sandbox still hid it (inside the window after the
    submit): a 404 for the job itself, or a job list sent then (it lists every job but that one)."""
    submits = [r["time"] for r in records if r["method"] == "POST" and r["route"].endswith("/jobs")
               and r["status"] == 201]
    return any(r["status"] == 404 and r["route"].endswith("/jobs/{job_id}") for r in records) or any(
        is_job_list(r) and 0 <= r["time"] - submitted < window for r in records for submitted in submits)


def tokens_fetched(records: list[dict[str, Any]]) -> bool:
    return sum(r["route"] == "/auth/token" for r in records) >= 3


SCENARIOS = [
    Scenario("baseline", ()),
    Scenario("5xx-20pct", ("--error-rate", "0.2", "--seed", "11"), job_exit=3, expected=1,
             note="job exits 3: still a test failure", evidence=statuses(500, 502, 503)),
    Scenario("429-bursts", ("--burst-every", "4", "--burst-length", "3", "--retry-after", "2"),
             evidence=statuses(429)),
    Scenario("token-expiry", ("--fault-token-ttl", "35"), note="tokens usable 5 s (server refuses < 30 s left)",
             evidence=tokens_fetched),
    Scenario("dropped-connections", ("--drop-rate", "0.15", "--seed", "5"), evidence=statuses(0)),
    Scenario("job-not-found-10s", ("--not-found-window", "10"), evidence=job_not_found),
    # longer than a request's retries used to last (6 attempts, under 16 s): now api_retry_limit (2 min) bounds them
    Scenario("server-restart", (), restart=True, outage=20.0, note="SIGKILL mid-job, back after 20 s"),
    Scenario("slow-5s", ("--latency", "5")),
    # storm: tokens of 40 s are renewed on every request (the client wants 60 s left), so about half of the
    # answered requests are token fetches and each server incarnation answers only a handful of API calls;
    # the evidence asks for 5xx plus at least one other fault (each fault alone has its own scenario).
    Scenario("storm", ("--error-rate", "0.25", "--seed", "23", "--burst-every", "3", "--burst-length", "2",
                       "--drop-rate", "0.05", "--not-found-window", "6", "--fault-token-ttl", "40",
                       "--latency", "0.5"), restart=True, job_exit=1, expected=1,
             evidence=lambda records: statuses(500, 502, 503)(records) and (
                 statuses(429, 0)(records) or job_not_found(records))),
]


def run_id_for(name: str) -> str:
    return f"rel{abs(hash((name, time.time()))) % 10**9}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fault(scenario: Scenario, tmp_path: Path, sandbox_factory: Callable[..., SandboxProcess],
               record_scenario: Callable[..., None]) -> None:
    sandbox = sandbox_factory(scenario.faults)
    repo = tmp_path / "repo"
    write_config(repo, job_script_lines(LINES, DELAY, scenario.job_exit))
    run_id = run_id_for(scenario.name)
    name = job_name(f"gh-{run_id}-1")
    record_scenario(expected=scenario.expected, budget=BUDGET, note=scenario.note)
    process = start_run(repo, run_env(sandbox, run_id), ["--requests-per-minute", str(BUDGET)])
    try:
        if scenario.restart:
            job = wait_until(lambda: [j for j in slurm_jobs_named(name) if j.get("JobState") == "RUNNING"], 60,
                             "the job to run", interval=0.1)[0]
            # ... and the runner follows it: a crash right after the submit would leave the first server
            # (the one that knows the submit, hence the job-not-found window) without a job request.
            wait_until(lambda: any(is_job_list(r) for r in sandbox.requests()), 60,
                       "the runner to ask for the job's state", interval=0.1)
            sandbox.crash()
            time.sleep(scenario.outage)  # the outage itself (not a wait for a condition)
            assert slurm_state(job["JobId"]) in ACTIVE | {"COMPLETED", "FAILED"}, "the job must outlive the server"
            sandbox.start()
        result = finish(process, RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
        scancel_named(name)
    records = sandbox.requests()
    busiest = max_in_window(api_request_times(records))
    jobs = submitted_jobs(result.stdout + result.stderr)
    streamed = streamed_output(result.stdout)
    injected = sum(r["status"] in (0, 401, 404, 429) or r["status"] >= 500 for r in records)
    record_scenario(exit=result.returncode, bytes=len(streamed.encode()), faults=injected,
                    **{"max req/60s": busiest})

    assert "Traceback" not in result.output, result.output[-4000:]
    assert sandbox.secret not in result.unmasked
    assert result.returncode == scenario.expected, result.output[-4000:]
    assert len({job_id for job_id, _ in jobs}) == 1, f"submitted: {jobs}\n{result.output[-3000:]}"
    assert len(slurm_jobs_named(name)) == 1, "a retried submit created a second Slurm job"
    job_id, remote_dir = jobs[0]
    expected = Path(remote_dir).parent.joinpath("output", f"default.{job_id}.out").read_bytes()
    # LINES of the job body, then the job script's own last line ("ci-runner: job script exited with status N")
    assert expected.count(b"\n") == LINES + 1, "the job itself did not run as planned"
    assert b"ci-runner: job script exited with status " in expected.splitlines()[-1]
    assert streamed.encode("utf-8") == expected, (
        f"streamed {len(streamed.encode())} bytes, the job wrote {len(expected)}:\n{streamed[-1500:]}")
    assert busiest <= BUDGET, f"{busiest} API requests within 60 s, budget {BUDGET}"
    assert scenario.evidence(records), (
        "the injected fault never happened: the scenario proves nothing; statuses seen: "
        f"{sorted(Counter(r['status'] for r in records).items())}")
    if scenario.restart:
        assert sandbox.logs and len(records) > len(sandbox.logs), "no requests before and after the restart"


def test_gives_up_with_infrastructure_exit_code(tmp_path: Path, sandbox_factory: Callable[..., SandboxProcess],
                                                record_scenario: Callable[..., None]) -> None:
    """The API goes away for good after the submit: after api_retry_limit, exit 3 (not 1) with one clear
    line naming the limit, no traceback. (The runner spends the limit three times: following the job,
    one more look at its state, the cancel; 5 s keeps that at about 15 s, 15 s made it 45.)"""
    sandbox = sandbox_factory(())
    repo = tmp_path / "repo"
    write_config(repo, job_script_lines(200, 0.5), extra="api_retry_limit: 5s\n")
    run_id = run_id_for("gives-up")
    name = job_name(f"gh-{run_id}-1")
    record_scenario(expected=3, budget=BUDGET, note="server killed for good mid-job")
    process = start_run(repo, run_env(sandbox, run_id), ["--requests-per-minute", str(BUDGET)])
    try:
        wait_until(lambda: [j for j in slurm_jobs_named(name) if j.get("JobState") == "RUNNING"], 60, "the job to run",
                   interval=0.1)
        sandbox.crash()
        result = finish(process, RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
        scancel_named(name)
    busiest = max_in_window(api_request_times(sandbox.requests()))
    record_scenario(exit=result.returncode, **{"max req/60s": busiest})
    assert "Traceback" not in result.output, result.output[-3000:]
    assert result.returncode == 3, result.output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ci-runner: error")]
    last_words = "\n".join(result.output.splitlines()[-15:])
    assert sandbox.url in result.output or "gave up" in result.output, last_words
    assert "gave up" in last_words or errors, last_words
    assert "api_retry_limit is 5 s" in last_words, last_words
    assert busiest <= BUDGET
