"""Follow a remote output file by byte offset (design.md, "Streaming contract").

The server decodes what it reads as UTF-8 with `errors="replace"`, so we only ever see text. Offsets
stay exact because we count the bytes of the characters we accept: a valid character re-encodes to its
own bytes. A U+FFFD is the one ambiguous character (a genuine U+FFFD is 3 bytes, an invalid byte 1, a
truncated sequence 2-3), so:

* tail mode (`tail --bytes=+offset+1`, everything to EOF): text up to the first U+FFFD is exact. A
  trailing run of U+FFFD may be a character still being written: it is withheld while the job runs.
  A U+FFFD elsewhere is resolved by bracketing the next read with `stat_size`: when the size is the
  same before and after, the text spans exactly `size - offset` bytes. While the file keeps growing
  we emit the exact prefix and retry; after the job ended the file is stable, so `drain_chunks` resolves it.
* chunk mode: `view` reads of block size S, for a backlog a `tail` cannot return in one answer. Reads
  are sized from what is known: when the last `stat` says that the rest of the file is over 2·S (a
  window), the reader does not ask for it with `tail`; a `tail` that fails anyway (413 at the output
  cap, or the real server's 408/500 when its command timeout expires first) switches to chunk mode
  for that very read instead of repeating it; a `view` that times out (408) halves S (not below
  MIN_BLOCK_SIZE). The first poll of a file asks `stat` first, so a backlog written before the first
  read (a job that printed 20 MiB at once) is never asked for whole. Chunk mode uses `view` reads of block
  size S. The server reads the 2·S-byte window [k·S, k·S + 2·S) with k = offset // S (bytes), decodes
  it and returns its characters [j, j + S) with j = offset % S (*characters*), so 2·S must stay below
  the cap. To continue at the confirmed offset O we ask for offset k·S + j, with k·S the aligned start
  below O and j = len(decode(bytes[k·S, O))) (stray continuation bytes at k·S count one each): the
  answer starts exactly at O (`consume_view`). We know those bytes: the reader keeps the last S bytes
  it emitted as exact text (`RecentBytes`, fed by tail and chunk reads; after a U+FFFD only what follows
  it; an ASCII text as its length alone, so a plain log costs no copy). Valid text is consumed whole, up to 2·S bytes per answer, so amplification (bytes fetched /
  bytes produced) ≈ 1.0 whatever the characters; a trailing U+FFFD run (a character cut at the window
  end, or still being written at EOF) is withheld and read again by the next request. When the answer
  ends short of the window end we are at EOF: back to tail mode.
  Fallback, the aligned rule (`consume_block`): when the bytes before O are not known exactly (an
  ambiguous U+FFFD among them) we read the aligned block k·S, drop `carry` leading U+FFFD (stray
  continuation bytes of the character that straddled the previous boundary, one byte each) and take
  characters until the byte count reaches (k+1)·S, the straddling character included (it is complete
  inside the 2·S window), carrying its bytes beyond the boundary into block k+1; an answer holding a
  U+FFFD other than a trailing run is consumed the same way, up to (k+1)·S. Known limit: inside a chunk
  a U+FFFD that is not a stray continuation byte is counted as one byte (right for invalid single
  bytes, wrong for a genuine U+FFFD or a truncated sequence); each such guess is reported once as a
  warning. An answer of exactly S characters cannot tell that the file ends there: the next read does
  (an empty answer), and `drain_chunks` returns to tail mode once it reached the final size.

A missing file (404) is normal before the job starts. A file smaller than our offset was truncated
(requeue): we warn and restart at 0.

Memory: a reader holds no more than one answer at a time, and copies of it only while it is being
consumed (a few times S for multi-byte text; none of a whole ASCII answer); reporters print a chunk in
pieces (reporters/text.py, `LineBuffer.batches`). Bench row 7 measures the process.

Request cost: after a poll that found nothing new, the next poll asks `stat` first (one request that
answers "anything new?" and "shrunk?") and reads only when the file grew, so an idle job costs one
request per poll. `drain_chunks` stats once, then reads until the offset reaches that size (a bound on the
number of reads derived from the size); what it cannot read is reported and left in `unread`.

Output limit (`limit`, the config's `max_output`): the reader shows the head of the file up to byte
`limit` (cut before the character that would cross it; `cut_at_limit`), then `limited` is true: `poll`
returns "" without a request and `drain_chunks` stops there. After the job ended the caller calls
`skip_to_tail`, which moves the offset to `max(offset, size - tail_bytes)` and on to the start of the
next line (nothing more when that is a line start already; see `tail_start` for a last line longer
than the tail), and returns the bytes skipped; `drain_chunks` then reads the tail as usual. Where the cut or the skip lies in text
holding U+FFFD, each U+FFFD there is counted as one byte (an invalid byte: the same guess as chunk
mode), so the count of skipped bytes may be off by a few bytes; the final offset is the file's size.

Where the pieces live: the byte/character arithmetic in utf8_offsets.py, the bytes known before the
offset in recent_bytes.py, the reader's mode (part shown, tail or chunk reads) in reader_mode.py,
which request a read sends first in read_policy.py; this module holds the reader that uses them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import Callable, Protocol

from ci_runner.api import SERVER_OUTPUT_CAP, OutputTooLarge, RemoteFileMissing
from ci_runner.read_policy import FirstRequest, first_request, shrink_check_due
from ci_runner.reader_mode import Part, ReaderMode
from ci_runner.recent_bytes import RecentBytes
from ci_runner.utf8_offsets import (
    REPLACEMENT, consume_block, consume_view, cut_at_limit, split_tail, tail_start, utf8_len,
)

DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024  # 2·S = 4 MiB < the default 5 MiB output cap (`block_size_for`)
DRAIN_EXTRA_READS = 8  # beyond one read per block: the unaligned first block, tail-mode ends, size brackets
DRAIN_STALLED_READS = 3  # reads in a row without progress before `drain_chunks` gives up
DEFAULT_TAIL_BYTES = 64 * 1024  # with a `limit`: most bytes of the file's end shown after the job ended
MIN_BLOCK_SIZE = 64 * 1024  # a `view` that times out halves the block size down to this


def block_size_for(output_cap: int) -> int:
    """The chunk-mode block size S for a server whose ops output cap is `output_cap` bytes: the
    default, or less so that a 2·S window stays under the cap (with 1 KiB to spare)."""
    return max(1, min(DEFAULT_BLOCK_SIZE, (output_cap - 1024) // 2))


SizeSource = Callable[[str, float], Awaitable["int | None"]]  # (path, newer_than) → size (observer.RunObserver.size)


class OutputSource(Protocol):
    """The part of `cluster.Cluster` a reader needs."""

    async def tail_from(self, path: str, offset: int) -> str: ...

    async def view(self, path: str, offset: int, size: int) -> str: ...

    async def stat_size(self, path: str) -> int | None: ...


class OutputReader:
    """Incremental reader of one remote output file. `poll()` while the job runs, `drain_chunks()` after."""

    def __init__(
        self,
        cluster: OutputSource,
        path: str,
        *,
        block_size: int | None = None,  # default: `block_size_for(output_cap)`
        output_cap: int = SERVER_OUTPUT_CAP,
        shrink_check_every: int = 20,
        on_warning: Callable[[str], None] | None = None,
        limit: int | None = None,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        sizes: SizeSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        listing_first: Callable[[], bool] = lambda: True,
    ) -> None:
        if block_size is None:
            block_size = block_size_for(output_cap)
        if not 0 < 2 * block_size < output_cap:
            raise ValueError(f"block_size must satisfy 0 < 2*block_size < {output_cap}")
        if limit is not None and limit < 1:
            raise ValueError("limit must be positive")
        self.output_cap = output_cap
        self.limit = limit  # bytes of the head shown before skipping to the tail (None: no limit)
        # one `tail` of the last tail_bytes + 1 bytes must stay under the output cap
        self.tail_bytes = max(1, min(tail_bytes, limit or tail_bytes, output_cap - 2))
        self.skipped = 0  # bytes jumped over by `skip_to_tail`
        self._mode = ReaderMode()  # which part is shown and how it is read, replaced as a whole
        self.cluster = cluster
        self.path = path
        self.block_size = block_size
        self.shrink_check_every = shrink_check_every
        self.offset = 0  # bytes confirmed
        self.bytes_read = 0  # bytes of content received from the API (amplification = bytes_read / offset)
        self.requests = 0
        self.warnings: list[str] = []
        self._on_warning = on_warning
        self._recent = RecentBytes(block_size)  # the exact bytes just before the offset (at most S)
        self._polls_since_stat = 0
        self._warned_guess = False
        self._idle = True  # the last poll advanced nothing (or none yet): the next one asks `stat` before reading
        self.missing = False  # the last poll found no file (Slurm has not made it yet, or it was removed)
        self.at_eof = False  # the last read took, exactly, every byte the file held when it was read
        self._known_size: int | None = None  # the file's size at the last `stat` (a lower bound while it grows)
        self._sizes = sizes  # the run's shared listing instead of a `stat` per file (observer.py)
        # whether an idle poll asks the size before reading: worth it when one listing answers for many
        # files; for a file followed alone a read costs the same request and brings the text with it
        self._listing_first = listing_first
        self._clock = clock
        self._answered_at = float("-inf")  # when the last answer about this file arrived
        self.unread = 0  # after `drain_chunks`: bytes of the final file it could not read (0 = complete)

    @property
    def known_size(self) -> int | None:
        """The file's size at the last `stat` (None: never asked, or missing)."""
        return self._known_size

    @property
    def chunked(self) -> bool:
        """True while reading a large backlog with `view` blocks."""
        return self._mode.chunked

    @property
    def limited(self) -> bool:
        """The head reached `limit`: nothing more is read until `skip_to_tail` (after the job ended)."""
        part = self._mode.part
        return self.limit is not None and part is not Part.TAIL and (part is Part.HEAD_CUT or self.offset >= self.limit)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message)

    async def poll(self) -> str:
        """One incremental read; new text only. Usually one request: `tail` while output flows, `stat`
        after a poll that found nothing (plus `tail` if the file grew; when `listing_first` says no,
        one `view` of a block instead); two more to resolve a U+FFFD."""
        if self.limited:
            return ""
        before = self.offset
        self.missing = False
        text = await self._read_head(final=False)
        self._idle = self.offset == before
        return text

    def drain_read_limit(self, size: int) -> int:
        """Most reads `drain_chunks` spends to go from the current offset to `size`."""
        blocks = -(-max(0, size - self.offset) // self.block_size)
        return blocks + blocks // 8 + DRAIN_EXTRA_READS

    async def drain_chunks(self, final_since: float | None = None) -> AsyncIterator[str]:
        """After the job reached a terminal state: `stat` once, then read until the offset reaches that
        size, yielding the text chunk by chunk (memory stays one chunk whatever the file size); a file
        followed alone (`listing_first` says no) is read first when nothing was read yet (a block) or
        the last poll advanced (a `tail`), and needs no size when that read took its whole rest. Reads are
        bounded (`drain_read_limit`, and a few without progress); if the end is not reached, a warning
        says so and `unread` holds the missing byte count: the caller must not treat the output as complete.
        A file that does not exist (never written, or deleted by the job) has nothing to drain."""
        self.unread = 0
        if self.limited:
            return  # the head is shown; the tail comes after `skip_to_tail`
        if (not self._mode.chunked and not self._mode.need_bracket and (self.offset == 0 or not self._idle)
                and not self._listing_first()):
            # a file followed alone: its rest in one read (the size first would cost a request more).
            # Nothing read yet: a block (the rest may be a backlog past the output cap, whose `tail` the
            # real server answers only with a timeout). After a poll that advanced: a `tail`, whose
            # overlap shows a file rewritten below the offset. After an idle poll: the size first.
            if self.offset == 0:
                self._enter_chunk_mode()
            text = await self._read_head(final=True)
            if text:
                yield text
            if self.at_eof or self.limited:
                return
        size = await self._stat(final_since)  # `final_since`: when the final state was asked (any listing since will do)
        if size is None:
            if self.offset > 0:
                self._warn(f"{self.path} disappeared after {self.offset} bytes: the rest of the output is lost")
            return
        await self._restart_if_shrunk(size)
        limit = self.drain_read_limit(size)
        reads = stalled = 0
        while self.offset < size and reads < limit and stalled < DRAIN_STALLED_READS and not self.limited:
            before, block_size = self.offset, self.block_size
            text = await self._read_head(final=True)
            reads += 1
            if self.block_size != block_size:  # smaller blocks after a timeout: more reads to the end
                limit = reads + self.drain_read_limit(size)
            stalled = stalled + 1 if self.offset == before else 0
            if text:
                yield text
        if self.offset >= size and self._mode.chunked:
            self._mode = self._mode.tailing()  # the backlog is read (an answer of S characters cannot tell it ended there)
        if self.offset < size and not self.limited:
            self.unread = size - self.offset
            self._warn(f"{self.path}: output incomplete: read {self.offset} of {size} bytes after {reads} reads; "
                       f"{self.unread} bytes were not printed")

    async def skip_to_tail(self) -> int:
        """After the job ended with the head `limited`: move the offset to the start of the next line at
        or after `max(offset, size - tail_bytes)` and return the bytes skipped (0 when the head ended at
        a line start and the rest fits in the tail); `drain_chunks` then reads from there to the end.
        One `stat` and one `tail` (of at most `tail_bytes` + 1 bytes)."""
        if not self.limited:
            return 0
        size = await self._stat()
        if size is not None and await self._restart_if_shrunk(size):
            return 0  # truncated (requeue): read again from 0, limit included
        self._mode = ReaderMode(Part.TAIL)
        self._idle = False
        if size is None or size <= self.offset or self.offset == 0:
            return 0  # gone (`drain_chunks` reports it), or nothing after the head
        start = max(self.offset, size - self.tail_bytes)
        try:
            self.requests += 1
            text = await self.cluster.tail_from(self.path, start - 1)  # from the byte before: a line start?
        except (RemoteFileMissing, OutputTooLarge):
            text = ""  # gone, or grew past the cap since the stat: `drain_chunks` reads on from `start`
        self.bytes_read += utf8_len(text)
        index = tail_start(text)
        skipped_text, rest = text[:index], text[index:]
        if REPLACEMENT in skipped_text and REPLACEMENT not in rest:
            target = size - utf8_len(rest)  # the shown tail is exact (the file is final)
        else:  # each U+FFFD in the skipped text counted as one (invalid) byte
            target = start - 1 + utf8_len(skipped_text) - 2 * skipped_text.count(REPLACEMENT)
        target = max(start, target)
        skipped = target - self.offset
        self.offset = target
        self.skipped += skipped
        return skipped

    async def _read_head(self, final: bool) -> str:
        """`_read`, cut at `limit` while the head is shown."""
        before = self.offset
        text = await self._read(final)
        if self.limit is None or self._mode.part is Part.TAIL or self.offset <= self.limit:
            return text
        kept, used = cut_at_limit(text, before, self.limit)
        self.at_eof = False
        self.offset = max(before, min(self.limit, before + used))
        self._mode = ReaderMode(Part.HEAD_CUT)  # also when a character crossing the limit left the offset just below it
        return kept

    async def _stat(self, newer_than: float | None = None) -> int | None:
        """The file's size. With a shared size source: from a listing sent at or after `newer_than`
        (default: now, i.e. a fresh one), else a `stat` of its own."""
        self._polls_since_stat = 0
        if self._sizes is not None:
            self._known_size = await self._sizes(self.path, self._clock() if newer_than is None else newer_than)
        else:
            self.requests += 1
            self._known_size = await self.cluster.stat_size(self.path)
        self._answered_at = self._clock()
        return self._known_size

    def _too_large_for_tail(self, start: int) -> bool:
        """The last known size says that a `tail` from byte `start` would answer more than a window
        (2·S, under the output cap): read in blocks instead."""
        return self._known_size is not None and self._known_size - start > 2 * self.block_size

    def _enter_chunk_mode(self) -> None:
        self._mode = self._mode.chunking()

    async def _restart_if_shrunk(self, size: int | None) -> bool:
        if size is not None and size < self.offset:
            self._rewritten(f"{self.path} shrank from {self.offset} to {size} bytes (requeued?): reading it again from 0")
            return True
        return False

    def _rewritten(self, message: str) -> None:
        """The file is not the one we were reading (truncated, requeued, replaced): warn, start again at 0."""
        self._warn(message)
        self.offset = 0
        self.at_eof = False
        self._mode = ReaderMode()
        self._forget()

    def _overlap(self) -> bytes:
        """The last few bytes before the offset, from a character boundary, when known exactly: a tail read
        starts that much earlier and must return them first. A file truncated and rewritten past our offset
        between two polls (its size alone cannot tell) shows up as a mismatch. Costs ≤ OVERLAP bytes a read."""
        return self._recent.overlap(self.offset)

    def _lost(self) -> None:
        """The file is missing: normal before the job writes; after bytes were read, it was removed."""
        self.missing = True
        self.at_eof = False
        if self.offset > 0:
            self._warn(f"{self.path} disappeared after {self.offset} bytes: waiting for it from 0")
            self.offset = 0
        self._mode = self._mode.tailing()
        self._forget()

    async def _read(self, final: bool) -> str:
        if self._mode.chunked:
            return await self._read_block()
        if not final:
            self._polls_since_stat += 1
        # `stat` first: to bracket an ambiguous U+FFFD, after an idle poll (nothing new ⇒ no `tail`),
        # and every `shrink_check_every` polls (a truncated file that grew again past our offset).
        first = first_request(final=final, idle=self._idle, need_bracket=self._mode.need_bracket,
                              shrink_check=shrink_check_due(final, self._polls_since_stat, self.shrink_check_every),
                              listing_first=self._listing_first)
        if first is FirstRequest.BLOCK:
            # a file followed alone: one bounded read (a block, never a `tail` of a rest that may have
            # grown past the output cap, which the real server answers with a timeout) instead of the size first
            self._enter_chunk_mode()
            return await self._read_block()
        probe = first is FirstRequest.STAT
        # An idle probe may use a listing sent since our last answer; a bracket needs a fresh one.
        size_before = (await self._stat(None if self._mode.need_bracket else self._answered_at)) if probe else None
        if probe:
            if size_before is None:
                self._lost()
                return ""
            await self._restart_if_shrunk(size_before)
            if size_before == self.offset and not self._mode.need_bracket:
                return ""  # nothing new: no need to read
        overlap = self._overlap()
        if self._too_large_for_tail(self.offset - len(overlap)):
            self._enter_chunk_mode()
            return await self._read_block()
        bracket = self._mode.need_bracket
        try:
            self.requests += 1
            text = await self.cluster.tail_from(self.path, self.offset - len(overlap))
        except RemoteFileMissing:
            self._lost()
            return ""
        except OutputTooLarge:
            self._enter_chunk_mode()
            return await self._read_block()
        self._answered_at = self._clock()
        self.bytes_read += utf8_len(text)
        if overlap:
            if not text.startswith(overlap.decode("utf-8")):
                self._rewritten(f"{self.path} was rewritten below byte {self.offset} (truncated or replaced): "
                                "reading it again from 0")
                return ""
            text = text[len(overlap.decode("utf-8")):]
        # everything to EOF, exact: no U+FFFD, whose bytes are guessed or withheld
        self.at_eof = REPLACEMENT not in text
        if not text:
            return ""
        exact = None
        if bracket:
            size_after = await self._stat()
            if size_before is not None and size_before == size_after and size_before >= self.offset:
                exact = size_before - self.offset
        split = split_tail(text, exact, final)
        self._mode = self._mode.tailing(split.ambiguous)
        self._remember(split.text, self.offset, self.offset + split.consumed)
        self.offset += split.consumed
        return split.text

    async def _read_block(self) -> str:
        """Read the block holding the offset, consume it, advance: from the offset itself when the
        bytes since the aligned start are known (`_chars_since`), else aligned (minus the carry)."""
        size = self.block_size
        aligned = self.offset - self.offset % size
        chars = self._chars_since(aligned)
        if chars is not None:
            start = aligned + chars  # the server slices the decoded window by characters: starts at offset
        elif self._mode.carry:
            start = self.offset - self._mode.carry  # a block end, hence aligned
        else:
            start = aligned
        try:
            self.requests += 1
            text = await self.cluster.view(self.path, start, size)
        except RemoteFileMissing:
            self._lost()
            return ""
        except OutputTooLarge:
            if self.block_size <= MIN_BLOCK_SIZE:
                raise
            self.block_size = max(MIN_BLOCK_SIZE, self.block_size // 2)  # block ends stay block ends
            self._recent.keep(self.block_size)
            return await self._read_block()
        self._answered_at = self._clock()
        self.bytes_read += utf8_len(text)
        if chars is not None:
            block = consume_view(text, self.offset, aligned + size, size)
        else:
            block = consume_block(text, start, size, self.offset, self._mode.carry)
        if block.guessed and not self._warned_guess:
            self._warned_guess = True
            self._warn(
                f"{self.path}: invalid UTF-8 inside a backlog over the API's output cap; "
                "each replacement character there is counted as one byte"
            )
        self._remember(block.text, self.offset, block.offset)
        self.offset = block.offset
        self.at_eof = block.eof and REPLACEMENT not in text
        self._mode = self._mode.tailing() if block.eof else self._mode.chunking(block.carry)
        return block.text

    def _forget(self) -> None:
        self._recent.forget()

    def _remember(self, text: str, start: int, end: int) -> None:
        """Keep the last S bytes before `end` that `text` (emitted for [start, end)) determines exactly."""
        self._recent.add(text, start, end)

    def _chars_since(self, aligned: int) -> int | None:
        """Characters the server's decode counts from byte `aligned` to the offset (stray continuation
        bytes one each), or None when those bytes are not known exactly."""
        return self._recent.chars_since(self.offset, self.offset - aligned)
