"""The exact bytes a reader emitted just before its offset (`RecentBytes`): what the streaming
contract (stream.py) needs to ask `view` for a read that starts exactly there, and to notice a file
rewritten under the reader (`overlap`)."""

from __future__ import annotations

from collections import deque

from ci_runner.utf8_offsets import REPLACEMENT, utf8_len

OVERLAP = 16  # bytes a tail read re-reads before the offset to notice a rewritten file (`_overlap`)


class RecentBytes:
    """What a reader knows exactly about the bytes just before byte `end` of the file (the last
    `limit` of them at most): enough to count the characters the server's decode sees from an
    aligned block start (`chars_since`) and to re-read the last few (`overlap`), without a copy of
    the text that was emitted.

    The texts are kept as segments in file order: an ASCII text as its byte count alone (its bytes
    are its characters), another text as its UTF-8 bytes. A log that is mostly ASCII keeps almost
    nothing; no text keeps more than `limit` bytes. Segments meet at character boundaries (each is a
    whole text), so decoding them one by one counts what decoding them joined would.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.end = -1  # the byte the known bytes end at (-1: nothing known)
        self._segments: deque[tuple[int, bytes | None]] = deque()  # (byte count, bytes or None: ASCII)
        self._size = 0  # bytes known, the sum of the segments' counts (≤ limit)
        self._last = b""  # the last min(OVERLAP, limit) bytes known

    def forget(self) -> None:
        self.end, self._size, self._last = -1, 0, b""
        self._segments.clear()

    def add(self, text: str, start: int, end: int) -> None:
        """`text` was emitted for the bytes [start, end): keep what it determines exactly, all of it
        when it holds no U+FFFD (and its UTF-8 spans exactly those bytes), else what follows its last
        U+FFFD. Bytes known before `start` stay known only when they end at `start`."""
        if end == start and not text:
            return
        last = text.rfind(REPLACEMENT)
        if last >= 0:
            self.forget()
            self._append(text[last + 1:])
        else:
            if utf8_len(text) != end - start:
                self.forget()
                return
            if self.end != start:
                self.forget()
            self._append(text)
        self.end = end

    def keep(self, limit: int) -> None:
        """Keep only the last `limit` bytes from now on (the reader's block size shrank)."""
        self.limit = limit
        self._trim()

    def chars_since(self, offset: int, need: int) -> int | None:
        """Characters the server's decode (`errors="replace"`: a stray continuation byte is one)
        counts in the `need` bytes before `offset`; None when those bytes are not known exactly."""
        if need == 0:
            return 0
        if self.end != offset or need > self._size:
            return None
        chars = 0
        for count, data in reversed(self._segments):
            take = min(count, need)
            chars += take if data is None else len(data[count - take:].decode("utf-8", "replace"))
            need -= take
            if need == 0:
                break
        return chars

    def overlap(self, offset: int) -> bytes:
        """The last few bytes (≤ OVERLAP) before `offset`, from a character boundary, when known."""
        if self.end != offset or not self._last:
            return b""
        start = next((i for i, byte in enumerate(self._last) if byte & 0xC0 != 0x80), len(self._last))
        return self._last[start:]

    def _append(self, text: str) -> None:
        if not text:
            return
        if text.isascii():
            count, data = min(len(text), self.limit), None
            last = text[-OVERLAP:].encode("ascii")
        else:  # the last `limit` characters hold at least the last `limit` bytes
            data = text[-self.limit:].encode("utf-8")[-self.limit:]
            count, last = len(data), data[-OVERLAP:]
        self._segments.append((count, data))
        self._size += count
        self._last = (self._last + last)[-OVERLAP:]
        self._trim()

    def _trim(self) -> None:
        excess = self._size - self.limit
        while excess > 0:
            count, data = self._segments[0]
            if count <= excess:
                self._segments.popleft()
                cut = count
            else:
                self._segments[0] = (count - excess, None if data is None else data[excess:])
                cut = excess
            self._size -= cut
            excess -= cut
        self._last = self._last[len(self._last) - min(len(self._last), self.limit):]
