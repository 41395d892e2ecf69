"""What the FirecREST v2 server answers: its errors, its limits and the answers a run reads.

The lowest layer of the API knowledge: cluster.py raises these errors and builds these answers; the
reader, the transfers, the observer and the runner catch, size their requests and read them, so they
import from here and never need cluster.py for it (only `Cluster` itself talks to the server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ci_runner.errors import InfraError

SERVER_OUTPUT_CAP = 5 * 1024 * 1024  # default max_ops_file_size: ops output at or above it is refused (413)
MAX_DIRECT_UPLOAD = 5 * 1024 * 1024 - 1  # the server's direct-upload limit (max_ops_file_size)
# ops/download is base64 over SSH inside the max_ops_file_size buffer (about 3.75 MiB at 5 MiB); stay below.
MAX_DIRECT_DOWNLOAD = 3 * 1024 * 1024
RETRYABLE_STATUSES = frozenset({408, 424, 500, 502, 503, 504})  # may answer otherwise when asked again


class ApiError(InfraError):
    """FirecREST answered with an unexpected status (after retries)."""

    def __init__(self, message: str, status: int | None = None, server_message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class RemoteFileMissing(ApiError):
    """The remote file does not exist (404 'No such file or directory')."""


class OutputTooLarge(ApiError):
    """The read was too large for one answer: it reached the server's output cap (413), or, for a
    `tail` (unbounded), the server's command timeout (408, sometimes 500). Read a smaller range."""


class SlurmRefused(ApiError):
    """FirecREST ran the Slurm command and the command refused (its stderr in `server_message`)."""


@dataclass(frozen=True)
class SystemInfo:
    """What a run needs from a system's entry in `/status/systems`."""

    name: str
    default_workdir: str | None  # the file system marked defaultWorkDir, else the first; None: none listed
    output_cap: int  # dataOperation.max_ops_file_size: ops output at or above it is refused (413)

    @classmethod
    def from_api(cls, entry: Mapping[str, Any]) -> SystemInfo:
        filesystems = [fs for fs in entry.get("fileSystems") or [] if isinstance(fs, dict) and fs.get("path")]
        marked = [fs for fs in filesystems if fs.get("defaultWorkDir")]
        chosen = (marked or filesystems)[0] if filesystems else None
        data_operation = entry.get("dataOperation")
        cap = data_operation.get("max_ops_file_size") if isinstance(data_operation, dict) else None
        output_cap = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else SERVER_OUTPUT_CAP
        return cls(str(entry.get("name", "")), str(chosen["path"]) if chosen else None, output_cap)


@dataclass(frozen=True)
class JobStatus:
    """One job as FirecREST reports it. `state` is verbatim ('CANCELLED by 1001')."""

    job_id: str
    state: str
    reason: str | None
    exit_code: int | None
    signal: int | None
    start: float | None
    end: float | None
    elapsed: float | None
    name: str | None = None

    @classmethod
    def from_api(cls, job: Mapping[str, Any]) -> JobStatus:
        status = job.get("status") or {}
        times = job.get("time") or {}
        state = status.get("state") or ""
        if isinstance(state, list):
            state = ",".join(state)
        return cls(
            job_id=str(job.get("jobId")),
            state=str(state),
            reason=status.get("stateReason"),
            exit_code=status.get("exitCode"),
            signal=status.get("interruptSignal"),
            start=times.get("start"),
            end=times.get("end"),
            elapsed=times.get("elapsed"),
            name=job.get("name"),
        )
