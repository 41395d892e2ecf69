"""Load `.ci-runner.yml`: YAML with line numbers, validated against `schema.json`, typed dataclasses out.

`load(path)` reads the file keeping every key's position (yaml_positions.py), validates the data
against `schema.json` (config_schema.py) and the rules the schema cannot express (config_checks.py),
and returns a frozen `Config` whose unset keys take their defaults (config_defaults.py).
Every problem is reported as `file:line:col: key.path: what was expected`, all of them at once
(up to `MAX_REPORTED`), sorted by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from ci_runner.config_checks import semantic_problems
from ci_runner.config_defaults import (
    DEFAULT_API_RETRY_LIMIT,
    DEFAULT_CHECKOUT,
    DEFAULT_CLEANUP,
    DEFAULT_JOB_ARRAYS,
    DEFAULT_MAX_ARTIFACT_SIZE,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_PACK,
    DEFAULT_REQUESTS_PER_MINUTE,
    DEFAULT_RESUBMIT,
)
from ci_runner.config_problems import dotted, locate
from ci_runner.config_schema import schema_problems
from ci_runner.config_values import Scalar, describe
from ci_runner.errors import ConfigError
from ci_runner.reserved import MATRIX_KEYWORDS
from ci_runner.units import parse_duration, parse_size, slurm_time
from ci_runner.yaml_positions import read_yaml

MAX_REPORTED = 10


@dataclass(frozen=True)
class MatrixSpec:
    """The `matrix:` block. Axes keep the file's order; values keep their YAML types."""

    axes: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()
    exclude: tuple[Mapping[str, Scalar], ...] = ()
    include: tuple[Mapping[str, object], ...] = ()  # may carry an `sbatch` mapping of overrides
    max_entries: int = DEFAULT_MAX_ENTRIES
    location: str = field(default="", compare=False)  # "file:line:col" of `matrix:` for expansion errors


@dataclass(frozen=True)
class Config:
    """A validated configuration. Durations are seconds; paths are resolved against the config file."""

    path: Path                                  # the config file itself (for messages)
    system: str                                 # FirecREST system; "" when only the `system` matrix axis sets it
    matrix: MatrixSpec = field(default_factory=MatrixSpec)
    script: str | None = None                   # inline job body (jinja2 template text) ...
    template: Path | None = None                # ... or a template file (absolute); exactly one of the two
    version: int = 1
    account: str | None = None
    workdir: str | None = None                  # remote base dir; None = the system's default work dir + /ci-runner
    checkout: Literal["clone", "upload", "none"] = DEFAULT_CHECKOUT
    queue_timeout: float | None = None          # seconds in PENDING before cancelling (infrastructure failure)
    sbatch: Mapping[str, Scalar] = field(default_factory=dict)  # long option name (no dashes) -> value; time is D-HH:MM:SS
    env: Mapping[str, str] = field(default_factory=dict)        # exported into the job's environment
    pass_env: tuple[str, ...] = ()              # runner env var names exposed to templates as `env.NAME`
    artifacts: tuple[str, ...] = ()             # globs relative to the checkout, fetched back after the job
    junit: tuple[str, ...] = ()                 # globs of JUnit XML files (subset of what is fetched back)
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE  # one API budget shared by all entries
    api_retry_limit: float = DEFAULT_API_RETRY_LIMIT  # seconds one request is retried before giving up
    resubmit: int = DEFAULT_RESUBMIT            # automatic resubmits on infrastructure states (NODE_FAIL, ...)
    cleanup: bool = DEFAULT_CLEANUP             # remove the remote entry dir after success
    job_arrays: bool = DEFAULT_JOB_ARRAYS       # entries with equal options: one job array (arrays.py)
    pack: bool = DEFAULT_PACK                   # a system's entries as the steps of one job (pack.py)
    max_output: int = DEFAULT_MAX_OUTPUT        # bytes of output printed per entry before skipping to its tail
    max_artifact_size: int = DEFAULT_MAX_ARTIFACT_SIZE  # larger artifacts are skipped with a warning


def load(path: Path) -> Config:
    """Read and validate a config file. Raises ConfigError with one `file:line:col: key: problem` per line."""
    path = Path(path)
    display = str(path)
    data, where, problems = read_yaml(path, display)
    if not isinstance(data, dict):
        line, col = locate(where, ())
        raise ConfigError(f"{display}:{line}:{col}: expected a mapping of keys (version, system, script, ...), "
                          f"got {describe(data)}")
    problems += schema_problems(data, where)
    problems += semantic_problems(data, where, path.parent)
    if problems:
        unique = sorted(set(problems), key=lambda p: (p.pos, dotted(p.path), p.message))
        lines = [problem.render(display) for problem in unique[:MAX_REPORTED]]
        if len(unique) > MAX_REPORTED:
            lines.append(f"{display}: ... and {len(unique) - MAX_REPORTED} more problems")
        raise ConfigError("\n".join(lines))
    matrix_pos = locate(where, ("matrix",), key=True)
    location = f"{display}:{matrix_pos[0]}:{matrix_pos[1]}" if "matrix" in data else display
    return _build_config(data, path, location)


# ------------------------------------------------------------------------------------------ assembly


def _normalised_sbatch(options: Mapping[str, Any]) -> dict[str, Scalar]:
    result: dict[str, Scalar] = dict(options)
    if "time" in result:
        result["time"] = slurm_time(parse_duration(result["time"]))  # type: ignore[arg-type]
    return result


def _env(env: Mapping[str, Any]) -> dict[str, str]:
    return {name: value if isinstance(value, str) else str(value) for name, value in env.items()}


def _globs(globs: str | list[str]) -> tuple[str, ...]:
    return (globs,) if isinstance(globs, str) else tuple(globs)


def _as_written(value: Any) -> Any:
    return value


# Config field <- how its key's (valid) value becomes the field's; a key left out keeps the field's default.
_FIELDS: Mapping[str, Callable[[Any], object]] = {
    "script": _as_written,
    "version": int,
    "account": _as_written,
    "workdir": _as_written,
    "checkout": _as_written,
    "queue_timeout": parse_duration,
    "sbatch": _normalised_sbatch,
    "env": _env,
    "pass_env": tuple,
    "artifacts": tuple,
    "junit": _globs,
    "requests_per_minute": int,
    "api_retry_limit": parse_duration,
    "resubmit": int,
    "cleanup": bool,
    "job_arrays": bool,
    "pack": bool,
    "max_output": parse_size,
    "max_artifact_size": parse_size,
}


def _matrix_spec(matrix: Mapping[str, Any], location: str) -> MatrixSpec:
    includes = []
    for include in matrix.get("include", []):
        include = dict(include)
        if "sbatch" in include:
            include["sbatch"] = _normalised_sbatch(include["sbatch"])
        includes.append(include)
    return MatrixSpec(
        axes=tuple((name, tuple(values)) for name, values in matrix.items() if name not in MATRIX_KEYWORDS),
        exclude=tuple(dict(e) for e in matrix.get("exclude", [])),
        include=tuple(includes),
        max_entries=int(matrix.get("max_entries", DEFAULT_MAX_ENTRIES)),
        location=location,
    )


def _build_config(data: dict[str, Any], path: Path, matrix_location: str) -> Config:
    """The Config of valid `data` read from `path`; `matrix_location` is where its `matrix:` is."""
    values = {name: convert(data[name]) for name, convert in _FIELDS.items() if name in data}
    return Config(
        path=path,
        system=data.get("system", ""),
        matrix=_matrix_spec(data.get("matrix") or {}, matrix_location),
        template=(path.parent / data["template"]).resolve() if "template" in data else None,
        **values,  # type: ignore[arg-type]
    )
