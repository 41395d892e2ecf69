"""Memory while streaming (bench row 7, issue 12: at most 100 MB while streaming 1 GiB).

Peak RSS is the benchmark's to measure; these tests pin the mechanisms that keep it flat, with
tracemalloc: a read's answer is freed when its reader drops it (not at the garbage collector's next
full pass), the reader keeps no copy of an ASCII text it emitted, and a reporter prints a large chunk
in pieces. Correctness of the pieces is checked against the plain computation they replace.
"""

from __future__ import annotations

import asyncio
import gc
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_runner.budget import RequestBudget
from ci_runner.cluster import Cluster, RetryPolicy
from ci_runner.credentials import Credentials
from ci_runner.reporters.text import LineBuffer
from ci_runner.sandbox.server import Sandbox, SandboxOptions, start_sandbox
from ci_runner.recent_bytes import OVERLAP, RecentBytes
from ci_runner.utf8_offsets import REPLACEMENT, utf8_len

MIB = 1 << 20


@pytest.fixture
def local_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    root = tmp_path / "cluster"
    root.mkdir()
    sb = start_sandbox(SandboxOptions(root=root, backend="local"))
    try:
        yield sb
    finally:
        sb.stop()


def test_read_answers_are_freed_without_the_cycle_collector(local_sandbox: Sandbox) -> None:
    """httpx's responses and their streams refer to each other; ten 512 KiB answers must not stay."""
    path = local_sandbox.root / "out.txt"
    path.write_bytes(b"x" * (2 * MIB))

    async def main() -> int:
        async with Cluster(Credentials.from_env(local_sandbox.env()), budget=RequestBudget(10_000),
                           retry=RetryPolicy(request_timeout=10)) as cluster:
            await cluster.view(str(path), 0, MIB // 2)  # warm up: connection, token, imports
            gc.collect()
            gc.disable()
            try:
                tracemalloc.start()
                before = tracemalloc.get_traced_memory()[0]
                for block in range(10):
                    text = await cluster.view(str(path), (block % 3) * (MIB // 2), MIB // 2)
                    assert len(text) == MIB // 2
                del text
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
                gc.enable()
            return grown

    assert asyncio.run(main()) < MIB  # each answer held on would add 0.5 MiB (body) or more


def test_recent_bytes_keep_no_copy_of_ascii_text() -> None:
    recent = RecentBytes(2 * MIB)
    text = "y" * (2 * MIB - 1) + "\n"
    tracemalloc.start()
    try:
        recent.add(text, 0, len(text))
        recent.add(text, len(text), 2 * len(text))
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept < 64 * 1024
    assert recent.chars_since(2 * len(text), MIB) == MIB
    assert recent.overlap(2 * len(text)) == text[-OVERLAP:].encode()


def _server_chars(data: bytes) -> int:
    return len(data.decode("utf-8", "replace"))


@pytest.mark.parametrize("seed", range(5))
def test_recent_bytes_count_what_the_servers_decode_counts(seed: int) -> None:
    """Against the bytes themselves: the characters the server counts in the last `need` bytes, and
    the overlap (the last ≤ OVERLAP bytes from a character boundary), across texts of mixed kinds."""
    rng = random.Random(seed)
    limit = rng.choice([5, 16, 40])
    recent = RecentBytes(limit)
    known = b""  # the exact bytes before `end` that `recent` should know (its last `limit`)
    end = 0
    for _ in range(60):
        text = "".join(rng.choice("ab\n" if rng.random() < 0.5 else "aé€𝄞\n") for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.15:
            text += REPLACEMENT + "tail"
            data = b"\xff" + b"tail"  # what follows the last U+FFFD is exact
            recent.add(text, end, end + utf8_len(text))
            known, end = data[1:], end + utf8_len(text)
        else:
            recent.add(text, end, end + utf8_len(text))
            if text:
                known, end = (known + text.encode())[-limit:], end + utf8_len(text)
        for need in range(limit + 2):
            expected = _server_chars(known[len(known) - need:]) if need <= len(known) else None
            assert recent.chars_since(end, need) == (0 if need == 0 else expected)
        tail = known[-OVERLAP:]
        start = next((i for i, byte in enumerate(tail) if byte & 0xC0 != 0x80), len(tail))
        assert recent.overlap(end) == tail[start:]
        assert recent.overlap(end + 1) == b"" and recent.chars_since(end + 1, 1) is None


def test_recent_bytes_forget_a_text_that_does_not_span_its_bytes() -> None:
    recent = RecentBytes(16)
    recent.add("abc", 0, 3)
    recent.add("é", 3, 5)
    assert recent.chars_since(5, 5) == 4
    recent.add("xyz", 5, 9)  # 3 bytes said to span 4: not exact
    assert recent.chars_since(9, 1) is None and recent.overlap(9) == b""


def test_utf8_len_is_the_encoded_length() -> None:
    rng = random.Random(3)
    for length in (0, 1, 1000, 70_000, 140_001):
        text = "".join(rng.choice("aé€𝄞") for _ in range(length))
        assert utf8_len(text) == len(text.encode("utf-8"))
    assert utf8_len("x" * 100) == 100


def test_line_batches_are_the_lines_feed_gives() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        pieces, whole = LineBuffer(), LineBuffer()
        for _ in range(4):
            text = "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 40)))
            size = rng.randint(1, 12)
            batches = list(pieces.batches(text, size))
            assert all(batches)
            assert [line for batch in batches for line in batch] == whole.feed(text)
        assert pieces.flush() == whole.flush()


def test_line_batches_are_bounded() -> None:
    text = ("z" * 99 + "\n") * 10_000  # 1 MB of lines
    batches = list(LineBuffer().batches(text, 64 * 1024))
    assert max(sum(len(line) + 1 for line in batch) for batch in batches) <= 64 * 1024
    assert sum(len(batch) for batch in batches) == 10_000
