"""OutputReader against a remote-file double with the exact FirecREST server semantics.

`RemoteBytes` is a test double of the *remote file*, not of our modules: `tail_from` is GNU
`tail --bytes=+N` decoded with errors="replace" and 413 at the output cap; `view` is the server's dd
command (2·size bytes from block offset//size, decoded, sliced by characters). Cluster-over-HTTP
tests live in test_cluster.py.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from ci_runner.api import OutputTooLarge, RemoteFileMissing
from ci_runner.recent_bytes import OVERLAP
from ci_runner.stream import MIN_BLOCK_SIZE, OutputReader
from ci_runner.utf8_offsets import (
    REPLACEMENT, TailSplit, _consume_block_per_character, consume_block, consume_view, split_tail,
)


class RemoteBytes:
    def __init__(self, data: bytes = b"", cap: int = 5 * 1024 * 1024, exists: bool = True) -> None:
        self.data = bytearray(data)
        self.cap = cap
        self.exists = exists
        self.calls: list[str] = []

    def _check(self) -> None:
        if not self.exists:
            raise RemoteFileMissing("No such file or directory")

    async def tail_from(self, path: str, offset: int) -> str:
        self.calls.append("tail")
        self._check()
        out = bytes(self.data[offset:])
        if len(out) >= self.cap:
            raise OutputTooLarge("Command output exceeded buffer limit.")
        return out.decode("utf-8", "replace")

    async def view(self, path: str, offset: int, size: int) -> str:
        self.calls.append("view")
        self._check()
        assert 0 < size <= self.cap and offset >= 0
        skip = offset // size
        window = bytes(self.data[skip * size: skip * size + 2 * size])
        if len(window) >= self.cap:
            raise OutputTooLarge("Command output exceeded buffer limit.")
        i = offset % size
        return window.decode("utf-8", "replace")[i: i + size]

    async def stat_size(self, path: str) -> int | None:
        self.calls.append("stat")
        return len(self.data) if self.exists else None


def expected(data: bytes) -> str:
    return data.decode("utf-8", "replace")


async def drained(reader: OutputReader) -> str:
    """Everything `drain_chunks` yields, joined (the runner prints it chunk by chunk)."""
    return "".join([text async for text in reader.drain_chunks()])


def drain_all(reader: OutputReader) -> str:
    return asyncio.run(drained(reader))


# -- pure pieces ---------------------------------------------------------------------------------

def test_split_tail_rules() -> None:
    assert split_tail("abc", None, False) == TailSplit("abc", 3, False)
    s = split_tail("ab\ufffd", None, False)
    assert (s.text, s.consumed, s.ambiguous) == ("ab", 2, False)  # trailing: withheld, waits for more bytes
    s = split_tail("ab\ufffd", None, True)
    assert (s.text, s.consumed, s.ambiguous) == ("ab", 2, True)  # final: needs a bracket
    s = split_tail("a\ufffdb", None, False)
    assert (s.text, s.consumed, s.ambiguous) == ("a", 1, True)
    s = split_tail("a\ufffdb", 5, False)
    assert (s.text, s.consumed, s.ambiguous) == ("a\ufffdb", 5, False)
    s = split_tail("é\ufffd", 4, False)  # stable but running: the trailing one may still complete
    assert (s.text, s.consumed, s.ambiguous) == ("é", 2, False)
    s = split_tail("é\ufffd", 4, True)
    assert (s.text, s.consumed, s.ambiguous) == ("é\ufffd", 4, False)


def test_consume_block_carries_the_straddling_character() -> None:
    data = "ab€cd".encode()  # € = 3 bytes at 2..4
    size = 4
    first = data[0:8].decode("utf-8", "replace")[:size]
    b = consume_block(first, 0, size, 0, 0)
    assert (b.text, b.offset, b.carry, b.eof) == ("ab€", 5, 1, False)
    second = data[4:12].decode("utf-8", "replace")[:size]
    assert second[0] == REPLACEMENT
    b2 = consume_block(second, 4, size, 5, 1)
    assert (b2.text, b2.offset, b2.eof) == ("cd", 7, True)


def test_consume_block_fast_path_equals_the_per_character_walk() -> None:
    """Valid UTF-8 blocks are consumed through the encoding (no per-character objects: a block is 2 MiB);
    the result must equal the character walk for every block phase, skip offset and carry."""
    rng = random.Random(7)
    for _ in range(3000):
        size = rng.randint(4, 40)
        start = rng.randint(0, 3) * size
        data = "".join(rng.choice(["a", "\n", "é", "€", "𝄞"]) for _ in range(rng.randint(0, 60))).encode()
        text = data[start:start + 2 * size].decode("utf-8", "replace")[:size]
        drop = len(text) - len(text.lstrip(REPLACEMENT))  # stray continuation bytes at the block start
        if REPLACEMENT in text[drop:]:
            continue
        skip_to = start + rng.randint(0, size)
        walk = _consume_block_per_character(text, drop, start + drop, size, start + size, skip_to, drop)
        assert consume_block(text, start, size, skip_to, drop) == walk


# -- reader --------------------------------------------------------------------------------------

def test_missing_file_is_not_an_error_and_offsets_are_bytes() -> None:
    remote = RemoteBytes(exists=False)
    reader = OutputReader(remote, "/out")

    async def main() -> list[str]:
        got = [await reader.poll()]
        remote.exists = True
        remote.data += "héllo\n".encode()
        got.append(await reader.poll())
        return got

    assert asyncio.run(main()) == ["", "héllo\n"]
    assert reader.offset == 7
    assert remote.calls == ["stat", "stat", "tail"]  # a file not read yet is asked its size first


def test_split_character_is_withheld_then_completed() -> None:
    remote = RemoteBytes("a€".encode()[:2])
    reader = OutputReader(remote, "/out")

    async def main() -> list[str]:
        got = [await reader.poll()]
        remote.data += "€".encode()[1:] + b"z"
        got.append(await reader.poll())
        return got

    assert asyncio.run(main()) == ["a", "€z"]
    assert reader.offset == 5


def test_at_eof_says_whether_the_last_read_took_every_byte_the_file_held() -> None:
    """A packed job's stream read to its end line needs no final listing only when that read ended
    at the file's end with every byte taken exactly (following.py): not after a missing file, a
    withheld character, a block of a backlog, or a head cut at max_output."""
    remote = RemoteBytes(exists=False, cap=64)
    reader = OutputReader(remote, "/out", block_size=8, output_cap=64, listing_first=lambda: False)

    async def main() -> list[bool]:
        seen = [(await reader.poll(), reader.at_eof)[1]]  # no file
        remote.exists, remote.data = True, bytearray(b"ab\n")
        seen.append((await reader.poll(), reader.at_eof)[1])  # all of it
        remote.data += "c€".encode()[:2]
        seen.append((await reader.poll(), reader.at_eof)[1])  # "c", the € still being written: withheld
        remote.data += "€".encode()[1:] + b"\n"
        seen.append((await reader.poll(), reader.at_eof)[1])  # its rest
        remote.data += b"x" * 100
        seen.append((await reader.poll(), reader.at_eof)[1])  # a block of a backlog over the cap
        while reader.offset < len(remote.data):
            await reader.poll()
        seen.append(reader.at_eof)  # its last block: short of the window, at the end
        return seen

    assert asyncio.run(main()) == [False, True, False, True, False, True]
    limited = OutputReader(RemoteBytes(b"0123456789\n"), "/out", limit=4)
    assert asyncio.run(limited.poll()) == "0123" and not limited.at_eof


def test_a_file_followed_alone_is_drained_by_one_read_when_that_takes_its_whole_rest() -> None:
    """No size first (one request, not two), unless the rest is over the cap: then its blocks, up to
    the size a `stat` gives; a file rewritten below the offset is read again from 0. With nothing known
    of the rest (never polled) the read is a block: a `tail` of a backlog past the cap only times out
    on the real server."""
    for data in (b"small\n", b"z" * 200):
        remote = RemoteBytes(data, cap=64)
        fresh = OutputReader(remote, "/out", block_size=8, output_cap=64, listing_first=lambda: False)
        assert drain_all(fresh) == data.decode() and "tail" not in remote.calls, remote.calls
        assert remote.calls[0] == "view" and (len(data) > 8 or remote.calls == ["view"]), remote.calls
    remote = RemoteBytes(b"ab\n", cap=64)
    reader = OutputReader(remote, "/out", block_size=8, output_cap=64, listing_first=lambda: False)
    assert asyncio.run(reader.poll()) == "ab\n"
    remote.data += b"cd\n"
    remote.calls.clear()
    assert drain_all(reader) == "cd\n" and remote.calls == ["tail"]
    remote.data += b"x" * 100
    remote.calls.clear()
    assert drain_all(reader) == "x" * 100 and remote.calls[:3] == ["tail", "view", "stat"]
    remote.data[:] = b"new\n" + b"y" * 110
    assert drain_all(reader) == "new\n" + "y" * 110 and reader.warnings


def test_ambiguous_replacement_resolved_by_size_bracket() -> None:
    # a genuine U+FFFD (3 bytes), an invalid byte (1), a truncated sequence (2) in the middle
    data = "x\ufffdy".encode() + b"\xff" + b"z" + "€".encode()[:2] + b"w\n"
    remote = RemoteBytes(data)
    reader = OutputReader(remote, "/out")

    async def main() -> str:
        return await reader.poll() + await reader.poll()

    assert asyncio.run(main()) == expected(data)
    assert reader.offset == len(data)
    assert remote.calls == ["stat", "tail", "stat", "tail", "stat"]  # the first read asks the size first


def test_growing_file_emits_prefix_until_stable() -> None:
    data = b"ok \xff more"
    remote = RemoteBytes(data)
    reader = OutputReader(remote, "/out")

    class Growing(RemoteBytes):
        pass

    async def main() -> list[str]:
        got = [await reader.poll()]
        # the file grows between the bracketing stats: nothing after the U+FFFD is confirmed yet
        original = remote.tail_from

        async def tail_and_grow(path: str, offset: int) -> str:
            text = await original(path, offset)
            remote.data += b"!"
            return text

        remote.tail_from = tail_and_grow  # type: ignore[method-assign]
        got.append(await reader.poll())
        remote.tail_from = original  # type: ignore[method-assign]
        got.append(await drained(reader))
        return got

    got = asyncio.run(main())
    assert got[0] == "ok " and got[1] == ""
    assert "".join(got) == expected(bytes(remote.data))
    assert reader.offset == len(remote.data)


@pytest.mark.parametrize("first, second", [
    (b"first run\n", b"new\n"),
    # The size alone cannot tell: the new content is already longer than what was read (a job's own
    # `truncate`, or a requeue that wrote fast). The overlap re-read before the offset can.
    (b"first-part-long-line-xxxxxxxxxxxxxxxxxxxx\n", b"second-part\nci-runner: job script exited with status 0\n"),
])
def test_a_truncated_or_rewritten_file_warns_once_and_is_read_again_from_0(
        first: bytes, second: bytes) -> None:
    remote = RemoteBytes(first)
    warnings: list[str] = []
    reader = OutputReader(remote, "/out", on_warning=warnings.append)

    async def main() -> list[str]:
        got = [await reader.poll()]
        remote.data = bytearray(second)
        for _ in range(5):
            got.append(await reader.poll())
        return got

    got = asyncio.run(main())
    assert got[0] == first.decode()
    assert "".join(got[1:]) == second.decode()
    assert len(warnings) == 1 and "reading it again from 0" in warnings[0]
    assert reader.warnings == warnings
    assert reader.offset == len(remote.data)


def test_backlog_over_the_cap_switches_to_blocks_and_back() -> None:
    rng = random.Random(3)
    alphabet = ["a", "b", "\n", "é", "€", "𝄞", " "]
    data = "".join(rng.choice(alphabet) for _ in range(3000)).encode()
    remote = RemoteBytes(data[:10], cap=256)
    reader = OutputReader(remote, "/out", block_size=100, output_cap=256)

    async def main() -> str:
        got = [await reader.poll()]  # tail mode, unaligned offset afterwards
        remote.data = bytearray(data)
        for _ in range(200):
            got.append(await reader.poll())
            if reader.offset == len(data) and not reader.chunked:
                break
        got.append(await drained(reader))
        return "".join(got)

    assert asyncio.run(main()) == expected(data)
    assert reader.offset == len(data)
    assert "view" in remote.calls
    assert not reader.warnings


def random_output(rng: random.Random, n: int, invalid: list[bytes], genuine_fffd: bool) -> bytes:
    pieces = ["x", "y", "\n", "é", "€", "𝄞"] + (["\ufffd"] if genuine_fffd else [])
    return b"".join(
        rng.choice(invalid) if rng.random() < 0.03 else rng.choice(pieces).encode() for _ in range(n)
    )


def follow_growing(rng: random.Random, data: bytes, remote: RemoteBytes, reader: OutputReader,
                   steps: tuple[int, ...] = (1, 1, 2, 3, 5, 17, 40, 150, 400, 900)) -> str:
    """Append `data` to the remote file in random steps, polling after each; then drain."""
    async def main() -> str:
        got: list[str] = []
        written = 0
        while written < len(data):
            step = rng.choice(steps)
            remote.data += data[written: written + step]
            written += step
            got.append(await reader.poll())
        got.append(await drained(reader))
        return "".join(got)

    return asyncio.run(main())


@pytest.mark.parametrize("seed", range(6))
def test_growing_file_with_every_kind_of_invalid_byte_exact(seed: int) -> None:
    """Tail mode: multi-byte characters cut at every position by random growth, invalid bytes, truncated
    sequences and genuine U+FFFD: output and offsets exact."""
    rng = random.Random(seed)
    data = random_output(rng, 1500, [b"\xff", b"\xfe", b"\x80", b"\xc3(", b"\xe2\x82(", b"\xf0\x9d\x84("], True)
    remote = RemoteBytes(b"")
    reader = OutputReader(remote, "/out", shrink_check_every=7)
    assert follow_growing(rng, data, remote, reader) == expected(data)
    assert reader.offset == len(data)
    assert not reader.warnings


@pytest.mark.parametrize("seed", range(6))
def test_growing_file_over_the_cap_exact(seed: int) -> None:
    """Small output cap, so big increments go through view blocks: split characters at block
    boundaries, invalid single bytes, random growth: output and offsets exact."""
    rng = random.Random(seed)
    data = random_output(rng, 1500, [b"\xff", b"\xfe", b"\x80", b"\xc3("], False)
    remote = RemoteBytes(b"", cap=300)
    reader = OutputReader(remote, "/out", block_size=64, output_cap=300, shrink_check_every=7)
    assert follow_growing(rng, data, remote, reader) == expected(data)
    assert reader.offset == len(data)
    assert "view" in remote.calls
    assert not reader.chunked


def test_genuine_replacement_character_in_a_big_backlog_is_reported() -> None:
    data = ("é" * 50 + "\ufffd" + "x" * 400).encode()
    remote = RemoteBytes(data, cap=300)
    reader = OutputReader(remote, "/out", block_size=64, output_cap=300)
    asyncio.run(reader.poll())
    asyncio.run(reader.poll())
    assert reader.chunked or reader.offset > 0
    assert any("counted as one byte" in w for w in reader.warnings)


@pytest.mark.parametrize("seed", range(4))
def test_every_block_boundary_inside_a_character(seed: int) -> None:
    """Valid UTF-8 read entirely in chunk mode: each phase of 2-, 3-, 4-byte characters against the boundary."""
    rng = random.Random(seed)
    data = ("a" * seed + "".join(rng.choice(["é", "€", "𝄞", "z"]) for _ in range(4000))).encode()
    remote = RemoteBytes(data, cap=300)
    reader = OutputReader(remote, "/out", block_size=97, output_cap=300)

    async def main() -> str:
        got = [await reader.poll() for _ in range(400)]
        return "".join(got) + await drained(reader)

    assert asyncio.run(main()) == expected(data)
    assert reader.offset == len(data)
    assert not reader.warnings


def test_mostly_ascii_amplification_is_low() -> None:
    rng = random.Random(11)
    lines = []
    for n in range(20000):
        line = f"test_{n} PASSED {'ok' * rng.randint(0, 30)}"
        if n % 50 == 0:
            line += " ✓ é"
        lines.append(line + "\n")
    data = "".join(lines).encode()
    remote = RemoteBytes(b"", cap=64 * 1024)
    reader = OutputReader(remote, "/out", block_size=16 * 1024, output_cap=64 * 1024)

    assert follow_growing(rng, data, remote, reader, (100, 5000, 40000, 150000)) == expected(data)
    assert "view" in remote.calls
    assert reader.bytes_read / len(data) <= 1.05


def multibyte_output(char: str, rng: random.Random, n: int) -> bytes:
    return "".join(rng.choice([char] * 9 + ["\n", "x"]) for _ in range(n)).encode()


@pytest.mark.parametrize("char", ["é", "€", "𝄞"])
def test_multibyte_backlog_amplification_is_low(char: str) -> None:
    """Chunk mode consumes each whole answer (S characters, up to 2·S bytes), not only up to the next
    S-aligned boundary: bytes fetched / bytes produced ≈ 1, not ≈ bytes per character."""
    data = multibyte_output(char, random.Random(1), 60000)
    remote = RemoteBytes(data, cap=64 * 1024)
    reader = OutputReader(remote, "/out", block_size=16 * 1024, output_cap=64 * 1024)
    assert asyncio.run(drained(reader)) == expected(data)
    assert reader.offset == len(data) and not reader.warnings and not reader.chunked
    assert remote.calls.count("view") >= len(data) // (2 * reader.block_size)  # really read in chunk mode
    assert reader.bytes_read / len(data) <= 1.05


@pytest.mark.parametrize("char", ["é", "€", "𝄞"])
def test_multibyte_growing_backlog_amplification_is_low(char: str) -> None:
    """Polls against random growth: switching between tail and chunk mode at unaligned offsets."""
    rng = random.Random(4)
    data = multibyte_output(char, rng, 60000)
    remote = RemoteBytes(b"", cap=64 * 1024)
    reader = OutputReader(remote, "/out", block_size=16 * 1024, output_cap=64 * 1024)

    assert follow_growing(rng, data, remote, reader, (101, 5001, 40001, 150001)) == expected(data)
    assert reader.offset == len(data) and not reader.warnings
    assert "view" in remote.calls
    assert reader.bytes_read / len(data) <= 1.05


def test_consume_view_takes_the_whole_answer_and_withholds_a_cut_character() -> None:
    """view(offset=k·S + j) with j the characters from k·S to the offset starts at the offset itself."""
    size = 8
    data = "aé€é𝄞é€ab".encode()  # 19 bytes; the window of block 0 is bytes 0..15, cutting € at 13..15
    offset = 3  # after "aé": 2 characters from the aligned start
    answer = data[0:2 * size].decode("utf-8", "replace")[2:2 + size]
    assert answer == "€é𝄞é" + REPLACEMENT
    b = consume_view(answer, offset, size, size)
    assert (b.text, b.offset, b.carry, b.eof) == ("€é𝄞é", 14, 0, False)  # 11 bytes: past the block end (8)
    rest = data[size:3 * size].decode("utf-8", "replace")[2:2 + size]  # bytes 8..14 = "𝄞é": 2 characters
    assert rest == "€ab"
    b = consume_view(rest, 14, 2 * size, size)
    assert (b.text, b.offset, b.eof) == ("€ab", 19, True)  # EOF inside the window: back to tail mode
    # an answer with a U+FFFD inside: the aligned rule (up to the block end, one byte per U+FFFD)
    b = consume_view("a\ufffdbcdefghij", 3, 8, 8)
    assert (b.text, b.offset, b.guessed) == ("a\ufffdbcd", 8, 1)


def test_block_size_must_fit_the_cap() -> None:
    with pytest.raises(ValueError):
        OutputReader(RemoteBytes(), "/out", block_size=2621440)


# -- drain after the job ended -------------------------------------------------------------------

def big_finished_output() -> bytes:
    rng = random.Random(5)
    return "".join(rng.choice(["abc ", "é", "€", "𝄞", "line\n"]) for _ in range(6000)).encode()


def test_drain_reads_a_finished_file_far_larger_than_fifty_blocks_to_its_end() -> None:
    """The job ended with a backlog of ~300 blocks (the old drain stopped after 50 reads, silently)."""
    data = big_finished_output()
    remote = RemoteBytes(data, cap=300)
    reader = OutputReader(remote, "/out", block_size=64, output_cap=300)
    assert len(data) > 250 * reader.block_size
    assert asyncio.run(drained(reader)) == expected(data)
    assert reader.offset == len(data)
    assert not reader.warnings


def test_drain_yields_block_sized_chunks_with_one_stat_and_bounded_reads() -> None:
    data = big_finished_output()
    remote = RemoteBytes(data, cap=300)
    reader = OutputReader(remote, "/out", block_size=64, output_cap=300)
    limit = reader.drain_read_limit(len(data))

    async def main() -> list[str]:
        return [text async for text in reader.drain_chunks()]

    chunks = asyncio.run(main())
    assert "".join(chunks) == expected(data) and reader.unread == 0
    assert max(len(c) for c in chunks) <= reader.block_size  # never the whole rest in one string
    assert remote.calls.count("stat") == 1  # the final size, asked once
    assert len(remote.calls) <= limit + 2  # + the stat and the tail answered 413


class TimingOutRemote(RemoteBytes):
    """The real server: a `tail` whose answer would reach the cap runs into the command timeout (408,
    after seconds), and so does a `view` whose window is over `view_limit` bytes."""

    def __init__(self, data: bytes, cap: int, view_limit: int | None = None) -> None:
        super().__init__(data, cap)
        self.view_limit = view_limit if view_limit is not None else cap
        self.timeouts: list[tuple[str, int]] = []

    async def tail_from(self, path: str, offset: int) -> str:
        if len(self.data) - offset >= self.cap:
            self.calls.append("tail")
            self.timeouts.append(("tail", offset))
            raise OutputTooLarge("Command execution timeout limit exceeded.", 408)
        return await super().tail_from(path, offset)

    async def view(self, path: str, offset: int, size: int) -> str:
        if 2 * size > self.view_limit:
            self.calls.append("view")
            self.timeouts.append(("view", size))
            raise OutputTooLarge("Command execution timeout limit exceeded.", 408)
        return await super().view(path, offset, size)


def test_a_backlog_written_before_the_first_read_is_never_asked_for_whole() -> None:
    """A job that printed 30 caps' worth before its output was first read: the first poll asks the size,
    then reads blocks; no `tail` runs into the server's timeout, while running or when draining."""
    data = big_finished_output()
    remote = TimingOutRemote(data, cap=300)
    reader = OutputReader(remote, "/out", block_size=64, output_cap=300)

    async def main() -> str:
        got = [await reader.poll() for _ in range(5)]
        return "".join(got) + await drained(reader)

    assert asyncio.run(main()) == expected(data)
    assert remote.calls[0] == "stat" and "view" in remote.calls
    assert remote.timeouts == [] and not reader.warnings and reader.unread == 0


def test_drain_of_an_unread_large_file_reads_blocks_sized_from_its_stat() -> None:
    data = big_finished_output()
    remote = TimingOutRemote(data, cap=300)
    reader = OutputReader(remote, "/out", block_size=64, output_cap=300)
    assert asyncio.run(drained(reader)) == expected(data)
    assert remote.timeouts == [] and reader.unread == 0


def test_a_tail_that_times_out_is_read_in_blocks_at_once_not_repeated() -> None:
    """The file grew past the cap between two polls of flowing output (no stat in between): the `tail`
    times out once, and the same read continues as `view` blocks."""
    data = big_finished_output()
    remote = TimingOutRemote(data[:50], cap=300)
    reader = OutputReader(remote, "/out", block_size=64, output_cap=300)

    async def main() -> str:
        got = [await reader.poll()]  # stat + tail: 50 bytes, output flows
        remote.data = bytearray(data)
        got += [await reader.poll() for _ in range(3)]
        return "".join(got) + await drained(reader)

    assert asyncio.run(main()) == expected(data)
    assert remote.timeouts == [("tail", 50 - OVERLAP)]
    assert reader.unread == 0


def test_a_view_that_times_out_halves_the_block_size() -> None:
    data = "€uro and more ".encode() * (MIN_BLOCK_SIZE // 2)  # multi-byte, ~6 blocks of MIN_BLOCK_SIZE
    remote = TimingOutRemote(data, cap=8 * MIN_BLOCK_SIZE, view_limit=2 * MIN_BLOCK_SIZE)
    reader = OutputReader(remote, "/out", block_size=3 * MIN_BLOCK_SIZE, output_cap=8 * MIN_BLOCK_SIZE)
    assert asyncio.run(drained(reader)) == expected(data)
    assert reader.block_size == MIN_BLOCK_SIZE and reader.unread == 0
    assert [kind for kind, _ in remote.timeouts] == ["view", "view"]  # 3 → 1.5 → 1 (floor) blocks


def test_drain_that_cannot_finish_reports_the_unread_bytes() -> None:
    """A server whose blocks stop making progress: drain gives up (bounded), warns, and says how much is missing."""
    data = b"x" * 5000

    class Stuck(RemoteBytes):
        async def view(self, path: str, offset: int, size: int) -> str:
            self.calls.append("view")
            return "" if offset >= 1024 else self.data[offset - offset % size:][:size].decode()

    remote = Stuck(data, cap=300)
    warnings: list[str] = []
    reader = OutputReader(remote, "/out", block_size=64, output_cap=300, on_warning=warnings.append)
    limit = reader.drain_read_limit(len(data))
    text = asyncio.run(drained(reader))
    assert text == "x" * reader.offset and reader.offset < len(data)
    assert reader.unread == len(data) - reader.offset
    assert len(warnings) == 1 and "output incomplete" in warnings[0] and str(reader.unread) in warnings[0]
    assert len(remote.calls) <= limit + 2


def test_drain_of_a_missing_file_reads_nothing_and_is_complete() -> None:
    remote = RemoteBytes(exists=False)
    reader = OutputReader(remote, "/out")
    assert asyncio.run(drained(reader)) == ""
    assert reader.unread == 0 and remote.calls == ["stat"]


def test_drain_resolves_a_trailing_cut_character_of_a_finished_job() -> None:
    data = "done é".encode() + "€".encode()[:2]
    remote = RemoteBytes(data)
    reader = OutputReader(remote, "/out")
    assert asyncio.run(drained(reader)) == expected(data)
    assert reader.offset == len(data) and reader.unread == 0


# -- request cost of polls -------------------------------------------------------------------------

def test_idle_polls_cost_one_stat_each_and_read_only_when_the_file_grew() -> None:
    remote = RemoteBytes(b"first\n")
    reader = OutputReader(remote, "/out")

    async def main() -> list[str]:
        got = [await reader.poll(), await reader.poll()]  # text, then nothing new (one tail each)
        remote.calls.clear()
        got += [await reader.poll() for _ in range(10)]  # idle
        assert remote.calls == ["stat"] * 10
        remote.data += b"second\n"
        got.append(await reader.poll())
        return got

    assert "".join(asyncio.run(main())) == "first\nsecond\n"
    assert remote.calls[-2:] == ["stat", "tail"]


def test_a_file_followed_alone_is_read_without_asking_its_size_first() -> None:
    """`listing_first` false (the entry is the run's only one): an idle poll is one read of a block,
    which costs what the `stat` would and brings the text (bounded: never a `tail` of a rest that may
    be over the output cap); a file not written yet is no error and no warning."""
    remote = RemoteBytes(exists=False)
    reader = OutputReader(remote, "/out", listing_first=lambda: False)

    async def main() -> list[str]:
        got = [await reader.poll() for _ in range(3)]  # not there yet
        remote.exists = True
        remote.data += b"first\n"
        got.append(await reader.poll())
        got += [await reader.poll() for _ in range(3)]  # idle
        remote.data += b"second\n"
        got.append(await reader.poll())
        return got

    assert "".join(asyncio.run(main())) == "first\nsecond\n"
    assert len(remote.calls) == 8 and "stat" not in remote.calls and not reader.warnings, remote.calls


def test_a_file_followed_alone_with_a_backlog_over_the_cap_is_read_in_blocks_from_its_first_poll() -> None:
    data = b"".join(b"%06d " % n + b"x" * 90 + "€\n".encode() for n in range(2000))  # ~200 KiB
    remote = RemoteBytes(data, cap=16 * 1024)
    reader = OutputReader(remote, "/out", output_cap=16 * 1024, listing_first=lambda: False)

    async def main() -> str:
        got = []
        for _ in range(100):
            got.append(await reader.poll())
            if reader.offset == len(data):
                break
        return "".join(got)

    assert asyncio.run(main()) == expected(data)
    assert "tail" not in remote.calls and "stat" not in remote.calls, remote.calls[:5]


# -- max_output: head up to the limit, skip, tail ----------------------------------------------------

def limited_output() -> bytes:
    """Lines with 2-, 3- and 4-byte characters; 40 KiB."""
    rng = random.Random(11)
    lines = []
    while sum(map(len, lines)) < 40 * 1024:
        lines.append(("%05d " % len(lines) + "".join(rng.choice(["ab", "é", "€", "𝄞", " "]) for _ in range(30))
                      + "\n").encode())
    return b"".join(lines)


def expected_tail_start(data: bytes, offset: int, tail_bytes: int) -> int:
    start = max(offset, len(data) - tail_bytes)
    if data[start - 1:start] == b"\n":
        return start
    return data.index(b"\n", start) + 1


@pytest.mark.parametrize("limit", [1000, 1001, 1002, 1003, 4096, 5000])
@pytest.mark.parametrize("cap", [5 * 1024 * 1024, 3000])  # tail mode / a backlog in view blocks
def test_limit_shows_the_head_then_skips_to_the_last_whole_lines(limit: int, cap: int) -> None:
    data = limited_output()
    remote = RemoteBytes(data, cap=cap)
    reader = OutputReader(remote, "/out", block_size=1024, output_cap=cap, limit=limit, tail_bytes=2048)

    async def main() -> tuple[str, int, str]:
        head = await reader.poll()
        while not reader.limited:
            head += await reader.poll()
        assert await reader.poll() == "" and reader.limited
        calls = len(remote.calls)
        for _ in range(3):
            assert await reader.poll() == ""
        assert len(remote.calls) == calls  # limited: no reads while the job runs
        assert await drained(reader) == ""  # drain stops at the limit too
        skipped = await reader.skip_to_tail()
        return head, skipped, await drained(reader)

    head, skipped, tail = asyncio.run(main())
    cut = len(head.encode())
    assert limit - 3 <= cut <= limit and data[:cut].decode() == head  # whole characters, at most `limit` bytes
    assert reader.tail_bytes == min(2048, limit)  # never more tail than head
    start = expected_tail_start(data, cut, reader.tail_bytes)
    assert skipped == start - cut and reader.skipped == skipped
    assert tail == data[start:].decode()
    assert reader.offset == len(data) and reader.unread == 0 and not reader.warnings


def test_limit_reached_during_drain_and_a_head_ending_at_a_line_start() -> None:
    """A job that ended before the first poll: drain stops at the limit; when the head ends a line and
    the rest fits in the tail, nothing is skipped."""
    data = b"a" * 99 + b"\n" + b"b" * 50 + b"\n"
    reader = OutputReader(RemoteBytes(data), "/out", limit=100, tail_bytes=1000)
    assert asyncio.run(drained(reader)) == data[:100].decode() and reader.limited
    assert asyncio.run(reader.skip_to_tail()) == 0
    assert asyncio.run(drained(reader)) == data[100:].decode() and reader.offset == len(data)


def test_limit_with_a_last_line_longer_than_the_tail_shows_its_end() -> None:
    data = b"head\n" + b"\x00" * 10000 + b"end-marker"  # no newline after the jump point
    reader = OutputReader(RemoteBytes(data), "/out", limit=200, tail_bytes=100)
    assert asyncio.run(drained(reader)) == data[:200].decode()
    assert asyncio.run(reader.skip_to_tail()) == len(data) - 100 - 200
    assert asyncio.run(drained(reader)) == data[-100:].decode()


def test_offset_restored_after_the_limit_does_not_read_the_head_again() -> None:
    """--attach: the recorded offset is at the limit, so the reader is limited at once."""
    data = limited_output()
    remote = RemoteBytes(data)
    reader = OutputReader(remote, "/out", limit=1000, tail_bytes=2048)
    reader.offset = 1000
    assert reader.limited and asyncio.run(reader.poll()) == "" and remote.calls == []
    skipped = asyncio.run(reader.skip_to_tail())
    start = expected_tail_start(data, 1000, reader.tail_bytes)
    assert skipped == start - 1000 and asyncio.run(drained(reader)) == data[start:].decode()


def test_cut_at_limit_counts_bytes_and_keeps_whole_characters() -> None:
    from ci_runner.utf8_offsets import cut_at_limit

    assert cut_at_limit("ab€cd", 10, 14) == ("ab", 2)  # € (3 bytes) would cross byte 14
    assert cut_at_limit("ab€cd", 10, 15) == ("ab€", 5)
    assert cut_at_limit("a\ufffd\ufffdb", 0, 3) == ("a\ufffd\ufffd", 3)  # U+FFFD: one byte each
    assert cut_at_limit("abc", 5, 5) == ("", 0)
    assert cut_at_limit("abc", 0, 100) == ("abc", 3)


def test_limit_with_invalid_bytes_in_the_skipped_part_shows_the_exact_tail() -> None:
    """The jump lands inside a line with a truncated sequence (2 bytes, one U+FFFD): the tail is exact."""
    data = b"h" * 34 + b"\n" + b"\xff\xfe junk \xe2\x82\n" * 300 + b"last line one\nlast line two\n"
    reader = OutputReader(RemoteBytes(data), "/out", limit=35, tail_bytes=35)
    assert asyncio.run(drained(reader)) == "h" * 34 + "\n"
    skipped = asyncio.run(reader.skip_to_tail())
    assert asyncio.run(drained(reader)) == "last line one\nlast line two\n"
    assert 35 + skipped + 28 == len(data) == reader.offset
