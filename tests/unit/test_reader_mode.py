"""The reader's mode value (reader_mode.py) and which request a read sends first (read_policy.py). Pure."""

from __future__ import annotations

from typing import Callable

import pytest

from ci_runner.read_policy import FirstRequest, first_request, shrink_check_due
from ci_runner.reader_mode import Chunking, Part, ReaderMode, Tailing


def test_a_fresh_reader_tails_the_head() -> None:
    assert ReaderMode() == ReaderMode(Part.HEAD, Tailing(need_bracket=False))
    assert not ReaderMode().chunked and ReaderMode().carry == 0 and not ReaderMode().need_bracket


def test_transitions_keep_the_part_and_drop_the_other_reading_s_fields() -> None:
    bracketed = ReaderMode(Part.TAIL).tailing(need_bracket=True)
    assert bracketed == ReaderMode(Part.TAIL, Tailing(True)) and bracketed.need_bracket
    chunked = bracketed.chunking(carry=2)
    assert chunked == ReaderMode(Part.TAIL, Chunking(2)) and chunked.chunked and chunked.carry == 2
    assert not chunked.need_bracket  # a bracket is a tail-mode fact: gone with the tail reads
    assert chunked.tailing() == ReaderMode(Part.TAIL, Tailing(False)) and chunked.tailing().carry == 0


def test_the_mode_is_frozen() -> None:
    mode = ReaderMode()
    with pytest.raises(AttributeError):
        mode.part = Part.TAIL  # type: ignore[misc]


def _never() -> bool:
    raise AssertionError("listing_first is asked only when it decides")


@pytest.mark.parametrize("final, idle, need_bracket, shrink_check, listing_first, expected", [
    (False, True, False, False, lambda: False, FirstRequest.BLOCK),  # idle, followed alone: one bounded read
    (False, True, False, False, lambda: True, FirstRequest.STAT),  # idle, one listing for many files
    (False, False, False, False, _never, FirstRequest.TAIL),  # output flows
    (False, True, True, False, _never, FirstRequest.STAT),  # an ambiguous U+FFFD: bracket it
    (False, True, False, True, _never, FirstRequest.STAT),  # the periodic shrink check
    (True, True, False, False, _never, FirstRequest.TAIL),  # a drain after its one stat
    (True, False, True, False, _never, FirstRequest.STAT),  # a drain's bracket
])
def test_first_request(final: bool, idle: bool, need_bracket: bool, shrink_check: bool,
                       listing_first: Callable[[], bool], expected: FirstRequest) -> None:
    assert first_request(final=final, idle=idle, need_bracket=need_bracket, shrink_check=shrink_check,
                         listing_first=listing_first) is expected


def test_shrink_check_due() -> None:
    assert shrink_check_due(False, 20, 20) and not shrink_check_due(False, 19, 20)
    assert not shrink_check_due(True, 100, 20)  # a drain stats once anyway
