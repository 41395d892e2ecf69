"""Entry results for reporter tests, and the GitHub reporter's predictable tokens."""

from __future__ import annotations

import itertools
from typing import Callable

from ci_runner.reporters.result import EntryResult
from ci_runner.slurm_states import Outcome


def results_with(*, job_id: str, queue_seconds: float, run_seconds: float, output_bytes: int,
                 remote_root: str) -> Callable[..., EntryResult]:
    """`result(entry, outcome=PASSED, **fields)`: a COMPLETED exit-0 result with these values, `fields` overriding."""

    def result(entry: str, outcome: Outcome = Outcome.PASSED, **fields: object) -> EntryResult:
        values: dict[str, object] = dict(
            entry=entry, job_id=job_id, state="COMPLETED", exit_code=0, outcome=outcome, queue_seconds=queue_seconds,
            run_seconds=run_seconds, output_bytes=output_bytes, remote_dir=f"{remote_root}/{entry}")
        values.update(fields)
        return EntryResult(**values)  # type: ignore[arg-type]

    return result


def tokens() -> Callable[[], str]:
    """tok1, tok2, ...: the GitHub reporter's stop-commands tokens, predictable."""
    counter = itertools.count(1)
    return lambda: f"tok{next(counter)}"
