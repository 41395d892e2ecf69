"""What the FirecREST v2 server answers: its errors and its limits.

The lowest layer of the API knowledge: cluster.py raises these errors and the readers and transfers
catch them and size their requests by these limits, so both import from here and never each other.
"""

from __future__ import annotations

from ci_runner.errors import InfraError

SERVER_OUTPUT_CAP = 5 * 1024 * 1024  # default max_ops_file_size: ops output at or above it is refused (413)
MAX_DIRECT_UPLOAD = 5 * 1024 * 1024 - 1  # the server's direct-upload limit (max_ops_file_size)
# ops/download is base64 over SSH inside the max_ops_file_size buffer (about 3.75 MiB at 5 MiB); stay below.
MAX_DIRECT_DOWNLOAD = 3 * 1024 * 1024


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
