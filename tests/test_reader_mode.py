"""The reader's mode value (reader_mode.py) and which request a read sends first (read_policy.py). Pure."""

from __future__ import annotations

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


def test_first_request() -> None:
    alone, shared = (lambda: False), (lambda: True)
    assert first_request(final=False, idle=True, need_bracket=False, shrink_check=False,
                         listing_first=alone) is FirstRequest.BLOCK
    assert first_request(final=False, idle=True, need_bracket=False, shrink_check=False,
                         listing_first=shared) is FirstRequest.STAT
    assert first_request(final=False, idle=False, need_bracket=False, shrink_check=False,
                         listing_first=_never) is FirstRequest.TAIL
    for need_bracket, shrink_check in ((True, False), (False, True)):
        assert first_request(final=False, idle=True, need_bracket=need_bracket, shrink_check=shrink_check,
                             listing_first=_never) is FirstRequest.STAT
    assert first_request(final=True, idle=True, need_bracket=False, shrink_check=False,
                         listing_first=_never) is FirstRequest.TAIL
    assert first_request(final=True, idle=False, need_bracket=True, shrink_check=False,
                         listing_first=_never) is FirstRequest.STAT


def test_shrink_check_due() -> None:
    assert shrink_check_due(False, 20, 20) and not shrink_check_due(False, 19, 20)
    assert not shrink_check_due(True, 100, 20)  # a drain stats once anyway
