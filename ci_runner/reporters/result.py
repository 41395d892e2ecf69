"""The per-entry result: what happened to one entry, built by the runner and read by every reporter."""

from __future__ import annotations

from dataclasses import dataclass

from ci_runner.slurm_states import Outcome


@dataclass(frozen=True)
class EntryResult:
    """What happened to one entry; built by the runner, read by every reporter."""

    entry: str
    job_id: str | None
    state: str                # final Slurm state text, or e.g. "NOT_SUBMITTED"
    exit_code: int | None     # the job's exit code (Slurm ExitCode R)
    outcome: Outcome
    queue_seconds: float | None
    run_seconds: float | None
    output_bytes: int
    remote_dir: str
    message: str = ""         # one line: why it failed / reason
    tail: str = ""            # last lines of the output (for summaries of failed entries)
    artifacts_dir: str | None = None
    junit_files: tuple[str, ...] = ()
