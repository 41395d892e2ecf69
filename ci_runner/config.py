"""Load `.ci-runner.yml`: YAML with line numbers, validated against `schema.json`, typed dataclasses out.

(Interface fixed first; the loader is being written. Field meanings are final.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Union

Scalar = Union[str, int, float, bool]

DEFAULT_CONFIG = ".ci-runner.yml"
DEFAULT_MAX_ENTRIES = 256
DEFAULT_REQUESTS_PER_MINUTE = 10


@dataclass(frozen=True)
class MatrixSpec:
    """The `matrix:` block. Axes keep the file's order; values keep their YAML types."""

    axes: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()
    exclude: tuple[Mapping[str, Scalar], ...] = ()
    include: tuple[Mapping[str, object], ...] = ()  # may carry an `sbatch` mapping of overrides
    max_entries: int = DEFAULT_MAX_ENTRIES


@dataclass(frozen=True)
class Config:
    """A validated configuration. Durations are seconds; paths are resolved against the config file."""

    path: Path                                  # the config file itself (for messages)
    system: str                                 # FirecREST system; a matrix axis named `system` overrides it per entry
    matrix: MatrixSpec = field(default_factory=MatrixSpec)
    script: str | None = None                   # inline job body (jinja2 template text) ...
    template: Path | None = None                # ... or a template file; exactly one of the two
    version: int = 1
    account: str | None = None
    workdir: str | None = None                  # remote base dir; None = the system's default work dir + /ci-runner
    checkout: Literal["clone", "upload", "none"] = "clone"
    queue_timeout: float | None = None          # seconds in PENDING before cancelling (infrastructure failure)
    sbatch: Mapping[str, Scalar] = field(default_factory=dict)  # long option name (no dashes) -> value
    env: Mapping[str, str] = field(default_factory=dict)        # exported into the job's environment
    pass_env: tuple[str, ...] = ()              # runner env var names exposed to templates as `env.NAME`
    artifacts: tuple[str, ...] = ()             # globs relative to the checkout, fetched back after the job
    junit: tuple[str, ...] = ()                 # globs of JUnit XML files (subset of what is fetched back)
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE  # one API budget shared by all entries
    resubmit: int = 0                           # automatic resubmits on infrastructure states (NODE_FAIL, ...)
    cleanup: bool = False                       # remove the remote entry dir after success
