"""The follower's decisions (ci_runner/poller.py): alone, and driving whole runs on a simulated cluster.

The first tests feed a `Follower` answers and clock values. The others run `runner.run` on simulated
time (tests/helpers/virtual_time.py) against `FakeCluster` (tests/helpers/fake_cluster.py) with the real RunObserver,
OutputReader and RequestBudget: minutes of a job take milliseconds, with no server and no sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers.fake_cluster import FakeCluster, FakeJob
from helpers.virtual_time import VirtualTimeLoop, run_simulated

from ci_runner import runner
from ci_runner.run_context import RunOptions
from ci_runner.budget import max_in_window
from ci_runner.api import JobStatus
from ci_runner.layout import entry_layout
from ci_runner.matrix import Entry
from ci_runner.poller import (
    END_CHECKS_AT,
    PENDING_POLL_MAX,
    Ask,
    Clock,
    Ending,
    Finish,
    FollowLimits,
    Follower,
    Next,
    PollInterval,
    RunPace,
    Started,
    Waiting,
)
from ci_runner.job_spec import JOB_END_LINE, JobSpec, job_name
from ci_runner.reporters.result import EntryResult
from ci_runner.statefile import EntryState, RunState, StateFile
from ci_runner.slurm_states import Outcome

WORKDIR = "/scratch/ci"
RUN_ID = "run-1"
OUT = f"{WORKDIR}/{RUN_ID}/output"
T0 = 1000.0  # the simulated clock at the start of a run


def status(state: str, reason: str | None = None, start: float | None = None) -> JobStatus:
    return JobStatus("7", state, reason, 0 if state == "COMPLETED" else None, None, start, None, None)


def follower(now: float = 0.0, rpm: float = 600, **limits: Any) -> Follower:
    return Follower("7", "e", RunPace(lambda: rpm), FollowLimits(**limits), now=now, submitted_wall=None)


# -- the decisions alone -----------------------------------------------------------------------------

def test_idle_back_off_reaches_forty_seconds_within_about_a_minute() -> None:
    policy = PollInterval()
    delays: list[float] = []
    d = None
    for _ in range(12):
        d = policy.next(d, produced_output=False)
        delays.append(d)
    assert delays[0] == policy.minimum == 1.0  # fast again as soon as output flows
    assert delays[-1] == 40.0 and delays.index(40.0) <= 7 and delays == sorted(delays)
    assert policy.next(40.0, produced_output=True) == 1.0


def test_an_output_file_not_made_yet_is_waited_for_then_read_again_after_a_second_once() -> None:
    """Slurm reports the job running before it has opened the output file: the first read comes
    FIRST_READ_AFTER the job list that showed it running was sent (a read at once found no file in 2
    of 6 quick starts, 0.5 s later in 6 of 10); a read that still finds no file is repeated after a second (not the quick
    reads' 2 s), once; then the quiet reads go on."""
    pace = RunPace(lambda: 10, spare=lambda: 10, clock=lambda: 0.0)
    with pace.follow("e"):
        f = Follower("7", "e", pace, FollowLimits(), now=0.0, submitted_wall=None)
        assert f.state_seen(status("RUNNING"), now=1.2, as_of=1.0).step == Next(Ask.OUTPUT, 2.0)
        assert f.output_read("", missing=True, now=2.2).step == Next(Ask.OUTPUT, 3.2)
        assert f.output_read("", missing=True, now=3.2).step == Next(Ask.OUTPUT, 5.2)
    late = Follower("7", "e", pace, FollowLimits(), now=0.0, submitted_wall=None)
    assert late.state_seen(status("RUNNING"), now=3.0, as_of=1.0).step == Next(Ask.OUTPUT, 3.0)  # answered late: at once


def test_quick_reads_of_a_silent_job_stop_once_the_budget_spaces_them_out() -> None:
    """Eight silent entries at 10/min share each listing, 12 s apart: the first two quick reads, then
    the quiet cycle (a minute), not a third read at 37 s; one entry followed alone gets its three."""
    pace = RunPace(lambda: 10)
    names = [f"e{i}" for i in range(8)]
    with contextlib.ExitStack() as following:
        for name in names:
            following.enter_context(pace.follow(name))
        f = Follower("7", "e0", pace, FollowLimits(), now=0.0, submitted_wall=None)
        assert f.state_seen(status("RUNNING"), now=1.0).step == Next(Ask.OUTPUT, 2.0)
        assert f.output_read("", now=1.5).step == Next(Ask.OUTPUT, 13.5)
        assert f.output_read("", now=13.5).step == Next(Ask.STATE, 61.0)  # its minute's state check, then
        assert f.watch.next_read == 73.5  # the quiet cycle's read, not one at 37.5
    alone = RunPace(lambda: 10, spare=lambda: 10, clock=lambda: 0.0)  # the first minute, the window unspent
    with alone.follow("e"):
        f = Follower("7", "e", alone, FollowLimits(), now=0.0, submitted_wall=None)
        f.state_seen(status("RUNNING"), now=1.0)
        reads = [1.5]
        for _ in range(3):
            f.output_read("", now=reads[-1])
            reads.append(f.watch.next_read)
        assert reads == [1.5, 3.5, 7.5, 67.5]  # three quick reads (2 s, then backing off), then the quiet cycle


def test_the_budget_share_sets_the_floor_of_every_interval() -> None:
    pace = RunPace(lambda: 10)
    with pace.follow("a"), pace.follow("b"):
        assert pace.floor(flowing=False) == pytest.approx(12.0)  # 2 shared requests per idle cycle at 10/min
        pace.mark("a", True)
        # one flowing entry gets half the budget while another idles: 1.25 requests per poll at 5/min
        assert pace.floor(flowing=True) == pytest.approx(15.0)
        assert PollInterval().next(None, produced_output=True, floor=pace.floor(flowing=True)) == pytest.approx(15.0)
    assert pace.following == 0 and not pace.flowing
    assert RunPace(lambda: 600).floor(flowing=True) < PollInterval().minimum


def test_a_queued_job_is_reported_when_it_changes_and_every_minute_with_a_growing_pause() -> None:
    f = follower(now=0.0)
    now, pauses, notices = 0.0, [], []
    for reason in ["Priority"] * 8 + ["Resources"] * 6:
        decision = f.state_seen(status("PENDING", reason), now)
        assert isinstance(decision.step, Next) and decision.step.ask is Ask.STATE
        notices.append(decision.notice)
        pauses.append(decision.step.at - now)
        now = decision.step.at
    assert all(n is None or isinstance(n, Waiting) for n in notices)
    waits = [n for n in notices if isinstance(n, Waiting)]
    # at the first look, again after a minute, when the reason changes (at 94 s), and every minute after
    assert [(n.reason, round(n.waited)) for n in waits] == [
        ("Priority", 0), ("Priority", 64), ("Resources", 94), ("Resources", 154), ("Resources", 214)]
    assert pauses[:3] == [2.0, 3.0, 4.5] and max(pauses) == pauses[-1] == PENDING_POLL_MAX
    started = f.state_seen(status("RUNNING", start=100.0), now)
    assert isinstance(started.notice, Started) and started.step == Next(Ask.OUTPUT, now + 1.0)


def test_a_hopeless_reason_or_the_queue_timeout_gives_up() -> None:
    hopeless = follower().state_seen(status("PENDING", "DependencyNeverSatisfied"), 5.0).step
    assert isinstance(hopeless, Finish) and hopeless.ending is Ending.GIVE_UP and "never start" in hopeless.message
    f = follower(now=0.0, queue_timeout=10.0)
    now = 0.0
    while True:
        step = f.state_seen(status("PENDING", "Priority"), now).step
        if isinstance(step, Finish):
            break
        assert step.at <= 10.0  # the last look is at the timeout, not a pause later
        now = step.at
    assert step.ending is Ending.GIVE_UP and now == pytest.approx(10.0) and "queue_timeout" in step.message


def test_a_task_behind_started_siblings_is_looked_at_at_the_idle_share_not_every_few_seconds() -> None:
    """A task of a job array that waits for the CPUs its started siblings hold: its state at the idle
    entries' share of the budget (12 s at 10/min), not 2, 3, 4.5 s after the submit (8 entries at 10/min
    spent the first minute's budget in 8 s that way, and waited 50 s for the window)."""
    pace = RunPace(lambda: 10)
    with pace.follow("a"), pace.follow("b"):
        waiting = Follower("7_1", "b", pace, FollowLimits(), now=0.0, submitted_wall=None)
        step = waiting.state_seen(status("PENDING", "Resources"), 1.0, behind_siblings=True).step
        assert isinstance(step, Next) and step.ask is Ask.STATE and step.at - 1.0 == pace.floor(flowing=False) == 12.0
        alone = Follower("8", "a", pace, FollowLimits(), now=0.0, submitted_wall=None)
        step = alone.state_seen(status("PENDING", "Resources"), 1.0).step
        assert isinstance(step, Next) and step.at - 1.0 == 2.0  # waiting for the cluster: the usual growing pause


def test_not_listed_is_waited_for_after_submit_and_means_unknown_later() -> None:
    f = follower(now=0.0, not_found_grace=60.0)
    step = f.state_seen(None, 10.0).step
    assert isinstance(step, Next) and step.ask is Ask.STATE and 10.0 < step.at <= 13.0
    late = f.state_seen(None, 61.0).step
    assert isinstance(late, Finish) and late.ending is Ending.UNKNOWN and "not known to Slurm" in late.message
    seen = follower(now=0.0)
    seen.state_seen(status("RUNNING"), 1.0)
    gone = seen.state_seen(None, 2.0).step
    assert isinstance(gone, Finish) and "vanished from Slurm" in gone.message


def test_the_job_end_line_asks_the_state_at_once_then_at_the_end_checks_then_reads_on() -> None:
    f = follower()
    f.state_seen(status("RUNNING"), 0.0)
    first = f.output_read(f"line\n{JOB_END_LINE}0\n", now=100.0).step
    assert first == Next(Ask.STATE, 100.0)
    at = [first.at]
    step = f.state_seen(status("RUNNING"), 100.1).step
    while isinstance(step, Next) and step.ask is Ask.STATE:
        at.append(step.at)
        step = f.state_seen(status("RUNNING"), step.at + 0.1).step
    assert [t - 100.0 for t in at] == list(END_CHECKS_AT)
    assert isinstance(step, Next) and step.ask is Ask.OUTPUT  # never final: the line was the user's
    again = f.output_read(f"{JOB_END_LINE}3\n", now=105.0).step  # within END_TRIGGER_EVERY: no new checks
    assert isinstance(again, Next) and again.ask is Ask.OUTPUT


# -- whole runs on a simulated cluster ---------------------------------------------------------------

@dataclass
class Recorder:
    """A Reporter that keeps what the log shows, with the simulated time of each printed chunk."""

    clock: Callable[[], float]
    output: dict[str, str] = field(default_factory=dict)
    printed: list[tuple[float, str, str]] = field(default_factory=list)  # (time, entry, text)
    notes: list[tuple[str, str | None, str]] = field(default_factory=list)  # (kind, entry, message)
    results: dict[str, EntryResult] = field(default_factory=dict)
    exit_code: int | None = None
    finished_at: float | None = None

    def info(self, message: str) -> None:
        self.notes.append(("info", None, message))

    def warning(self, message: str, entry: str | None = None) -> None:
        self.notes.append(("warning", entry, message))

    def error(self, message: str, entry: str | None = None) -> None:
        self.notes.append(("error", entry, message))

    def mask(self, secret: str) -> None:
        pass

    def entry_submitted(self, entry: str, job_id: str, remote_dir: str) -> None:
        self.notes.append(("submitted", entry, job_id))

    def entry_waiting(self, entry: str, state: str, reason: str | None, waited: float) -> None:
        self.notes.append(("waiting", entry, f"{state} ({reason})"))

    def entry_output(self, entry: str, text: str) -> None:
        self.output[entry] = self.output.get(entry, "") + text
        self.printed.append((self.clock(), entry, text))

    def entry_finished(self, result: EntryResult) -> None:
        self.results[result.entry] = result

    def run_finished(self, results: Sequence[EntryResult], exit_code: int) -> None:
        self.exit_code, self.finished_at = exit_code, self.clock()

    def run_failed(self, message: str, exit_code: int) -> None:
        self.notes.append(("failed", None, message))

    def said(self, kind: str) -> list[str]:
        return [message for k, _, message in self.notes if k == kind]

    def printed_at(self, entry: str, text: str) -> float:
        """When the chunk that completed `text` in the entry's output was printed."""
        shown = ""
        for at, name, chunk in self.printed:
            if name == entry:
                shown += chunk
                if text in shown:
                    return at
        raise AssertionError(f"{text!r} never printed for {entry}")


class Sim:
    """One simulated run: the loop, the cluster, the reporter, the state file."""

    def __init__(self, tmp_path: Path, cluster_class: type[FakeCluster] = FakeCluster, **cluster: Any) -> None:
        self.loop = VirtualTimeLoop(T0)
        self.wall0 = time.time()
        self.cluster = cluster_class(self.loop.time, wall=self.wall, **cluster)
        self.reporter = Recorder(self.loop.time)
        self.state_file = tmp_path / "state.json"

    def wall(self, t: float | None = None) -> float:
        return self.wall0 + (self.loop.time() if t is None else t) - T0

    def run(self, names: Sequence[str], limit: float = 3600.0, **options: Any) -> int:
        """`runner.run` of the entries `names` on simulated time (at most `limit` simulated seconds)."""
        options.setdefault("output_cap", self.cluster.output_cap)
        run_options = RunOptions(run_id=RUN_ID, workdir=WORKDIR, state_file=self.state_file, system="local",
                                        **options)
        specs = [JobSpec(Entry(name, i, {}, {}, "local"), "", "", entry_layout(WORKDIR, RUN_ID, name), {})
                 for i, name in enumerate(names)]
        clock = Clock(monotonic=self.loop.time, wall=self.wall, sleep=asyncio.sleep)
        main = runner.run(specs, self.cluster, self.reporter, run_options, clock=clock)  # type: ignore[arg-type]
        return run_simulated(asyncio.wait_for(main, limit), self.loop)


def output_path(entry: str, job_id: str) -> str:
    return f"{OUT}/{entry}.{job_id}.out"


def job_end(status: int = 0) -> str:
    return f"{JOB_END_LINE}{status}\n"


def script(entry: str, lines: Sequence[str] = (), *, every: float = 1.0, start: float = 0.5, idle: float = 0.0,
           final_lag: float = 0.05, end_line: bool = True) -> Callable[[str, float], FakeJob]:
    """A job that starts `start` s after its submit, prints `lines` `every` s apart, is silent for `idle`
    s, prints the job-end line (unless not `end_line`) and is COMPLETED `final_lag` s later."""

    def make(job_id: str, submitted: float) -> FakeJob:
        began = submitted + start
        job = FakeJob(job_id, output_path(entry, job_id), states=[(began, "RUNNING")])
        job.write_lines(began, [f"{line}\n".encode() for line in lines], every)
        end = began + len(lines) * every + idle
        if end_line:
            job.writes.append((end, job_end().encode()))
        job.states.append((end + final_lag, "COMPLETED"))
        return job

    return make


def silent_first(make: Callable[[str, float], FakeJob], seconds: float) -> Callable[[str, float], FakeJob]:
    """`make`'s job with its output and its end `seconds` later: a job that starts silently."""

    def later(job_id: str, submitted: float) -> FakeJob:
        job = make(job_id, submitted)
        job.writes = [(at + seconds, text) for at, text in job.writes]
        job.states = [(at + seconds if state == "COMPLETED" else at, state) for at, state in job.states]
        return job

    return later


def expected(lines: Sequence[str]) -> str:
    return "".join(f"{line}\n" for line in lines) + job_end()


@pytest.mark.parametrize("entries", [1, 8])
def test_an_idle_run_costs_at_most_three_requests_a_minute(tmp_path: Path, entries: int) -> None:
    """Jobs silent for 10 minutes, at the default budget (10/min): once idle, the whole run's job list
    and output listing, shared by every entry, cost 2.5 requests a minute and never 4 in 60 s."""
    sim = Sim(tmp_path, requests_per_minute=10)
    names = [f"e{i}" for i in range(entries)]
    for name in names:
        sim.cluster.plans[name] = script(name, ["started"], idle=600.0)
    assert sim.run(names) == 0
    assert all(sim.reporter.output[name] == expected(["started"]) for name in names)
    # once idle: two minutes after the last first line (8 submits fill the first minute at 10/min,
    # and the reads after the first line wait for the budget), to the jobs' end
    idle_to = T0 + 600.0
    idle_from = max(sim.reporter.printed_at(name, "started\n") for name in names) + 120.0
    assert idle_to - idle_from >= 300.0
    sent = [r.sent for r in sim.cluster.requests(since=idle_from, until=idle_to)]
    assert len(sent) / ((idle_to - idle_from) / 60.0) <= 3.0, sim.cluster.requests(since=idle_from, until=idle_to)
    assert max_in_window(sent, 60.0) <= 3
    # ... and the state is still asked at least once a minute (TIMEOUT, a cancel by someone else, node failure)
    checks = [r.sent for r in sim.cluster.requests("jobs", since=idle_from, until=idle_to)]
    assert checks and max(b - a for a, b in zip([idle_from, *checks], [*checks, idle_to])) <= 60.5


@pytest.mark.parametrize(("entries", "most"), [(1, 6), (8, 5)])
def test_a_job_silent_from_its_start_costs_at_most_three_requests_a_minute_from_its_start(
        tmp_path: Path, entries: int, most: int) -> None:
    """Jobs that print nothing for 120 s from their start (the bench's idle row), at 10/min with 0.2 s
    per request: over those two minutes the whole run sends at most 6 requests, its quick first reads
    included, and still asks the state at least once a minute. Several entries share each listing,
    which the budget's share spaces 12 s apart: two quick reads (1 and 13 s), not a third at 37 s
    (which made 6 in the bench's 119.96 s: 3.001 a minute)."""
    sim = Sim(tmp_path, requests_per_minute=10, latency=0.2)
    names = [f"e{i}" for i in range(entries)]
    for name in names:
        sim.cluster.plans[name] = script(name, [], start=0.5, idle=120.0)
    assert sim.run(names) == 0
    jobs = list(sim.cluster.jobs.values())
    silent_from = max(job.states[0][0] for job in jobs)
    silent_to = min(job.writes[-1][0] for job in jobs)
    sent = sim.cluster.requests(since=silent_from, until=silent_to)
    assert len(sent) <= most, [(round(r.sent - T0, 1), r.kind) for r in sent]
    checks = [r.sent for r in sim.cluster.requests("jobs", since=silent_from - 2.0, until=silent_to)]
    assert checks and max(b - a for a, b in zip([silent_from, *checks], [*checks, silent_to])) <= 61.0


@pytest.mark.parametrize("rpm, within", [(10, 61.0), (50, 13.0)])
def test_a_quietly_starting_job_s_first_line_comes_within_its_quiet_cycle(tmp_path: Path, rpm: int,
                                                                           within: float) -> None:
    """A job silent for 20 s, then printing: its first line comes within one quiet cycle, a minute at
    10/min (the quota's price) and 12 s at 50/min."""
    sim = Sim(tmp_path, requests_per_minute=rpm, latency=0.2)
    sim.cluster.plans["e"] = silent_first(script("e", ["after 20 s"], start=0.5), 20.0)
    assert sim.run(["e"]) == 0
    job = next(iter(sim.cluster.jobs.values()))
    assert sim.reporter.printed_at("e", "after 20 s\n") - job.writes[0][0] <= within, sim.cluster.log


def test_a_short_job_followed_alone_ends_the_run_within_two_seconds_at_ten_requests_a_minute(tmp_path: Path) -> None:
    """A 6-second job at 10/min with 0.2 s per request: the first state is asked a second after the
    submit, the first read is a read (no listing before it), and while the window has requests to
    spare the output is read every 2 s, not every 7.5 s: the run ends within 2.5 s of the job's end
    (a read every 2 s, then the state, 0.2 s each) and within the first minute's 10 requests (mkdir,
    submit, state, reads, final state, the rest)."""
    sim = Sim(tmp_path, requests_per_minute=10, latency=0.2)
    lines = [f"line {i}" for i in range(6)]
    sim.cluster.plans["e"] = script("e", lines, every=1.0, start=0.8, final_lag=0.1)
    assert sim.run(["e"]) == 0
    assert sim.reporter.output["e"] == expected(lines)
    kinds = [r.kind for r in sim.cluster.log]
    assert kinds[:3] == ["mkdir", "submit", "jobs"] and kinds[3] in ("tail", "view"), kinds
    submitted = sim.cluster.requests("submit")[0].sent
    assert sim.cluster.requests("jobs")[0].sent - submitted >= 0.75  # FIRST_STATE_AFTER the submit's record
    job = next(iter(sim.cluster.jobs.values()))
    ended = max(at for at, _ in job.writes)
    assert sim.reporter.finished_at is not None and sim.reporter.finished_at - ended <= 2.5, sim.cluster.log
    assert len(sim.cluster.log) <= 9 and max_in_window([r.sent for r in sim.cluster.log], 60.0) <= 10


@pytest.mark.parametrize("requests_per_minute", [20, 50])
def test_a_minute_long_job_followed_alone_gets_its_lines_at_an_even_pace_not_a_burst_and_a_stall(
        tmp_path: Path, requests_per_minute: int) -> None:
    """Bench row 1's job (30 lines 2 s apart) at 20/min: reading every 2 s until the window ran dry
    (25 s) left its lines of the next 35 s waiting for the first minute's requests to age out (p95
    23 s). After the first seconds' quick reads the window's rest is spread until it refills: no line
    waits much longer than the sustained pace, and the window is never exceeded."""
    sim = Sim(tmp_path, requests_per_minute=requests_per_minute, latency=0.2)
    lines = [f"line {i}" for i in range(30)]
    sim.cluster.plans["e"] = script("e", lines, every=2.0, start=0.8)
    assert sim.run(["e"]) == 0
    assert sim.reporter.output["e"] == expected(lines)
    assert max_in_window([r.sent for r in sim.cluster.log], 60.0) <= requests_per_minute
    job = next(iter(sim.cluster.jobs.values()))
    written = {text.decode().rstrip("\n"): at for at, text in job.writes}
    late = [sim.reporter.printed_at("e", f"{line}\n") - written[line] for line in lines]
    assert max(late) <= 10.0, late  # 20/min: 3.75 s sustained, ~5 s while the first minute's rest is spread
    assert sorted(late)[len(late) // 2] <= 3.0, late  # issue 7's target at 20/min: p50 within 3 s


def test_a_long_job_followed_alone_prints_every_line_within_the_budget_after_its_early_reads(tmp_path: Path) -> None:
    """The early reads spend the window sooner; a job that runs on for minutes still gets every line,
    the budget's window is never exceeded, and after the first minute the lines come at the sustained pace."""
    sim = Sim(tmp_path, requests_per_minute=10, latency=0.2)
    lines = [f"line {i}" for i in range(180)]
    sim.cluster.plans["e"] = script("e", lines, every=1.0, start=0.8)
    assert sim.run(["e"]) == 0
    assert sim.reporter.output["e"] == expected(lines)
    assert max_in_window([r.sent for r in sim.cluster.log], 60.0) <= 10
    job = next(iter(sim.cluster.jobs.values()))
    written = {text.decode().rstrip("\n"): at for at, text in job.writes}
    late = [sim.reporter.printed_at("e", f"{line}\n") - written[line] for line in lines[90:]]
    assert max(late) <= 15.0, late  # the sustained pace: 7.5 s, plus the state and a listing now and then
    # no early reads after the first minute: the spare its early reads leave when they age out is not
    # spent early again (that would be a burst and a stall every minute)
    reads = [r.sent for r in sim.cluster.requests("tail", since=T0 + 65.0, until=T0 + 175.0)]
    assert min(b - a for a, b in zip(reads, reads[1:])) >= 7.0, reads


def test_a_job_that_has_printed_nothing_yet_is_read_again_within_seconds_not_at_the_idle_pace(tmp_path: Path) -> None:
    """A job checking out prints nothing for 5 s: its first read finds nothing; with requests to spare
    it is read again after 2 s, then 4 s (its quick reads), not at the idle pace (12 s at 10/min), and
    without a state check each time."""
    sim = Sim(tmp_path, requests_per_minute=10, latency=0.2)
    sim.cluster.plans["e"] = silent_first(script("e", ["after checkout"], start=0.8, idle=0.0), 5.0)
    assert sim.run(["e"]) == 0
    printed = sim.reporter.printed_at("e", "after checkout\n")
    job = next(iter(sim.cluster.jobs.values()))
    assert printed - job.writes[0][0] <= 4.5, sim.cluster.log
    first_read = sim.cluster.requests("tail", "view")[0].sent
    assert len(sim.cluster.requests("jobs", since=first_read, until=printed)) == 0, sim.cluster.log


class SlurmLate(FakeCluster):
    """Slurm reports the job final `lag` seconds after the runner read its job-end line."""

    lag = 1.3

    async def tail_from(self, path: str, offset: int) -> str:
        text = await super().tail_from(path, offset)
        job = next(job for job in self.jobs.values() if job.path == path)
        if JOB_END_LINE in text and not any(state == "COMPLETED" and since < float("inf") for since, state in job.states):
            job.states.append((self.clock() + self.lag, "COMPLETED"))
        return text


def test_the_run_ends_within_two_seconds_of_the_job_end_line_when_slurm_is_a_second_late(tmp_path: Path) -> None:
    sim = Sim(tmp_path, SlurmLate, latency=0.1)
    lines = [f"line {i}" for i in range(10)]
    sim.cluster.plans["e"] = script("e", lines, every=0.5, final_lag=float("inf"))
    assert sim.run(["e"]) == 0
    assert sim.reporter.output["e"] == expected(lines)
    read_at = sim.reporter.printed_at("e", JOB_END_LINE)
    assert sim.reporter.finished_at is not None and sim.reporter.finished_at - read_at <= 2.0


def test_with_the_budget_exhausted_the_follower_asks_no_faster_than_it_is_given(tmp_path: Path) -> None:
    """At 2 requests a minute the idle cycle (listing + job list) comes once a minute: the requests do
    not pile up at the budget, and the job is still followed to its end with every line printed."""
    sim = Sim(tmp_path, requests_per_minute=2)
    lines = [f"line {i}" for i in range(5)]
    sim.cluster.plans["e"] = script("e", lines, every=2.0, idle=400.0)
    assert sim.run(["e"]) == 0
    assert sim.reporter.output["e"] == expected(lines)
    idle = sim.cluster.requests(since=T0 + 240.0, until=T0 + 400.0)  # the output stopped at ~T0 + 70
    assert idle and max(r.waited for r in idle) <= 2.0, idle
    assert max_in_window([r.sent for r in sim.cluster.log], 60.0) <= 2


@pytest.mark.parametrize(("entries", "most"), [(4, 16), (8, 20)])
def test_after_the_budget_s_window_was_full_one_job_list_and_one_listing_end_every_job(
        tmp_path: Path, entries: int, most: int) -> None:
    """The bench's economy row on simulated time: jobs two at a time (2 CPUs), 6 lines 1 s apart, at
    10/min with 0.2 s per request. The first minute's requests are spent by the first seconds, and
    every job ends while the followers wait for the window. When it opens, the states come from one
    job list and the final sizes from one listing after it, then each entry's read: the run ends in
    the second minute (it took the third, 121 s in 22 requests, when each follower acted on what it
    knew before the wait and asked again for its end and its drain)."""
    sim = Sim(tmp_path, requests_per_minute=10, latency=0.2)
    names = [f"e{i}" for i in range(entries)]
    lines = [f"line {i}" for i in range(6)]
    for k, name in enumerate(names):
        sim.cluster.plans[name] = script(name, lines, start=0.5 + (k // 2) * 7.0)
    assert sim.run(names) == 0
    assert all(sim.reporter.output[name] == expected(lines) for name in names)
    assert sim.reporter.finished_at is not None and sim.reporter.finished_at - T0 <= 65.0, sim.cluster.log
    assert len(sim.cluster.log) <= most, sim.cluster.log
    after = sim.cluster.requests("jobs", "ls", since=T0 + 60.0)
    assert [r.kind for r in after] == ["jobs", "ls"], sim.cluster.log


@pytest.mark.parametrize("flood_runs_on", [100.0, 0.0], ids=["read-while-running", "drained-after-the-end"])
def test_one_entry_flooding_does_not_starve_the_trickling_ones(tmp_path: Path, flood_runs_on: float) -> None:
    """A 2 MiB backlog read in blocks at 60 requests a minute takes over a minute, while its job runs
    on or in the drain after it ended; meanwhile the other entries' lines (one every 3 s) keep
    appearing within seconds: the budget's window admits a burst, and the backlog must not take it all."""
    cap = 64 * 1024  # blocks of ~31 KiB: 66 reads for the backlog
    sim = Sim(tmp_path, requests_per_minute=60, output_cap=cap)
    flood = "x" * 99
    sim.cluster.plans["flood"] = script("flood", [flood] * (2 * 1024 * 1024 // 100), every=0.0, start=2.0,
                                        idle=flood_runs_on)
    trickle = [f"trickle {i}" for i in range(20)]
    for name in ("t1", "t2"):
        sim.cluster.plans[name] = script(name, trickle, every=3.0, start=2.0)
    assert sim.run(["flood", "t1", "t2"]) == 0
    assert sim.reporter.output["flood"] == expected([flood] * (2 * 1024 * 1024 // 100))
    flood_done = sim.reporter.printed_at("flood", JOB_END_LINE)
    for name in ("t1", "t2"):
        assert sim.reporter.output[name] == expected(trickle)
        job = next(job for job in sim.cluster.jobs.values() if job.path.startswith(f"{OUT}/{name}."))
        written = {text.decode().rstrip("\n"): at for at, text in job.writes}
        late = [sim.reporter.printed_at(name, f"{line}\n") - written[line] for line in trickle]
        assert max(late) <= 12.0, late
        assert written[trickle[-1]] < flood_done  # the flood was still being read: they competed


class EndsAfterTheListing(FakeCluster):
    """Between the listing that shows the file grew and the read that follows it, the job writes its
    last lines and ends: the read gets more than the listing said."""

    ended = False

    async def list_files(self, path: str, *, recursive: bool = False) -> list[dict[str, Any]]:
        found = await super().list_files(path, recursive=recursive)
        job = next(iter(self.jobs.values()))
        if not self.ended and any(int(item["size"]) > len(b"first\n") for item in found):
            self.ended = True
            now = self.clock()
            job.writes += [(now + 0.01, b"last\n"), (now + 0.01, job_end().encode())]
            job.states.append((now + 0.02, "COMPLETED"))
        return found


def test_a_job_that_ends_between_the_size_list_and_the_read_is_printed_exactly_once(tmp_path: Path) -> None:
    sim = Sim(tmp_path, EndsAfterTheListing)
    make = script("e", ["first"], idle=1e9, final_lag=1e9, end_line=False)

    def plan(job_id: str, submitted: float) -> FakeJob:
        job = make(job_id, submitted)
        job.writes.append((submitted + 30.0, b"second\n"))  # seen by an idle poll's listing
        return job

    sim.cluster.plans["e"] = plan
    sim.cluster.plans["quiet"] = script("quiet", [], idle=200.0)  # two entries: their sizes come from listings
    assert sim.run(["e", "quiet"]) == 0
    assert sim.reporter.output["e"] == "first\nsecond\nlast\n" + job_end()
    assert not sim.reporter.said("warning")
    # e's final state, then its final size from a listing sent after that job list (quiet runs on)
    e_job = next(job for job in sim.cluster.jobs.values() if job.path.startswith(f"{OUT}/e."))
    completed = min(since for since, state in e_job.states if state == "COMPLETED")
    final_state = next(r for r in sim.cluster.requests("jobs") if r.sent + sim.cluster.latency >= completed)
    assert any(final_state.sent < r.sent < final_state.sent + 5.0 for r in sim.cluster.requests("ls"))


def test_a_job_not_listed_yet_after_its_submit_is_waited_for(tmp_path: Path) -> None:
    sim = Sim(tmp_path)
    make = script("e", ["hello"], start=25.0)

    def plan(job_id: str, submitted: float) -> FakeJob:
        job = make(job_id, submitted)
        job.listed_from = submitted + 20.0  # Slurm's job list shows it 20 s after the submit
        return job

    sim.cluster.plans["e"] = plan
    assert sim.run(["e"]) == 0
    assert sim.reporter.output["e"] == expected(["hello"])
    early = sim.cluster.requests("jobs", until=T0 + 20.0)
    assert 3 <= len(early) <= 9  # every ~3 s, not in a loop


def test_a_job_purged_from_the_state_list_while_followed_is_drained_and_unknown(tmp_path: Path) -> None:
    """The job ended without a job-end line (killed) and Slurm forgot it before the next state check."""
    sim = Sim(tmp_path)
    make = script("e", ["a", "b"], idle=5.0, final_lag=0.0, end_line=False)

    def plan(job_id: str, submitted: float) -> FakeJob:
        job = make(job_id, submitted)
        job.writes.append((submitted + 7.0, b"c, written just before the end\n"))
        job.listed_until = submitted + 8.0
        return job

    sim.cluster.plans["e"] = plan
    assert sim.run(["e"]) == Outcome.INFRA.exit_code
    assert sim.reporter.output["e"] == "a\nb\nc, written just before the end\n"
    result = sim.reporter.results["e"]
    assert result.outcome is Outcome.INFRA and "vanished from Slurm before a final state was seen" in result.message


def test_a_truncated_output_is_reported_and_read_again_from_the_start(tmp_path: Path) -> None:
    sim = Sim(tmp_path)
    make = script("e", ["old line 1", "old line 2", "old line 3"], idle=60.0)

    def plan(job_id: str, submitted: float) -> FakeJob:
        job = make(job_id, submitted)
        job.truncations.append(submitted + 30.0)  # requeued, or the job truncated its own output
        job.writes.append((submitted + 30.0, b"new\n"))
        job.writes.sort(key=lambda write: write[0])
        return job

    sim.cluster.plans["e"] = plan
    assert sim.run(["e"]) == 0
    assert sim.reporter.output["e"] == "old line 1\nold line 2\nold line 3\nnew\n" + job_end()
    assert any("reading it again from 0" in message for message in sim.reporter.said("warning"))


def test_output_over_max_output_is_not_read_while_the_job_runs_and_its_end_is_still_seen(tmp_path: Path) -> None:
    """The job-end line cannot be seen past the limit, so the state is asked with every idle poll
    (every 40 s, not only at the one-minute backstop)."""
    sim = Sim(tmp_path)
    lines = [f"{i:04d} " + "y" * 94 for i in range(50)]  # 5000 bytes
    sim.cluster.plans["e"] = script("e", lines, every=0.01, idle=310.0)
    assert sim.run(["e"], max_output=1000) == 0
    shown = sim.reporter.output["e"]
    assert shown.startswith(lines[0]) and "bytes not shown (over max_output" in shown and shown.endswith(job_end())
    assert lines[-1] in shown and lines[20] not in shown
    job = next(iter(sim.cluster.jobs.values()))
    end = max(at for at, _ in job.writes)
    reads = sim.cluster.requests("tail", "view", since=T0 + 10.0, until=end)
    assert not reads
    checks = [r.sent for r in sim.cluster.requests("jobs", since=T0 + 100.0)]
    assert max(b - a for a, b in zip(checks, checks[1:])) <= 41.0
    assert sim.reporter.finished_at is not None and sim.reporter.finished_at - end <= 42.0


def attach_state(sim: Sim, job_id: str, offset: int, submitted_ago: float) -> None:
    layout = entry_layout(WORKDIR, RUN_ID, "e")
    entry = EntryState(job_name=job_name(RUN_ID), remote_dir=layout.root, system="local", job_id=job_id,
                       output_path=layout.output_path(job_id), offset=offset, state="RUNNING",
                       submitted_at=sim.wall() - submitted_ago)
    StateFile.create(sim.state_file, RunState(run_id=RUN_ID, system="local", workdir=WORKDIR, entries={"e": entry}))


def test_an_attach_in_the_middle_of_a_run_prints_from_the_recorded_offset(tmp_path: Path) -> None:
    sim = Sim(tmp_path)
    lines = [f"line {i}" for i in range(8)]
    job = script("e", lines, every=2.0)("42", T0 - 10.5)  # lines 0-4 were written before the attach
    sim.cluster.add(job)
    printed = len(expected(lines[:3])) - len(job_end())  # the first runner printed three lines, then died
    attach_state(sim, "42", printed, submitted_ago=10.5)
    assert sim.run(["e"], attach=True) == 0
    assert sim.reporter.output["e"] == expected(lines[3:])
    assert not sim.cluster.requests("submit")
    assert f"e: attaching to Slurm job 42 at output byte {printed}" in sim.reporter.said("info")


def test_an_attach_to_a_queued_job_counts_the_queue_time_from_the_recorded_submit(tmp_path: Path) -> None:
    sim = Sim(tmp_path)
    sim.cluster.add(FakeJob("42", output_path("e", "42")))  # pending forever
    attach_state(sim, "42", 0, submitted_ago=120.0)
    assert sim.run(["e"], attach=True, queue_timeout=150.0) == Outcome.INFRA.exit_code
    cancels = sim.cluster.requests("cancel")
    assert len(cancels) == 1 and T0 + 29.0 <= cancels[0].sent <= T0 + 32.0
    assert "queue_timeout" in sim.reporter.results["e"].message


def test_an_attach_to_a_job_slurm_forgot_prints_its_output_and_reports_it_unknown(tmp_path: Path) -> None:
    sim = Sim(tmp_path)
    job = script("e", ["done long ago"])("42", T0 - 3600.0)
    job.listed_until = T0 - 3000.0
    sim.cluster.add(job)
    attach_state(sim, "42", 0, submitted_ago=3600.0)
    assert sim.run(["e"], attach=True) == Outcome.INFRA.exit_code
    assert sim.reporter.output["e"] == expected(["done long ago"])
    assert "is not known to Slurm" in sim.reporter.results["e"].message
