"""Expand the matrix into entries: axes x values, `exclude`, `include`; stable names.

(Interface fixed first; the expansion is being written.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ci_runner.config import Scalar


@dataclass(frozen=True)
class Entry:
    """One job of the matrix."""

    name: str                      # unique, readable, safe as a file/dir name, e.g. "gcc-4"
    index: int                     # position in the deterministic order, from 0
    values: Mapping[str, Scalar]   # matrix variables for the template (axes and include extras)
    sbatch: Mapping[str, Scalar]   # top-level sbatch merged with this entry's overrides
    system: str                    # FirecREST system for this entry
