"""The mode of an `OutputReader` (stream.py) as one frozen value, replaced as a whole on every
transition: which part of the file it shows (`Part`) and how it reads (`Tailing` or `Chunking`).
A field that belongs to one way of reading exists only there, so no transition can leave it stale."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Part(Enum):
    """Which part of the file the reader shows (the config's `max_output` is its `limit`)."""

    HEAD = "head"  # from byte 0, up to the limit if there is one
    HEAD_CUT = "head cut"  # the head reached the limit: nothing is read until `skip_to_tail`
    TAIL = "tail"  # after `skip_to_tail`: to the end, without a limit


@dataclass(frozen=True)
class Tailing:
    """`tail` reads to EOF. `need_bracket`: the last answer left an ambiguous U+FFFD, so the next read
    is bracketed by two sizes."""

    need_bracket: bool = False


@dataclass(frozen=True)
class Chunking:
    """`view` reads of one block each, for a backlog a `tail` cannot return in one answer. `carry`:
    bytes of the character that straddled the last block end, already emitted (the aligned rule
    drops them from the next block)."""

    carry: int = 0


@dataclass(frozen=True)
class ReaderMode:
    """Everything that decides how a reader's next read is made; `ReaderMode()` is a fresh reader's."""

    part: Part = Part.HEAD
    reading: Tailing | Chunking = Tailing()

    @property
    def chunked(self) -> bool:
        return isinstance(self.reading, Chunking)

    @property
    def carry(self) -> int:
        return self.reading.carry if isinstance(self.reading, Chunking) else 0

    @property
    def need_bracket(self) -> bool:
        return isinstance(self.reading, Tailing) and self.reading.need_bracket

    def tailing(self, need_bracket: bool = False) -> ReaderMode:
        """The same part, read with `tail`."""
        return ReaderMode(self.part, Tailing(need_bracket))

    def chunking(self, carry: int = 0) -> ReaderMode:
        """The same part, read in `view` blocks."""
        return ReaderMode(self.part, Chunking(carry))
