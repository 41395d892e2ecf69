"""What `ci-runner run` holds while it follows its jobs: the options, the shared services (cluster,
reporter, state file, observer, pace) and each entry's and packed job's bookkeeping.

Data only: runner.py (the run), following.py (one job) and packed_run.py (a packed job) act on it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ci_runner import pack as packed
from ci_runner.config_defaults import DEFAULT_CLEANUP, DEFAULT_MAX_ARTIFACT_SIZE, DEFAULT_MAX_OUTPUT, DEFAULT_RESUBMIT
from ci_runner.api import SERVER_OUTPUT_CAP
from ci_runner.stream import DEFAULT_TAIL_BYTES

if TYPE_CHECKING:
    from ci_runner.api import JobStatus
    from ci_runner.cluster import Cluster
    from ci_runner.config import Config
    from ci_runner.observer import RunObserver
    from ci_runner.poller import Clock, FollowLimits, RunPace
    from ci_runner.job_spec import JobSpec, Submission
    from ci_runner.reporters.base import Reporter
    from ci_runner.statefile import StateFile
    from ci_runner.slurm_states import Outcome
    from ci_runner.stream import OutputReader
    from ci_runner.transfer import SourcePlan

TAIL_LINES = 20
TAIL_LINE_CHARS = 4096        # a summary shows at most this much of one (very long) line


@dataclass(frozen=True)
class RunOptions:
    """Everything `run` needs besides the specs. Durations in seconds."""

    run_id: str
    workdir: str
    state_file: Path
    system: str = ""
    source: SourcePlan | None = None  # checkout: upload
    queue_timeout: float | None = None
    max_concurrent_submits: int = 4
    resubmit: int = DEFAULT_RESUBMIT  # automatic resubmits on infrastructure states
    attach: bool = False             # resume following the jobs of the state file
    artifacts: tuple[str, ...] = ()
    junit: tuple[str, ...] = ()
    artifacts_dir: Path = Path("ci-runner-artifacts")
    cleanup: bool = DEFAULT_CLEANUP
    not_found_grace: float = 60.0    # "job not found" right after submit is normal this long
    cancel_deadline: float = 2.0     # SIGINT/SIGTERM: every cancel request must be sent within this
    max_output: int = DEFAULT_MAX_OUTPUT  # bytes printed per job before skipping to the tail of its output
    max_artifact_size: int = DEFAULT_MAX_ARTIFACT_SIZE  # larger artifacts are skipped with a warning
    tail_bytes: int = DEFAULT_TAIL_BYTES  # most bytes of the tail printed after a job went over max_output
    output_cap: int = SERVER_OUTPUT_CAP  # the system's max_ops_file_size: reads stay under it

    @classmethod
    def from_config(cls, config: Config, **overrides: object) -> RunOptions:
        """Options taken from the configuration; keyword arguments (run_id, workdir, ...) complete/override."""
        values: dict[str, object] = {
            "system": config.system,
            "queue_timeout": config.queue_timeout,
            "resubmit": config.resubmit,
            "artifacts": tuple(config.artifacts) + tuple(g for g in config.junit if g not in config.artifacts),
            "junit": tuple(config.junit),
            "cleanup": config.cleanup,
            "max_output": config.max_output,
            "max_artifact_size": config.max_artifact_size,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RunContext:
    """The services every part of the run shares (one of each per run)."""

    cluster: Cluster
    reporter: Reporter
    options: RunOptions
    state: StateFile
    observer: RunObserver
    pace: RunPace                    # the followers' share of the budget
    limits: FollowLimits
    clock: Clock
    submit_slots: asyncio.Semaphore


@dataclass
class Attempt:
    """What following one job produced."""

    status: JobStatus | None
    outcome: Outcome
    message: str
    queue_seconds: float | None = None
    run_seconds: float | None = None


@dataclass
class EntryProgress:
    """Mutable per-entry bookkeeping of the run (a packed job is followed as one, see `pack`)."""

    spec: JobSpec
    job_id: str | None = None
    output_bytes: int = 0
    submitted_wall: float | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    partial: str = ""  # the end (≤ TAIL_LINE_CHARS) of the printed text after the last newline
    partial_bytes: int = 0  # UTF-8 length of the whole unfinished line (the reporter still holds it)
    limit_warned: bool = False  # the max_output warning was printed for the current job
    status: JobStatus | None = None  # the current job's last known state
    reader: OutputReader | None = None  # the current job's output reader
    pack: PackProgress | None = None  # set for a packed job followed like an entry: its output is the stream

    @property
    def name(self) -> str:
        return self.spec.entry.name


@dataclass
class PackProgress:
    """A packed job (pack.py) while the run follows it: its entries by step, the stream's
    demultiplexer, and each entry's attempt once its end record (or the job's end) decided it."""

    submission: Submission
    job: EntryProgress              # the packed job, followed like an entry: its reader reads the stream
    members: tuple[EntryProgress, ...]  # by step
    demux: packed.StreamDemux
    decided: dict[str, asyncio.Future[Attempt]]
    job_text: str = ""              # the job's own lines in the last chunk read (the follower judges them)
    end_status: int | None = None   # the status of the job's end line when it is the last thing read
    held: dict[int, packed.StepEnd] = field(default_factory=dict)  # ends decided by how the job ends
    task: asyncio.Task[None] | None = None
    artifacts: asyncio.Task[dict[str, bytes] | None] | None = None  # its tar of its entries' artifact tars

    def undecided(self) -> list[EntryProgress]:
        return [self.members[step] for step in self.undecided_steps()]

    def undecided_steps(self) -> list[int]:
        return [step for step, member in enumerate(self.members) if not self.decided[member.name].done()]
