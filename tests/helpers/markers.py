"""Marks shared by test modules."""

from __future__ import annotations

import pytest

# Instead of conftest's `backend_name` fixture: both backends, the Slurm one also marked slow. For tests
# whose Slurm run waits on Slurm itself (a time-limit check, a begin time: 15-30 s) while the local
# backend's emulation takes seconds, so that `-m "not slow"` keeps the local case.
SLOW_ON_SLURM = pytest.mark.parametrize(
    "backend_name", ["local", pytest.param("slurm", marks=[pytest.mark.slurm, pytest.mark.slow])])
