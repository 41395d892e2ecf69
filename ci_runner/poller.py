"""What to ask next about one job, given the answers so far, the run's request budget and the clock.

runner.py does the I/O of following a job: the state from the run's job list and the output through
the `OutputReader` (both shared through the `RunObserver`), printing, the state file. After each
answer it asks the job's `Follower`, which keeps what it knows in one small state (`Watch`) and
answers with a `Decision`: the next `Step` (ask for the state or read the output, each at a clock
time; or `Finish`: the job is final, unknown to Slurm, or waits in vain) and what the log should hear
(`Waiting`, `Started`). The follower never does I/O and never sleeps: the clock values come from the
caller (tests/test_poller.py drives it with a simulated clock, without a server).

The policy, all in this module:
- Submitted: the first state is asked `FIRST_STATE_AFTER` the submit (an idle Slurm starts a job within
  about a second, so a look at once would mostly see it pending and cost a request of the first minute).
- Queued: the state is asked with a growing pause (2 s, ×1.5, then every 30 s; a task of a job array
  waiting behind started siblings at least at the idle share, `RunPace.floor`); the wait is reported when
  the state or reason changes and at least every minute; a hopeless reason or `queue_timeout` gives up.
  A job not listed yet right after its submit is normal for `not_found_grace` seconds.
- Started: read `FIRST_READ_AFTER` after the job list that showed it running was sent. Slurm lists a
  job RUNNING before its step opens the output file (0.2-0.6 s later for the quick start's packed
  job here, seen so because the first look, 1 s after the submit, comes as Slurm starts it: a read
  at once found no file in 2 of 6 quick starts, 0.5 s later in 6 of 10: a request of the first
  minute spent on a 404); a read that still finds no file is repeated after a second
  (MISSING_QUICK_READS), not counted as quiet.
- Running, output flowing: read again after `PollInterval` (1 s, never below the entry's share of the
  budget, `RunPace`; an entry followed alone every `EARLY_READ_EVERY` in the first `EARLY_BURST` s of
  the run's output while the budget's window has requests to spare beyond what ending it costs: a
  short job's end is seen within seconds instead of at the sustained pace, 7.5 s at 10/min; then the
  window's rest is spread until it refills, not spent at once); the state only as a backstop
  (`STATE_CHECK_EVERY`), since a job that ends normally says so in its output (the job-end line) and
  one that is killed stops writing.
- Idle: the interval backs off (2, 4, ... 40 s). While it backs off after output, every poll also asks
  the state (right after output stops is when a killed job is likely); once at its longest, the output
  is asked every 40 s and the state every 60 s: 2.5 requests a minute for the whole run, at most 3 in
  any 60 s. Before its first output a job is checking out or starting quietly: after QUIET_START_READS
  quick reads (the first 8 s or so; fewer when the budget's share spaces them more than
  QUICK_READ_MAX apart: several entries at 10/min are read at 1 and 13 s, not at 37 s too) its
  output is read once a `RunPace.quiet_cycle` (a minute at 10/min, 12 s at 50/min) and its state
  every minute, so that a silent job costs the run 2 requests a minute at 10/min, its first two
  minutes included (a job that stays silent for 10 s shows its first line up to a cycle late: the
  price of the quota). State checks are timed from when the job list that answered was sent (`as_of`), not
  from when the follower got it: followers that share one answer ask again together and share the
  next one too, and no follower's state is ever more than a minute old, whatever the number of entries.
- The job-end line (or a checkout failure) makes the follower ask the state at once and then at
  `END_CHECKS_AT` after the line (0.5 s apart at first): a job whose final state Slurm reports a
  second later ends the run about 1.5 s after the line was read. User output can print the same
  text; that costs these few checks (at most once per `END_TRIGGER_EVERY`), never a wrong verdict.
- A backlog read in blocks (`chunked`) is read on at once when the entry is followed alone (the
  budget paces it), else at a flowing entry's share: the budget's window admits bursts, and one
  entry's backlog read as fast as the window allows would leave the others nothing for a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Union

from ci_runner import slurm_states
from ci_runner.job_spec import CHECKOUT_FAILED_LINE, JOB_END_LINE
from ci_runner.reporters.text import format_duration

if TYPE_CHECKING:
    from ci_runner.api import JobStatus

STATE_CHECK_EVERY = 60.0  # a running job's state at least this often: TIMEOUT, cancel by others, node failure
# Requests per poll for the budget share (`RunPace.floor`): an idle cycle is the run's job list and
# output listing, shared by every idle entry; while output flows an entry's poll is one read of its
# own, plus a share for the rare state checks and the job-end checks.
IDLE_REQUESTS_PER_CYCLE = 2.0
FLOWING_REQUESTS_PER_POLL = 1.25
END_MARKERS = (JOB_END_LINE, CHECKOUT_FAILED_LINE)
END_CHECKS_AT = (0.0, 0.5, 1.0, 1.5, 2.5, 4.0)  # seconds after the job-end line: state checks until final
END_TRIGGER_EVERY = 15.0
FIRST_STATE_AFTER = 1.0       # seconds after the submit: the first look at the job's state
FIRST_READ_AFTER = 1.0        # seconds after the job list that first showed the job running: its first read
EARLY_READ_EVERY = 2.0        # a flowing entry's reads while the budget's window has requests to spare
EARLY_PERIOD = 60.0           # seconds from the run's start in which EARLY_READ_EVERY may apply
EARLY_BURST = 5.0             # seconds from the run's first output in which it does (at 0.2 s a request: reads at 0, 2.2, 4.4, 6.6 s)
END_RESERVE = 2               # requests that end a run besides each flowing entry's last read: job list, listing
QUIET_START_READS = 3         # quick reads of a job that has printed nothing yet, before its quiet cycle
QUICK_READ_MAX = 15.0         # seconds: a read of a job silent so far that would come later is not quick: its quiet cycle
MISSING_QUICK_READS = 1       # a running job's output file not there yet: read again after a second, this often
QUIET_SHARE = 0.2             # of the budget that silent jobs may take: their cycle (state and read) at 10/min: 60 s
PENDING_POLL_FIRST = 2.0
PENDING_POLL_GROWTH = 1.5
PENDING_POLL_MAX = 30.0       # slowest job-state poll while queued
PENDING_REPORT_EVERY = 60.0   # repeat the queue state in the log at least this often
NOT_FOUND_POLL = 3.0
AT_ONCE = float("-inf")       # a `Next.at` that is never in the future

_MARKER_SPAN = max(len(marker) for marker in END_MARKERS)


@dataclass(frozen=True)
class Clock:
    """The follower's time, injectable: a monotonic clock for intervals, the wall clock (Slurm's times
    and the recorded submit time are epoch seconds) and the sleep that waits on the first."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep


@dataclass(frozen=True)
class PollInterval:
    """Delay before the next poll: `minimum` while output flows, ×`factor` per idle poll up to
    `maximum`, and never below `floor` (the entry's share of the request budget, `RunPace.floor`)."""

    minimum: float = 1.0
    maximum: float = 40.0
    factor: float = 2.0

    def next(self, previous: float | None, produced_output: bool, floor: float = 0.0) -> float:
        if produced_output or previous is None:
            delay = self.minimum
        else:
            delay = min(self.maximum, max(self.minimum, previous * self.factor))
        return max(delay, floor)


class RunPace:
    """How the followers of one run share its request budget: the idle ones share one job list and
    one listing per cycle; the flowing ones each pay their reads (half of the budget while others idle).
    `spare`: the requests the budget's window could grant now (`RequestBudget.available`); `clock`:
    monotonic seconds (the run's first minute starts when the pace is made)."""

    def __init__(self, requests_per_minute: Callable[[], float], spare: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = time.monotonic, refill: Callable[[], float] = lambda: 0.0) -> None:
        self._requests_per_minute = requests_per_minute
        self._spare = spare
        self._refill = refill
        self._clock = clock
        self._since = clock()
        self._first_output: float | None = None
        self.following = 0
        self.flowing: set[str] = set()

    @contextmanager
    def follow(self, name: str) -> Iterator[None]:
        """While entry `name` is being followed."""
        self.following += 1
        try:
            yield
        finally:
            self.following -= 1
            self.flowing.discard(name)

    def mark(self, name: str, flowing: bool) -> None:
        """Entry `name`'s last poll printed output (or not)."""
        if flowing:
            self.flowing.add(name)
            if self._first_output is None:
                self._first_output = self._clock()
        else:
            self.flowing.discard(name)

    def backlog_pause(self) -> float:
        """Seconds between two reads of a backlog (blocks of a large output, the drain after the job
        ended): none for an entry followed alone (the budget paces it), else a flowing entry's
        sustained share, so that one backlog cannot take the budget's whole window while the others wait."""
        return self._sustained(flowing=True) if self.following > 1 else 0.0

    def floor(self, flowing: bool) -> float:
        """Seconds between one entry's polls so that the run stays within its budget. In the run's
        first minute (EARLY_PERIOD) an entry followed alone polls every EARLY_READ_EVERY for the first
        EARLY_BURST seconds of the run's output while the window has more to spare than ending it would cost
        (its last read, then END_RESERVE): a short job's end is seen within seconds, not at the
        sustained pace (7.5 s at 10/min). After that burst it polls at the sustained pace, or slower
        when that would spend the window before its oldest requests age out: what is left beyond
        END_RESERVE is spread until then (`refill`), so a longer job gets its lines at an even pace
        instead of a burst and then a stall (at 20/min reads every 2 s spent the window in 25 s and
        then waited 35 s). At 10/min the burst leaves nothing to spread: a job longer than it waits
        once for the window. Only in the first minute: later, the spare left by those early requests
        is not spent early again (it would come back a minute later, and so on). With several entries
        the sustained pace holds: their early reads would take the window from one another
        (tests/unit/test_poller.py, flooding)."""
        sustained = self._sustained(flowing)
        now = self._clock()
        if now - self._since >= EARLY_PERIOD or self.following != 1:
            return sustained
        bursting = self._first_output is None or now - self._first_output < EARLY_BURST
        if bursting:
            return min(sustained, EARLY_READ_EVERY) if self._spare() >= END_RESERVE + 1 else sustained
        left = self._spare() - END_RESERVE
        return max(sustained, self._refill() / left) if left > 0 else sustained

    def quiet_cycle(self) -> float:
        """Seconds between the reads of a job that has printed nothing after its quick first reads:
        its cycle (the run's job list and a read) within QUIET_SHARE of the budget, at most a minute
        (every state check then brings its read), never faster than the idle share."""
        cycle = 60.0 * IDLE_REQUESTS_PER_CYCLE / (QUIET_SHARE * self._requests_per_minute())
        return max(self._sustained(flowing=False), min(STATE_CHECK_EVERY, cycle))

    def _sustained(self, flowing: bool) -> float:
        rpm = self._requests_per_minute()
        idle_entries = self.following - len(self.flowing)
        share = rpm / 2 if self.flowing and idle_entries > 0 else rpm
        if flowing:
            return 60.0 * FLOWING_REQUESTS_PER_POLL * max(1, len(self.flowing)) / share
        return 60.0 * IDLE_REQUESTS_PER_CYCLE / share


@dataclass(frozen=True)
class FollowLimits:
    """How long a job may be unknown to Slurm right after its submit, and wait in the queue (seconds)."""

    not_found_grace: float = 60.0
    queue_timeout: float | None = None


class Ask(Enum):
    STATE = "state"    # the job's state, from the run's job list
    OUTPUT = "output"  # one poll of the output reader (the run's listing first when idle)


@dataclass(frozen=True)
class Next:
    """Ask `ask` at clock time `at` (at once when that is not in the future)."""

    ask: Ask
    at: float = AT_ONCE


class Ending(Enum):
    FINAL = "final"      # Slurm reports a final state: read the rest of the output, decide from the state
    UNKNOWN = "unknown"  # Slurm does not list the job (any more): read what the output holds; infrastructure
    GIVE_UP = "give up"  # the job waits in vain (hopeless reason, queue timeout): cancel it; infrastructure


@dataclass(frozen=True)
class Finish:
    ending: Ending
    status: JobStatus | None
    message: str = ""
    queue_seconds: float | None = None


Step = Union[Next, Finish]


@dataclass(frozen=True)
class Waiting:
    """Tell the log that the job waits in the queue."""

    state: str
    reason: str | None
    waited: float


@dataclass(frozen=True)
class Started:
    """Tell the log that the wait is over; `waited`: Slurm's queue time (None when it has no start time)."""

    state: str
    waited: float | None


Notice = Union[Waiting, Started]


@dataclass(frozen=True)
class Decision:
    step: Step
    notice: Notice | None = None


class Phase(Enum):
    UNLISTED = "not listed yet"  # submitted (or attached), not seen in a job list yet
    QUEUED = "queued"
    RUNNING = "running"
    ENDING = "ending"            # the job-end line was read: confirming the end in the job list


@dataclass
class Watch:
    """What a follower knows between two answers (clock times are the caller's monotonic clock)."""

    phase: Phase = Phase.UNLISTED
    known_at: float = AT_ONCE       # when the job list of the last state answer was sent
    next_read: float = AT_ONCE      # when the output is to be polled next
    delay: float | None = None      # the last poll interval (PollInterval.next)
    pending_pause: float = PENDING_POLL_FIRST
    reported: tuple[str, str | None] | None = None  # the queue state and reason last reported
    reported_at: float = AT_ONCE
    end_seen_at: float = AT_ONCE    # the last job-end line that triggered the end checks
    end_checks: int = 0             # state checks made since then
    recent: str = ""                # the end of the output so far (an end marker split across reads)
    quiet_reads: int = 0            # reads that found nothing before the job's first output
    missing_reads: int = 0          # reads that found no output file yet (MISSING_QUICK_READS)


class Follower:
    """The decisions of following one job (module docstring). `state_seen` after each state answer,
    `output_read` after each poll of the output; both return the next `Decision`."""

    def __init__(self, job_id: str, name: str, pace: RunPace, limits: FollowLimits, *, now: float,
                 waited: float = 0.0, submitted_wall: float | None = None,
                 interval: PollInterval = PollInterval()) -> None:
        self.job_id = job_id
        self.name = name
        self.pace = pace
        self.limits = limits
        self.interval = interval
        self.queued_since = now - waited  # queue time counts from the submit (also across an --attach)
        self.submitted_wall = submitted_wall
        self.watch = Watch()

    def start(self) -> Next:
        """The first step: the job's state, FIRST_STATE_AFTER the submit (at once when attaching later)."""
        return Next(Ask.STATE, self.queued_since + FIRST_STATE_AFTER)

    def state_seen(self, status: JobStatus | None, now: float, as_of: float | None = None,
                   behind_siblings: bool = False) -> Decision:
        """The job list sent at `as_of` (default: now), after the previous answer, lists the job as
        `status`, or not at all. `behind_siblings`: the job is a task of a job array of which a task
        has started, so while it is pending it waits for what its siblings hold, not for the cluster:
        no queue timeout, no hopeless reason (cancelling it would take the whole array)."""
        watch = self.watch
        as_of = now if as_of is None else min(as_of, now)
        if status is None:
            return self._not_listed(now, as_of)
        watch.known_at = as_of
        if slurm_states.is_pending(status.state):
            return self._queued(status, now, behind_siblings)
        notice: Notice | None = None
        if watch.phase in (Phase.UNLISTED, Phase.QUEUED):
            if watch.reported is not None:  # it was seen waiting: say that the wait is over
                notice = Started(status.state, queue_seconds(status, self.submitted_wall))
            watch.phase = Phase.RUNNING
            watch.next_read = as_of + FIRST_READ_AFTER  # its output file may be a moment behind
        if slurm_states.is_terminal(status.state):
            self.pace.mark(self.name, False)
            return Decision(Finish(Ending.FINAL, status), notice)
        if watch.phase is Phase.ENDING:
            watch.end_checks += 1
            if watch.end_checks < len(END_CHECKS_AT):  # the job script has ended, Slurm does not know yet
                return Decision(Next(Ask.STATE, watch.end_seen_at + END_CHECKS_AT[watch.end_checks]), notice)
            watch.phase = Phase.RUNNING  # still not final: the line was the user's; follow on
            watch.next_read = now
        return Decision(Next(Ask.OUTPUT, max(now, watch.next_read)), notice)

    def output_read(self, text: str, *, chunked: bool = False, limited: bool = False, missing: bool = False,
                    now: float) -> Decision:
        """A poll of the output printed `text` ("" when nothing new); the reader is in the middle of a
        backlog (`chunked`) or stopped at max_output (`limited`, so the job-end line cannot be seen), or
        found no output file (`missing`: a job that Slurm reports running has not opened it yet)."""
        watch = self.watch
        if missing and not watch.recent and watch.missing_reads < MISSING_QUICK_READS:
            watch.missing_reads += 1  # the file comes within a second: not a quiet read yet
            floor = self.pace.floor(flowing=False)
            watch.next_read = now + (self.interval.minimum if floor <= EARLY_READ_EVERY else floor)
            return Decision(Next(Ask.OUTPUT, watch.next_read))
        flowing = bool(text)
        self.pace.mark(self.name, flowing)
        if flowing:
            found = has_end_marker(watch.recent, text)
            watch.recent = (watch.recent + text[-_MARKER_SPAN:])[-_MARKER_SPAN:]
            if found and now - watch.end_seen_at >= END_TRIGGER_EVERY:
                watch.phase, watch.end_seen_at, watch.end_checks = Phase.ENDING, now, 0
                return Decision(Next(Ask.STATE, now))  # check the state right away
        if chunked:  # a backlog over the output cap: the next block at once, or at the entry's share
            return Decision(Next(Ask.OUTPUT, now + self.pace.backlog_pause()))
        watch.delay = self.interval.next(watch.delay, flowing, self.pace.floor(flowing))
        if not flowing and not watch.recent and not limited:  # nothing printed yet: a quiet start
            watch.quiet_reads += 1
            if watch.quiet_reads >= QUIET_START_READS or watch.delay > QUICK_READ_MAX:
                watch.delay = self.pace.quiet_cycle()
        watch.next_read = now + watch.delay
        if flowing:
            state_at = watch.known_at + STATE_CHECK_EVERY
        elif (watch.recent and watch.delay < self.interval.maximum) or limited:
            state_at = watch.next_read  # backing off after output (or the end line cannot be read): the state with each poll
        else:
            state_at = watch.known_at + max(STATE_CHECK_EVERY, watch.delay)
        if state_at <= watch.next_read:
            return Decision(Next(Ask.STATE, state_at))
        return Decision(Next(Ask.OUTPUT, watch.next_read))

    def _not_listed(self, now: float, as_of: float) -> Decision:
        """Unknown right after submit is normal; later (or when attaching late) the job was purged
        (MinJobAge): its output file is still worth printing, but the verdict is unknown."""
        if self.watch.phase is Phase.UNLISTED and now - self.queued_since < self.limits.not_found_grace:
            return Decision(Next(Ask.STATE, as_of + NOT_FOUND_POLL))
        why = ("is not known to Slurm (purged after it ended, or never queued)" if self.watch.phase is Phase.UNLISTED
               else "vanished from Slurm before a final state was seen")
        return Decision(Finish(Ending.UNKNOWN, None, f"job {self.job_id} {why}; its final state is unknown"))

    def _queued(self, status: JobStatus, now: float, behind_siblings: bool = False) -> Decision:
        watch = self.watch
        watch.phase = Phase.QUEUED
        waited = now - self.queued_since
        key = (slurm_states.base_state(status.state), status.reason)
        notice = None
        if key != watch.reported or now - watch.reported_at >= PENDING_REPORT_EVERY:
            notice = Waiting(status.state, status.reason, waited)
            watch.reported, watch.reported_at = key, now
        if slurm_states.hopeless_pending(status.reason) and not behind_siblings:
            return Decision(Finish(Ending.GIVE_UP, status, f"pending with reason {slurm_states.describe_pending(status.reason)}"
                                   "; it can never start, job cancelled"), notice)
        timeout = self.limits.queue_timeout
        if timeout is not None and waited >= timeout and not behind_siblings:
            return Decision(Finish(Ending.GIVE_UP, status, f"still {status.state} after {format_duration(waited)} "
                                   f"in the queue (queue_timeout {format_duration(timeout)}); job cancelled",
                                   queue_seconds=waited), notice)
        # behind started siblings the task waits for them, not for the cluster: at the idle share's pace
        at = watch.known_at + max(watch.pending_pause, self.pace.floor(flowing=False) if behind_siblings else 0.0)
        if timeout is not None:  # look again right when the queue timeout is reached
            at = min(at, max(now + 0.5, self.queued_since + timeout))
        watch.pending_pause = min(watch.pending_pause * PENDING_POLL_GROWTH, PENDING_POLL_MAX)
        return Decision(Next(Ask.STATE, at), notice)


def queue_seconds(status: JobStatus, submitted_wall: float | None) -> float | None:
    """Time in the queue: from the submit to Slurm's start time (never to when ci-runner first saw
    the job running, which depends on its polling). None while Slurm has no start time (a pending
    job's `start` may be an estimate) or when the submit time is unknown."""
    if status.start is None or submitted_wall is None or slurm_states.is_pending(status.state):
        return None
    return max(0.0, status.start - submitted_wall)


def has_end_marker(before: str, text: str) -> bool:
    """An END_MARKERS line start in `text`, or across `before` (the end of the previous text) and `text`."""
    joint = before[-_MARKER_SPAN:] + text[:_MARKER_SPAN]
    return any(marker in joint or marker in text for marker in END_MARKERS)
