"""Answers the sandbox gives the way the real, unmodified FirecREST v2 server gives them, as measured on
it (fcv2-local harness, Slurm 22.05, 5 MiB output limit, 5 s command timeout):

- ops output beyond the limit: 413 only while the SSH channel still takes the rest (about 2 MiB more),
  then 500 "('Channel not open for sending',)" (user null) and beyond about 3.2 MiB more 408
  "Command execution timeout limit exceeded.", both once the command timeout expired.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from firecrest_clients import bearer, raw_client, running_sandbox

from ci_runner.sandbox.files import CHANNEL_SLACK, CLOSED_SLACK
from ci_runner.sandbox.server import Sandbox

LIMIT = 4096
TIMEOUT = 0.3
USER = pwd.getpwuid(os.getuid()).pw_name


def error(message: str, user: str | None = USER) -> dict[str, Any]:
    return {"errorType": "error", "message": message, "causedBy": None, "data": None, "user": user}


TIMED_OUT = error("Command execution timeout limit exceeded.")
TOO_LARGE = error("Command output exceeded buffer limit.")
CHANNEL_CLOSED = error("('Channel not open for sending',)", user=None)


# -- 1. large ops reads -------------------------------------------------------------------------

@pytest.fixture
def files_sb(tmp_path: Path) -> Iterator[Sandbox]:
    yield from running_sandbox(tmp_path, "local", max_ops_size=LIMIT, command_timeout=TIMEOUT)


def timed_get(sb: Sandbox, op: str, **params: object) -> tuple[int, Any, float]:
    with raw_client(sb) as raw:
        began = time.monotonic()
        answer = raw.get(f"/filesystem/{sb.system}/ops/{op}", params=params, headers=bearer(sb))
        return answer.status_code, answer.json(), time.monotonic() - began


@pytest.mark.parametrize(("beyond", "status", "body"), [
    (-1, 200, None),
    (0, 413, TOO_LARGE),
    (CHANNEL_SLACK, 413, TOO_LARGE),
    (CHANNEL_SLACK + 4096, 500, CHANNEL_CLOSED),
    (CLOSED_SLACK + 4096, 408, TIMED_OUT),
    (4 * CLOSED_SLACK, 408, TIMED_OUT),
], ids=["below", "at-limit", "channel-full", "channel-closed", "stalled", "far-beyond"])
def test_tail_of_a_large_file_answers_like_the_real_server(files_sb: Sandbox, beyond: int, status: int,
                                                         body: dict[str, Any] | None) -> None:
    path = files_sb.root / "big.out"
    path.write_bytes(b"a" * (LIMIT + beyond))
    code, answer, took = timed_get(files_sb, "tail", path=str(path), bytes=1, skipHeading=True)
    assert code == status
    if body is not None:
        assert answer == body
    assert (took >= TIMEOUT) == (status in (408, 500)), took  # the real server answers those when its timeout expires


def test_view_head_and_download_share_the_output_rules(files_sb: Sandbox) -> None:
    path = files_sb.root / "big.out"
    path.write_bytes(b"a" * (LIMIT + CLOSED_SLACK + 4096))
    p = str(path)
    half = LIMIT // 2
    assert timed_get(files_sb, "view", path=p, size=half - 1)[:2] == (200, {"output": "a" * (half - 1)})
    assert timed_get(files_sb, "view", path=p, size=half)[:2] == (413, TOO_LARGE)  # 2 blocks read
    # The default size is the limit, so 2 blocks: 5 MiB beyond the limit on the real server (408), but
    # only LIMIT here, which the channel still takes (the slack is the SSH window, it does not scale).
    assert timed_get(files_sb, "view", path=p)[:2] == (413, TOO_LARGE)
    assert timed_get(files_sb, "view", path=p, offset=CLOSED_SLACK, size=LIMIT // 4)[0] == 200
    assert timed_get(files_sb, "head", path=p, bytes=LIMIT)[:2] == (413, TOO_LARGE)
    assert timed_get(files_sb, "head", path=p)[:2] == (408, TIMED_OUT)  # no newline: "10 lines" is everything
    assert timed_get(files_sb, "download", path=p)[:2] == (408, TIMED_OUT)
    assert timed_get(files_sb, "checksum", path=p)[0] == 200


def test_a_command_that_hangs_times_out_with_the_servers_message(files_sb: Sandbox) -> None:
    fifo = files_sb.root / "never-written"
    os.mkfifo(fifo)
    code, answer, took = timed_get(files_sb, "tail", path=str(fifo), bytes=1, skipHeading=True)
    assert (code, answer) == (408, TIMED_OUT)
    assert TIMEOUT <= took < TIMEOUT + 5


def test_systems_reports_the_command_timeout_in_whole_seconds(files_sb: Sandbox) -> None:
    with raw_client(files_sb) as raw:
        system = raw.get("/status/systems", headers=bearer(files_sb)).json()["systems"][0]
    assert system["ssh"]["timeout"]["commandExecution"] == 1
