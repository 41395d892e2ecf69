"""Pure byte/character arithmetic of the streaming contract (stream.py): where a text read from a
remote file starts and ends in bytes, when only its characters are known.

The server decodes what it reads as UTF-8 with `errors="replace"`: a valid character re-encodes to
its own bytes, a U+FFFD (`REPLACEMENT`) is ambiguous (a genuine U+FFFD is 3 bytes, an invalid byte 1,
a truncated sequence 2-3). `split_tail` decides how much of a `tail` answer is exact, `consume_view`
and `consume_block` how much of a `view` answer, `cut_at_limit` and `tail_start` where the shown head
ends and the shown tail begins. No I/O, no state.
"""

from __future__ import annotations

from dataclasses import dataclass

REPLACEMENT = "\ufffd"
UTF8_PIECE = 64 * 1024  # characters `utf8_len` encodes at a time (memory stays small for any text)


def utf8_len(text: str) -> int:
    """Bytes of `text` in UTF-8, without a copy of the whole text: an ASCII text's length (CPython
    knows it is ASCII without a scan), else the encoded lengths of pieces of UTF8_PIECE characters."""
    if text.isascii():
        return len(text)
    return sum(len(text[i:i + UTF8_PIECE].encode("utf-8")) for i in range(0, len(text), UTF8_PIECE))


@dataclass(frozen=True)
class TailSplit:
    """What to do with one tail answer: emit `text`, advance by `consumed` bytes, and whether an
    ambiguous U+FFFD is left that needs a size-bracketed read."""

    text: str
    consumed: int
    ambiguous: bool


def split_tail(text: str, exact_total: int | None, final: bool) -> TailSplit:
    """Decide how much of a tail answer is confirmed.

    `exact_total` is the byte length the text is known to span (from a stable `stat_size` bracket) or
    None. `final`: the job has ended, so a trailing U+FFFD cannot be completed any more.
    """
    body = text.rstrip(REPLACEMENT)
    trailing = len(text) - len(body)
    if exact_total is not None:
        if trailing == 0 or final:
            return TailSplit(text, exact_total, False)
        if REPLACEMENT not in body:
            return TailSplit(body, utf8_len(body), False)
    first = text.find(REPLACEMENT)
    if first == -1:
        return TailSplit(text, utf8_len(text), False)
    if first >= len(body):  # only a trailing run: withhold it; when final it needs a bracket
        return TailSplit(body, utf8_len(body), final)
    prefix = text[:first]
    return TailSplit(prefix, utf8_len(prefix), True)


def cut_at_limit(text: str, start: int, limit: int) -> tuple[str, int]:
    """The longest prefix of `text` (read from byte `start`) that ends at or before byte `limit`, whole
    characters only, and its length in bytes. A U+FFFD counts as one byte (an invalid byte)."""
    room = max(0, limit - start)
    kept = 0  # characters of `text` kept
    used = 0  # their bytes
    for index, segment in enumerate(text.split(REPLACEMENT)):
        if index:  # the U+FFFD before this segment
            if used + 1 > room:
                return text[:kept], used
            kept, used = kept + 1, used + 1
        data = segment.encode("utf-8")
        if used + len(data) > room:
            cut = room - used
            while cut > 0 and data[cut] & 0xC0 == 0x80:  # not inside a character
                cut -= 1
            return text[:kept] + data[:cut].decode("utf-8"), used + cut
        kept, used = kept + len(segment), used + len(data)
    return text, used


def tail_start(text: str) -> int:
    """Where the shown tail begins in `text`, the file from the byte *before* the first candidate byte
    to its end: after the first newline that has text after it (index 1 when that byte is a newline, i.e.
    the candidate starts a line); without one, after the first character and the stray continuation
    bytes (U+FFFD, at most 3) that follow it, so a last line longer than the tail is shown cut."""
    newline = text.find("\n")
    if 0 <= newline < len(text) - 1:
        return newline + 1
    if not text:
        return 0
    return 1 + min(3, len(text) - 1 - len(text[1:].lstrip(REPLACEMENT)))


@dataclass(frozen=True)
class Block:
    """Result of consuming one `view` block: text to emit, new confirmed offset, carry into the next
    block, whether EOF was inside the block, and how many U+FFFD were counted as one byte by guess."""

    text: str
    offset: int
    carry: int
    eof: bool
    guessed: int


def consume_block(text: str, block_start: int, block_size: int, skip_to: int, drop: int) -> Block:
    """Consume the answer of `view(offset=block_start, size=block_size)` (block_start aligned).

    `drop`: leading stray continuation bytes (one U+FFFD each) of a character already emitted.
    `skip_to`: absolute offset already confirmed (≥ block_start); characters before it are not emitted.
    Memory: a few copies of the block, never per-character objects (a block is 2 MiB); an ASCII block
    is sliced without an encoded copy.
    """
    block_end = block_start + block_size
    i = min(drop, len(text))
    pos = block_start + i  # stray continuation bytes: one byte each
    if text.find(REPLACEMENT, i) >= 0:
        return _consume_block_per_character(text, i, pos, block_size, block_end, skip_to, drop)
    if text.isascii():  # one byte per character: positions are indices, no encoding needed
        lo = min(len(text), i + max(0, skip_to - pos))
        hi = min(len(text), max(lo, i + block_end - pos))
        end_pos = pos + hi - i
        emitted = text[lo:hi]
        if end_pos >= block_end:
            return Block(emitted, end_pos, end_pos - block_end, False, 0)
        return Block(emitted, max(end_pos, skip_to), 0, True, 0)
    # Valid UTF-8 only: byte positions come from the encoding itself.
    data = text[i:].encode("utf-8")
    lo = min(len(data), max(0, skip_to - pos))
    while lo < len(data) and data[lo] & 0xC0 == 0x80:  # the first character starting at or after skip_to
        lo += 1
    hi = min(len(data), max(lo, block_end - pos))
    while hi < len(data) and data[hi] & 0xC0 == 0x80:  # the character straddling the block end, whole
        hi += 1
    emitted = data[lo:hi].decode("utf-8")
    end_pos = pos + hi
    if end_pos >= block_end:
        return Block(emitted, end_pos, end_pos - block_end, False, 0)
    return Block(emitted, max(end_pos, skip_to), 0, True, 0)  # EOF inside the block


def _consume_block_per_character(text: str, i: int, pos: int, block_size: int, block_end: int, skip_to: int,
                                 drop: int) -> Block:
    """`consume_block` for an answer holding U+FFFD: walk the characters (one byte per U+FFFD)."""
    first = -1  # index in `text` of the first emitted character
    guessed = 0
    trailing: list[int] = []  # byte positions of the emitted U+FFFD run at the end (EOF handling)
    synced = drop > 0  # after dropped carry bytes we are at a character boundary
    while i < len(text) and pos < block_end:
        char = text[i]
        size = 1 if char == REPLACEMENT else utf8_len(char)
        if char != REPLACEMENT:
            synced = True
        elif synced or pos >= skip_to:  # not a stray continuation byte at the block start
            guessed += 1
        if pos >= skip_to:
            if first < 0:
                first = i
            if char == REPLACEMENT:
                trailing.append(pos)
            else:
                trailing.clear()
        pos += size
        i += 1
    out = text[first:i] if first >= 0 else ""
    ends_at_eof = pos < block_end or (
        i == len(text) and len(text) < block_size and out.endswith(REPLACEMENT)
    )
    if not ends_at_eof:
        return Block(out, pos, pos - block_end, False, guessed)
    # EOF inside the block: a trailing U+FFFD may be a character still being written; tail mode decides.
    if trailing:
        out = out[: len(out) - len(trailing)]
        guessed -= len(trailing)
        pos = trailing[0]
    return Block(out, max(pos, skip_to), 0, True, guessed)


def consume_view(text: str, offset: int, block_end: int, block_size: int) -> Block:
    """Consume the answer of `view(offset=k·S + j, size=S)` that starts exactly at byte `offset`
    (j = characters the server counts from k·S to `offset`); `block_end` = (k+1)·S.

    Valid text is consumed whole: every character is complete. A trailing run of U+FFFD may be a
    character cut at the window end (k·S + 2·S) or still being written: it is withheld and read again
    by the next request. Any other U+FFFD (or an answer of U+FFFD only) falls back to the aligned rule:
    consume up to `block_end` and the character straddling it, one byte per U+FFFD.
    """
    body = text.rstrip(REPLACEMENT)
    if REPLACEMENT in body or (not body and text):
        return _consume_block_per_character(text, 0, offset, block_size, block_end, offset, 0)
    end = offset + utf8_len(body)
    window_end = block_end + block_size
    eof = body == text and len(text) < block_size and end < window_end  # the file ends inside the window
    return Block(body, end, 0, eof, 0)
