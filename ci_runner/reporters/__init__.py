"""Reporters: the only code that writes CI log syntax and CI report files.

`for_context` picks the reporter for the detected CI; `base.py` holds the interface.
"""

from __future__ import annotations

from ci_runner.reporters.base import EntryResult, PlainReporter, Reporter

__all__ = ["EntryResult", "PlainReporter", "Reporter"]
