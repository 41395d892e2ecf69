"""An asyncio event loop on simulated time, for tests of code that sleeps and waits on clocks.

The loop's clock only moves when every task waits: then it jumps to the next timer. Many independent
sleepers (budgets, followers, a simulated server) share one consistent time, and an hour takes a
fraction of a second. Nothing may wait on real I/O or threads in such a loop (it would look like a
deadlock).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _InstantSelector(selectors.DefaultSelector):
    """Waiting for the next timer advances the loop's virtual clock instead of the real one."""

    loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        assert self.loop is not None
        if timeout is None:
            raise RuntimeError("the simulation is deadlocked: nothing is scheduled")
        self.loop.now += max(0.0, timeout)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` is simulated (starts at `start`)."""

    def __init__(self, start: float = 1000.0) -> None:
        selector = _InstantSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = start

    def time(self) -> float:
        return self.now


def run_simulated(main: Coroutine[Any, Any, T], loop: VirtualTimeLoop | None = None) -> T:
    """Run `main` to completion on a (new) VirtualTimeLoop and close the loop."""
    loop = loop or VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
