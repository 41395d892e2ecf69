"""What every sandbox job backend offers, and the FirecREST v2 job dicts they all return.

The dict shapes are those of a real FirecREST v2 server in SSH mode on Slurm without accounting
(see /work/shared/firecrest-v2-examples.json): `job_dict` is the only place that builds them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

UNEXPECTED_SLURM = "Unexpected Slurm command response."
# The real server's test for an accounting/QOS refusal in sbatch's stderr (sbatch_command.py).
QUOTA_ERROR = re.compile(r"\b(?:QOS|Assoc)(?:Max|Min)\w*Limit\b", re.IGNORECASE)


class BackendError(Exception):
    """A job operation failed; `status` and `message` become the HTTP error the server returns."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Backend(Protocol):
    """A job scheduler behind the sandbox: real Slurm or local processes."""

    name: str

    def submit(self, script: str, working_dir: str, env: Mapping[str, str], pending_delay: float = 0.0) -> str:
        """Queue `script` (run in `working_dir` with `env` added to the inherited environment); return the job id."""
        ...

    def jobs(self, job_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """FirecREST v2 job dicts for `job_ids` (unknown ids omitted), or for all jobs this backend submitted."""
        ...

    def metadata(self, job_id: str) -> dict[str, Any] | None:
        """`{jobId, script, standardInput, standardOutput, standardError}`, or None for an unknown job."""
        ...

    def cancel(self, job_id: str, uid: int) -> None:
        """Cancel the pending or running job; a job cancelled this way reads "CANCELLED by <uid>".

        Anything else fails the way `scancel --verbose` does behind the real server (BackendError 500):
        a finished job "Job/step already completing or completed", an unknown or forgotten numeric id
        "Invalid job id specified", any other id "Invalid job id <id>".
        """
        ...

    def close(self) -> None:
        """Stop background work and end the jobs this backend still runs."""
        ...


@dataclass(frozen=True)
class JobRecord:
    """What the backends know about one job; `job_dict` turns it into the API's JSON.

    Times are epoch seconds (`start`, `end`) or seconds (`elapsed`, `suspended`, `limit`); None where
    the real server reports null (e.g. `start` of a pending job, `limit` of a job without time limit).
    """

    job_id: str
    name: str
    state: str
    reason: str
    exit_code: int | None
    signal: int | None
    working_directory: str
    user: str
    group: str
    elapsed: int = 0
    start: int | None = None
    end: int | None = None
    suspended: int | None = None
    limit: int | None = None
    account: str = ""
    cluster: str = "local"
    partition: str = "debug"
    nodes: str = ""
    allocation_nodes: int = 1
    priority: int | None = None


def job_dict(record: JobRecord) -> dict[str, Any]:
    """The FirecREST v2 `jobs[i]` dict for `record`, keys in the order the real server sends them."""
    return {
        "jobId": record.job_id,
        "name": record.name,
        "status": {
            "state": record.state,
            "stateReason": record.reason,
            "exitCode": record.exit_code,
            "interruptSignal": record.signal,
        },
        "tasks": [],
        "time": {
            "elapsed": record.elapsed,
            "start": record.start,
            "end": record.end,
            "suspended": record.suspended,
            "limit": record.limit,
        },
        "account": record.account,
        "allocationNodes": record.allocation_nodes,
        "cluster": record.cluster,
        "group": record.group,
        "nodes": record.nodes,
        "partition": record.partition,
        "killRequestUser": None,
        "user": record.user,
        "workingDirectory": record.working_directory,
        "priority": record.priority,
    }


def metadata_dict(job_id: str, script: str, stdin: str, stdout: str, stderr: str) -> dict[str, Any]:
    """The FirecREST v2 `jobs[i]` dict of `GET /compute/{system}/jobs/{id}/metadata`."""
    return {
        "jobId": job_id,
        "script": script,
        "standardInput": stdin,
        "standardOutput": stdout,
        "standardError": stderr,
    }


def cancelled_state(uid: int | None) -> str:
    """The state text sacct shows for a cancelled job; without a known canceller, our own uid."""
    return f"CANCELLED by {os.getuid() if uid is None else uid}"


def check_env(env: Mapping[str, str]) -> None:
    """Refuse environment values that `sbatch --export=ALL,K=V,...` would silently split at a comma.

    The real server passes them on and sbatch mangles them (`K=a,b` exports K=a and a variable named b);
    the sandbox says so instead (400), on both backends.
    """
    for key, value in env.items():
        if not key or "=" in key or "," in key:
            raise BackendError(400, f"Invalid environment variable name for sbatch --export: {key!r}")
        if "," in value:
            raise BackendError(
                400,
                f"Environment variable {key} contains a comma, which sbatch --export=ALL,K=V,... "
                "would split into separate variables; pass it another way (e.g. in the script).",
            )


def slurm_command_error(exit_status: int, stderr: str) -> BackendError:
    """The 500 the real server returns when a Slurm command fails: its stderr verbatim, newlines kept."""
    return BackendError(500, f"{UNEXPECTED_SLURM} exit_status:{exit_status} std_err:{stderr}")


def sbatch_failure(exit_status: int, stderr: str) -> BackendError:
    """What the real server answers when sbatch fails: 403 for a QOS/association limit, else 500."""
    if QUOTA_ERROR.search(stderr):
        return BackendError(403, f"Job submission rejected: accounting/QOS policy limit exceeded. {stderr.strip()}")
    return slurm_command_error(exit_status, stderr)
