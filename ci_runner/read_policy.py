"""Which request a reader's `tail`-mode read sends first (stream.py): the size, a bounded block, or
the rest of the file. Pure: the reader passes what it knows."""

from __future__ import annotations

from enum import Enum
from typing import Callable


class FirstRequest(Enum):
    """What a `tail`-mode read asks first."""

    BLOCK = "view"  # one bounded block and no size first: a file followed alone, after an idle poll
    STAT = "stat"  # the size first: to bracket a U+FFFD, to check for a shrink, or after an idle poll
    TAIL = "tail"  # the rest of the file at once: output is flowing (or the job ended)


def shrink_check_due(final: bool, polls_since_stat: int, every: int) -> bool:
    """Every `every` polls a running job's file gets a `stat` (a truncated file that grew again past
    the offset)."""
    return not final and polls_since_stat >= every


def first_request(*, final: bool, idle: bool, need_bracket: bool, shrink_check: bool,
                  listing_first: Callable[[], bool]) -> FirstRequest:
    """`final`: the job has ended (a drain). `idle`: the last poll found nothing new, so a `tail` would
    likely answer nothing. `listing_first()` (asked only when it decides): whether an idle poll asks
    the size before reading, worth it when one listing answers for many files; for a file followed
    alone a read costs the same request and brings the text with it."""
    if not final and idle and not (need_bracket or shrink_check or listing_first()):
        return FirstRequest.BLOCK
    if need_bracket or shrink_check or (not final and idle):
        return FirstRequest.STAT
    return FirstRequest.TAIL
