"""The real, unmodified FirecREST v2 server of our development setup (../shared/fcv2-local), as a
test fixture: where it runs, its credentials, its logs, and Slurm-side checks and clean-up.

.ci/run starts it (after Slurm, with 90 s tokens); on a user's machine without ../shared the tier
skips, in CI it fails instead (a silent skip would hide the very tests that matter).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

FCV2_HOME = Path(os.environ.get("FCV2_HOME", "/var/tmp/fcv2-local"))
ENV_FILE = FCV2_HOME / "state" / "env"
LOGS = FCV2_HOME / "state" / "logs"
TOKEN_TTL = 90  # .ci/run starts the harness with FCV2_TOKEN_TTL=90: every long test renews tokens


@dataclass(frozen=True)
class RealFirecrest:
    """A running real FirecREST v2: the variables a client needs, the home of its user, its logs."""

    variables: dict[str, str]

    def env(self) -> dict[str, str]:
        """FIRECREST_URL, AUTH_TOKEN_URL, client id/secret and system (the sandbox handle's shape)."""
        return {k: v for k, v in self.variables.items() if k != "FIRECREST_USER" and k != "FIRECREST_HOME"}

    @property
    def system(self) -> str:
        return self.variables["FIRECREST_SYSTEM"]

    @property
    def home(self) -> str:
        return self.variables["FIRECREST_HOME"]

    def server_log_lines(self) -> list[str]:
        return _lines(LOGS / "firecrest.log")

    def token_requests(self) -> int:
        return sum(1 for line in _lines(LOGS / "token_server.log") if '"POST /token' in line)

    def token_lifetime(self) -> float:
        """`expires_in` of a token issued now (the harness's FCV2_TOKEN_TTL)."""
        form = urllib.parse.urlencode({"grant_type": "client_credentials",
                                       "client_id": self.variables["FIRECREST_CLIENT_ID"],
                                       "client_secret": self.variables["FIRECREST_CLIENT_SECRET"]}).encode()
        with urllib.request.urlopen(self.variables["AUTH_TOKEN_URL"], data=form, timeout=10) as answer:
            return float(json.load(answer)["expires_in"])


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def _read_env(path: Path) -> dict[str, str]:
    variables = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key and value:
            variables[key.strip()] = value.strip().strip("'\"")
    return variables


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/status/liveness/", timeout=5):
            return True
    except OSError as error:
        return getattr(error, "code", None) is not None  # an HTTP error status still means it is up


def find_real_firecrest() -> RealFirecrest:
    """The running harness, or skip (fail in CI) with what to do."""
    why = None
    if not ENV_FILE.exists():
        why = f"no {ENV_FILE}: start ../shared/fcv2-local/start.sh (with FCV2_TOKEN_TTL={TOKEN_TTL})"
    else:
        server = RealFirecrest(_read_env(ENV_FILE))
        if not _answers(server.variables.get("FIRECREST_URL", "")):
            why = f"the real FirecREST at {server.variables.get('FIRECREST_URL')} does not answer"
        else:
            return server
    if os.environ.get("CI"):
        pytest.fail(f"the real-server tier must run in CI: {why}")
    pytest.skip(why)


def slurm_state(job_id: str) -> str:
    """The job's state as Slurm itself shows it ('' once Slurm has forgotten it)."""
    shown = subprocess.run(["scontrol", "show", "job", job_id, "-o"], capture_output=True, text=True, timeout=15)
    for word in shown.stdout.split():
        if word.startswith("JobState="):
            return word.removeprefix("JobState=")
    return ""


def scancel(job_ids: Sequence[str]) -> None:
    """Test clean-up: cancel the jobs (as root, through Slurm, not through the API under test)."""
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=15)
