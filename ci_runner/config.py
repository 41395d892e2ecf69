"""Load `.ci-runner.yml`: YAML with line numbers, validated against `schema.json`, typed dataclasses out.

`load(path)` reads the file with a YAML loader that remembers where every key and value came from,
validates the data against `schema.json` (structure) and a few rules the schema cannot express
(durations, reserved sbatch options, paths, matrix references), and returns a frozen `Config`.
Every problem is reported as `file:line:col: key.path: what was expected`, all of them at once
(up to `MAX_REPORTED`), sorted by position.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Literal, Mapping, Union

import yaml

from ci_runner.errors import ConfigError
from ci_runner.steps import own_options, refusal

Scalar = Union[str, int, float, bool]

DEFAULT_CONFIG = ".ci-runner.yml"
DEFAULT_MAX_ENTRIES = 256
DEFAULT_REQUESTS_PER_MINUTE = 10
DEFAULT_API_RETRY_LIMIT = 120.0  # seconds: rides out a FirecREST restart or a short outage
DEFAULT_MAX_OUTPUT = 256 * 1024 * 1024  # bytes of an entry's output printed before skipping to its tail
MIN_MAX_OUTPUT = 1024
DEFAULT_MAX_ARTIFACT_SIZE = 256 * 1024 * 1024  # artifacts (and JUnit files) larger than this are not fetched
MAX_REPORTED = 10

# sbatch options ci-runner sets itself (or that would break following the job), with the reason shown.
RESERVED_SBATCH = {
    "output": "ci-runner writes the job's output to <workdir>/<run-id>/<entry>/slurm-%j.out",
    "error": "ci-runner merges stderr into the job's output file",
    "input": "jobs run without stdin",
    "chdir": "the job runs in its checkout; use `workdir` for the base directory",
    "wrap": "the job script comes from `script` or `template`",
    "job-name": "ci-runner names the job after the entry",
    "array": "use a `matrix` instead of job arrays",
    "wait": "ci-runner follows the job itself",
    "parsable": "ci-runner reads the job id from FirecREST",
    "test-only": "ci-runner submits real jobs; use `ci-runner render` for a dry run",
}
# Names the template context uses itself; a matrix axis of that name would shadow them.
RESERVED_AXES = {"entry", "ci", "env", "matrix", "sbatch"}
MATRIX_KEYWORDS = ("exclude", "include", "max_entries")
SYSTEM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class InvalidDuration(ConfigError, ValueError):
    """A duration string that `parse_duration` cannot read (also a `ValueError`)."""


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
    checkout: Literal["clone", "upload", "none"] = "clone"
    queue_timeout: float | None = None          # seconds in PENDING before cancelling (infrastructure failure)
    sbatch: Mapping[str, Scalar] = field(default_factory=dict)  # long option name (no dashes) -> value; time is D-HH:MM:SS
    env: Mapping[str, str] = field(default_factory=dict)        # exported into the job's environment
    pass_env: tuple[str, ...] = ()              # runner env var names exposed to templates as `env.NAME`
    artifacts: tuple[str, ...] = ()             # globs relative to the checkout, fetched back after the job
    junit: tuple[str, ...] = ()                 # globs of JUnit XML files (subset of what is fetched back)
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE  # one API budget shared by all entries
    api_retry_limit: float = DEFAULT_API_RETRY_LIMIT  # seconds one request is retried before giving up
    resubmit: int = 0                           # automatic resubmits on infrastructure states (NODE_FAIL, ...)
    cleanup: bool = False                       # remove the remote entry dir after success
    job_arrays: bool = True                     # entries with equal options: one job array (arrays.py)
    pack: bool = False                          # a system's entries as the steps of one job (pack.py)
    max_output: int = DEFAULT_MAX_OUTPUT        # bytes of output printed per entry before skipping to its tail
    max_artifact_size: int = DEFAULT_MAX_ARTIFACT_SIZE  # larger artifacts are skipped with a warning


# --------------------------------------------------------------------------------------------- durations

_UNIT_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CLOCK_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")

DURATION_HELP = "expected a duration like 90s, 30m, 1h30m, 2h, HH:MM:SS, MM:SS, D-HH:MM:SS or integer seconds"


def parse_duration(text: str | int) -> float:
    """Seconds in `text`: `90s`, `30m`, `1h30m`, `2h`, `1d`, `HH:MM:SS`, `MM:SS`, `D-HH:MM:SS`, or integer seconds.

    Raises `InvalidDuration` (a `ConfigError` and a `ValueError`) with a message for the user.
    Minutes and seconds after a colon must be below 60; the leading field is unbounded.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidDuration(f"{DURATION_HELP}, got {_describe(text)}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidDuration(f"{DURATION_HELP}, got a negative number")
        return float(text)
    raw = text.strip().lower()
    if raw.isdigit():
        return float(raw)
    unit = _UNIT_DURATION.match(raw)
    if raw and unit and any(unit.groups()):
        days, hours, minutes, seconds = (int(g or 0) for g in unit.groups())
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    clock = _CLOCK_DURATION.match(raw)
    if clock and (clock.group(3) is not None or clock.group(1) is not None):
        days = int(clock.group(1) or 0)
        fields = [int(g) for g in clock.groups()[1:] if g is not None]
        if clock.group(1) is not None:  # D-HH[:MM[:SS]]: every field after the days is bounded
            bounded = zip(fields, (24, 60, 60))
        else:  # [HH:]MM:SS: the leading field is unbounded
            bounded = zip(fields[1:], (60, 60))
        if any(value >= limit for value, limit in bounded):
            raise InvalidDuration(f"{DURATION_HELP}, got {text!r} (a field after the first is out of range)")
        if clock.group(1) is not None:  # Slurm's D-HH[:MM[:SS]]
            fields += [0] * (3 - len(fields))
        elif len(fields) == 2:  # MM:SS
            fields.insert(0, 0)
        hours, minutes, seconds = fields
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    raise InvalidDuration(f"{DURATION_HELP}, got {text!r}")


def slurm_time(seconds: float) -> str:
    """Slurm's time-limit notation for `seconds` (rounded up to whole seconds): `HH:MM:SS` or `D-HH:MM:SS`."""
    total = int(-(-seconds // 1))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


# -------------------------------------------------------------------------------------------- sizes

_SIZE = re.compile(r"^(\d+)\s*(?:(b)|([kmgt])(i)?b)?$", re.IGNORECASE)
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
SIZE_HELP = "expected a size like 64MiB, 512KiB, 1GiB, 100MB or an integer number of bytes"


class InvalidSize(ConfigError, ValueError):
    """A size string that `parse_size` cannot read (also a `ValueError`)."""


def parse_size(text: str | int) -> int:
    """Bytes in `text`: an integer byte count, `123B`, or a number with a binary (`KiB`, `MiB`, `GiB`, `TiB`:
    powers of 1024) or decimal (`KB`, `MB`, `GB`, `TB`: powers of 1000) unit; units are case-insensitive.

    Raises `InvalidSize` (a `ConfigError` and a `ValueError`) with a message for the user.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidSize(f"{SIZE_HELP}, got {_describe(text)}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidSize(f"{SIZE_HELP}, got a negative number")
        return text
    match = _SIZE.match(text.strip())
    if not match:
        raise InvalidSize(f"{SIZE_HELP}, got {text!r}")
    number, _, prefix, binary = match.groups()
    if prefix is None:
        return int(number)
    return int(number) * (1024 if binary else 1000) ** _SIZE_POWERS[prefix.lower()]


def format_size(size: int) -> str:
    """`size` bytes for a message: the largest binary unit that divides it (`64 MiB`), else bytes."""
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if size and size % 1024**power == 0:
            return f"{size // 1024**power} {unit}"
    return f"{size} bytes"


# ----------------------------------------------------------------------------------- YAML with positions

KeyPath = tuple[Union[str, int], ...]


@dataclass(frozen=True)
class _Where:
    """1-based line and column of a key (for mappings) and of its value."""

    key: tuple[int, int]
    value: tuple[int, int]


_MAX_NODES = 100_000


class _PositionLoader(yaml.SafeLoader):
    """SafeLoader that keeps YAML 1.1 surprises out: `1:30` stays a string, dates stay strings."""


def _position(mark: yaml.Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


class _Builder:
    """Turns a composed YAML node tree into plain data plus a map key path -> positions."""

    def __init__(self, loader: _PositionLoader, problems: list[_Problem]) -> None:
        self.loader = loader
        self.problems = problems
        self.where: dict[KeyPath, _Where] = {}
        self.nodes = 0
        self.active: set[int] = set()

    def build(self, node: yaml.Node, path: KeyPath, key_pos: tuple[int, int] | None = None) -> Any:
        pos = _position(node.start_mark)
        self.where[path] = _Where(key_pos or pos, pos)
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise _TooBig(pos)
        if id(node) in self.active:
            raise _Recursive(pos)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, path + (index,)) for index, item in enumerate(node.value)]
            return self._scalar(node)
        finally:
            self.active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value
        if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in node.value:
            return node.value  # YAML 1.1 base-60 numbers: keep "1:30" as written
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.problems.append(_Problem(_position(key_node.start_mark), path + (str(key),),
                                              f"duplicate key (first defined on line {seen[key]})"))
            else:
                seen[key] = line
        self.loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_pos = _position(key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(_Problem(key_pos, path, "keys must be plain text, not lists or mappings"))
                continue
            key = self._scalar(key_node)
            if not isinstance(key, str):
                self.problems.append(_Problem(key_pos, path + (str(key_node.value),),
                                              f"key {key_node.value!r} is read as {_describe(key)}; quote it"))
                continue
            result[key] = self.build(value_node, path + (key,), key_pos)
        return result


class _TooBig(Exception):
    def __init__(self, pos: tuple[int, int]) -> None:
        self.pos = pos


class _Recursive(Exception):
    def __init__(self, pos: tuple[int, int]) -> None:
        self.pos = pos


@dataclass(frozen=True)
class _Problem:
    pos: tuple[int, int]
    path: KeyPath
    message: str

    def render(self, file: str) -> str:
        line, col = self.pos
        where = f"{file}:{line}:{col}"
        key = _dotted(self.path)
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"


def _dotted(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _read_yaml(path: Path, display: str) -> tuple[Any, dict[KeyPath, _Where], list[_Problem]]:
    """Parse the file; YAML syntax errors raise ConfigError at once (nothing else can be checked)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{display}: no such file (create it, or pass --config PATH)") from None
    except IsADirectoryError:
        raise ConfigError(f"{display}: is a directory, expected a YAML file") from None
    except OSError as error:
        raise ConfigError(f"{display}: cannot read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        col = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise ConfigError(f"{display}:{line}:{col}: not valid UTF-8") from None
    problems: list[_Problem] = []
    loader = _PositionLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{display}:1:1: the file is empty; start with `version: 1`")
        builder = _Builder(loader, problems)
        data = builder.build(node, ())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, col = _position(mark) if mark else (1, 1)
        what = " ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(f"{display}:{line}:{col}: invalid YAML: {what}") from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        col = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        raise ConfigError(f"{display}:{line}:{col}: invalid YAML: unacceptable character {chr(error.character)!r}") from None
    except _TooBig as error:
        raise ConfigError(f"{display}:{error.pos[0]}:{error.pos[1]}: too many YAML nodes (alias expansion?)") from None
    except _Recursive as error:
        raise ConfigError(f"{display}:{error.pos[0]}:{error.pos[1]}: recursive YAML alias") from None
    except RecursionError:
        raise ConfigError(f"{display}: YAML nested too deeply") from None
    finally:
        loader.dispose()
    return data, builder.where, problems


# ------------------------------------------------------------------------------------- schema checks


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON schema (Draft 2020-12) of the configuration file."""
    return json.loads(resources.files("ci_runner").joinpath("schema.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


def _describe(value: object) -> str:
    """How the user's value reads in an error message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "nothing"}


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _schema_problems(data: Any, where: Mapping[KeyPath, _Where]) -> list[_Problem]:
    problems = []
    for error in _validator().iter_errors(data):
        problems.extend(_translate(error, where))
    return problems


def _locate(where: Mapping[KeyPath, _Where], path: KeyPath, *, key: bool = False) -> tuple[int, int]:
    """Position of `path` (its key when `key`), else of the nearest enclosing node that has one."""
    for cut in range(len(path), -1, -1):
        found = where.get(path[:cut])
        if found:
            return found.key if key and cut == len(path) else found.value
    return (1, 1)


def _translate(error: Any, where: Mapping[KeyPath, _Where]) -> Iterator[_Problem]:
    """One jsonschema error -> problems for the user, positioned at the offending key or value."""
    path: KeyPath = tuple(error.absolute_path)
    kind, sch, value = error.validator, error.schema, error.instance
    if "propertyNames" in error.absolute_schema_path:
        name_path = path + (value,)
        yield _Problem(_locate(where, name_path, key=True), name_path,
                       f"invalid name: {sch.get('x-error') or error.message}")
    elif kind == "additionalProperties":
        allowed = list(sch.get("properties", {}))
        for extra in value:
            if extra not in allowed:
                key_path = path + (extra,)
                hint = _suggest(extra, allowed) or f" (expected one of: {', '.join(allowed)})"
                yield _Problem(_locate(where, key_path, key=True), key_path, f"unknown key{hint}")
    elif kind == "required":
        for missing in sch["required"]:
            if missing not in value:
                yield _Problem(_locate(where, path), path, f"missing required key {missing!r}")
    elif kind == "type":
        types = sch["type"] if isinstance(sch["type"], list) else [sch["type"]]
        if set(types) >= {"string", "integer", "number", "boolean"}:
            expected = "a single value (text, number or true/false)"
        else:
            expected = " or ".join(_TYPE_WORDS[t] for t in types)
        yield _Problem(_locate(where, path), path, f"expected {expected}, got {_describe(value)}")
    elif kind == "enum":
        options = ", ".join(repr(o) for o in sch["enum"])
        hint = _suggest(value, [str(o) for o in sch["enum"]]) if isinstance(value, str) else ""
        yield _Problem(_locate(where, path), path, f"expected one of {options}, got {_describe(value)}{hint}")
    elif kind == "const":
        yield _Problem(_locate(where, path), path, f"expected {sch['const']!r}, got {_describe(value)}")
    elif kind == "pattern":
        yield _Problem(_locate(where, path), path,
                       f"{sch.get('x-error') or 'does not match ' + sch['pattern']}, got {_describe(value)}")
    elif kind in ("minimum", "maximum"):
        bound = "at least" if kind == "minimum" else "at most"
        yield _Problem(_locate(where, path), path, f"expected {bound} {sch[kind]}, got {_describe(value)}")
    elif kind in ("minLength", "minItems", "minProperties"):
        yield _Problem(_locate(where, path), path, "must not be empty")
    elif kind == "uniqueItems":
        for index, item in enumerate(value):
            if any(same_value(item, earlier) for earlier in value[:index]):
                yield _Problem(_locate(where, path + (index,)), path + (index,), f"duplicate value {item!r}")
                break
    else:  # pragma: no cover - every keyword the schema uses is handled above
        yield _Problem(_locate(where, path), path, error.message)


def same_value(a: object, b: object) -> bool:
    """Equality of matrix values: 4 == 4.0, but '4' != 4 and True != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------------- semantic checks


class _Checks:
    """Rules beyond the schema. Written defensively: the data may also have schema errors."""

    def __init__(self, data: dict[str, Any], where: Mapping[KeyPath, _Where], base: Path) -> None:
        self.data = data
        self.where = where
        self.base = base
        self.problems: list[_Problem] = []

    def fail(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        self.problems.append(_Problem(_locate(self.where, path, key=key), path, message))

    def run(self) -> None:
        data = self.data
        for key in ("queue_timeout", "api_retry_limit"):
            if key in data:
                self.duration((key,), data[key])
        if isinstance(data.get("sbatch"), dict):
            self.sbatch(("sbatch",), data["sbatch"])
        if "max_output" in data:
            self.size(("max_output",), data["max_output"], MIN_MAX_OUTPUT)
        if "max_artifact_size" in data:
            self.size(("max_artifact_size",), data["max_artifact_size"], 0)
        self.matrix(data.get("matrix"))
        self.system()
        self.body()
        for key in ("artifacts", "junit"):
            globs = data.get(key)
            items = [globs] if isinstance(globs, str) else globs if isinstance(globs, list) else []
            for index, glob in enumerate(items):
                path = (key,) if isinstance(globs, str) else (key, index)
                self.glob(path, glob)

    def duration(self, path: KeyPath, value: object) -> float | None:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            return None  # the schema reports the type
        try:
            seconds = parse_duration(value)
        except InvalidDuration as error:
            self.fail(path, str(error))
            return None
        if seconds <= 0:
            self.fail(path, "expected a duration greater than zero")
            return None
        return seconds

    def size(self, path: KeyPath, value: object, minimum: int) -> None:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            return  # the schema reports the type
        try:
            size = parse_size(value)
        except InvalidSize as error:
            self.fail(path, str(error))
            return
        if size < minimum:
            self.fail(path, f"expected at least {format_size(minimum)} ({minimum} bytes), got {size} bytes")

    def sbatch(self, path: KeyPath, options: dict[str, Any]) -> None:
        for name, value in options.items():
            if name in RESERVED_SBATCH:
                self.fail(path + (name,), f"set by ci-runner, remove it ({RESERVED_SBATCH[name]})", key=True)
            elif name == "time":
                if isinstance(value, int) and not isinstance(value, bool) or (
                        isinstance(value, str) and value.strip().isdigit()):
                    self.fail(path + (name,), "ambiguous bare number (Slurm reads minutes, ci-runner seconds); "
                                              "write it with a unit like 30m or as HH:MM:SS")
                else:
                    self.duration(path + (name,), value)

    def step_options(self, path: KeyPath, options: dict[str, Any]) -> None:
        """Under `pack: true` an include's sbatch options are its job step's: only what a step can set
        (steps.py), unless it repeats the top-level value (the allocation's)."""
        top = self.data.get("sbatch") if isinstance(self.data.get("sbatch"), dict) else {}
        for name in own_options(options, top, same_value):
            why = refusal(name)
            if why is not None and name not in RESERVED_SBATCH:
                self.fail(path + (name,), f"not a job step option (pack: true): {why}", key=True)

    def matrix(self, matrix: object) -> None:
        if not isinstance(matrix, dict):
            return
        axes = {name: values for name, values in matrix.items()
                if name not in MATRIX_KEYWORDS and isinstance(values, list)}
        for name in matrix:
            if name in MATRIX_KEYWORDS:
                continue
            close = difflib.get_close_matches(name, MATRIX_KEYWORDS, n=1, cutoff=0.75)
            if close:
                self.fail(("matrix", name), f"looks like a misspelled keyword; did you mean {close[0]!r}?", key=True)
            elif name in RESERVED_AXES:
                self.fail(("matrix", name), f"{name!r} is reserved in templates; rename the axis", key=True)
        if isinstance(axes.get("system"), list):
            for index, value in enumerate(axes["system"]):
                if not (isinstance(value, str) and SYSTEM_NAME.fullmatch(value)):
                    self.fail(("matrix", "system", index), f"expected a system name, got {_describe(value)}")
        excludes = matrix.get("exclude")
        for index, exclude in enumerate(excludes if isinstance(excludes, list) else []):
            if isinstance(exclude, dict):
                self.exclude(("matrix", "exclude", index), exclude, axes)
        includes = matrix.get("include")
        for index, include in enumerate(includes if isinstance(includes, list) else []):
            if not isinstance(include, dict):
                continue
            path: KeyPath = ("matrix", "include", index)
            for name, value in include.items():
                if name in RESERVED_AXES - {"sbatch"}:
                    self.fail(path + (name,), f"{name!r} is reserved in templates; rename the variable", key=True)
                elif name == "system" and not (isinstance(value, str) and SYSTEM_NAME.fullmatch(value)):
                    self.fail(path + (name,), f"expected a system name, got {_describe(value)}")
            if isinstance(include.get("sbatch"), dict):
                self.sbatch(path + ("sbatch",), include["sbatch"])
                if self.data.get("pack") is True:
                    self.step_options(path + ("sbatch",), include["sbatch"])

    def exclude(self, path: KeyPath, exclude: dict[str, Any], axes: Mapping[str, list[Any]]) -> None:
        for name, value in exclude.items():
            if name not in axes:
                hint = _suggest(name, axes) or f" (axes: {', '.join(axes) or 'none'})"
                self.fail(path + (name,), f"not a matrix axis{hint}", key=True)
            elif not any(same_value(value, option) for option in axes[name]):
                shown = ", ".join(repr(o) for o in axes[name])
                quoted = any(str(option) == str(value) for option in axes[name])
                hint = " (check quoting: the types differ)" if quoted else ""
                self.fail(path + (name,), f"{value!r} is not a value of axis {name!r} ({shown}){hint}; "
                                          "this exclude matches nothing")

    def system(self) -> None:
        matrix = self.data.get("matrix")
        has_axis = isinstance(matrix, dict) and "system" in matrix
        if "system" not in self.data and not has_axis:
            self.fail((), "missing required key 'system' (or a `system` matrix axis)")

    def body(self) -> None:
        has_script, has_template = "script" in self.data, "template" in self.data
        if has_script and has_template:
            self.fail(("template",), "use either `script` or `template`, not both", key=True)
        elif not has_script and not has_template:
            self.fail((), "missing the job body: add `script: ...` or `template: path/to/job.sh.j2`")
        template = self.data.get("template")
        if isinstance(template, str) and template and not has_script:
            target = self.base / template
            if "\x00" in template or not target.is_file():
                self.fail(("template",), f"template file {template!r} not found (relative to {self.base})")

    def glob(self, path: KeyPath, glob: object) -> None:
        if not isinstance(glob, str) or not glob:
            return
        if any(c in glob for c in "\n\r\x00"):
            self.fail(path, "expected a glob on one line")
        elif glob.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", glob):
            self.fail(path, f"expected a path relative to the checkout, got {glob!r}")
        elif ".." in PurePosixPath(glob.replace("\\", "/")).parts:
            self.fail(path, f"'..' is not allowed (paths stay inside the checkout), got {glob!r}")


# ------------------------------------------------------------------------------------------ assembly


def _normalised_sbatch(options: Mapping[str, Any]) -> dict[str, Scalar]:
    result: dict[str, Scalar] = dict(options)
    if "time" in result:
        result["time"] = slurm_time(parse_duration(result["time"]))  # type: ignore[arg-type]
    return result


def _env_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _build_config(data: dict[str, Any], path: Path, where: Mapping[KeyPath, _Where], display: str) -> Config:
    matrix = data.get("matrix") or {}
    matrix_pos = _locate(where, ("matrix",), key=True)
    includes = []
    for include in matrix.get("include", []):
        include = dict(include)
        if "sbatch" in include:
            include["sbatch"] = _normalised_sbatch(include["sbatch"])
        includes.append(include)
    spec = MatrixSpec(
        axes=tuple((name, tuple(values)) for name, values in matrix.items() if name not in MATRIX_KEYWORDS),
        exclude=tuple(dict(e) for e in matrix.get("exclude", [])),
        include=tuple(includes),
        max_entries=int(matrix.get("max_entries", DEFAULT_MAX_ENTRIES)),
        location=f"{display}:{matrix_pos[0]}:{matrix_pos[1]}" if "matrix" in data else display,
    )
    junit = data.get("junit", [])
    return Config(
        path=path,
        system=data.get("system", ""),
        matrix=spec,
        script=data.get("script"),
        template=(path.parent / data["template"]).resolve() if "template" in data else None,
        version=int(data["version"]),
        account=data.get("account"),
        workdir=data.get("workdir"),
        checkout=data.get("checkout", "clone"),
        queue_timeout=parse_duration(data["queue_timeout"]) if "queue_timeout" in data else None,
        sbatch=_normalised_sbatch(data.get("sbatch", {})),
        env={name: _env_text(value) for name, value in data.get("env", {}).items()},
        pass_env=tuple(data.get("pass_env", [])),
        artifacts=tuple(data.get("artifacts", [])),
        junit=(junit,) if isinstance(junit, str) else tuple(junit),
        requests_per_minute=int(data.get("requests_per_minute", DEFAULT_REQUESTS_PER_MINUTE)),
        api_retry_limit=(parse_duration(data["api_retry_limit"]) if "api_retry_limit" in data
                         else DEFAULT_API_RETRY_LIMIT),
        resubmit=int(data.get("resubmit", 0)),
        cleanup=bool(data.get("cleanup", False)),
        job_arrays=bool(data.get("job_arrays", True)),
        pack=bool(data.get("pack", False)),
        max_output=parse_size(data["max_output"]) if "max_output" in data else DEFAULT_MAX_OUTPUT,
        max_artifact_size=(parse_size(data["max_artifact_size"]) if "max_artifact_size" in data
                           else DEFAULT_MAX_ARTIFACT_SIZE),
    )


def load(path: Path) -> Config:
    """Read and validate a config file. Raises ConfigError with one `file:line:col: key: problem` per line."""
    path = Path(path)
    display = str(path)
    data, where, problems = _read_yaml(path, display)
    if not isinstance(data, dict):
        line, col = _locate(where, ())
        raise ConfigError(f"{display}:{line}:{col}: expected a mapping of keys (version, system, script, ...), "
                          f"got {_describe(data)}")
    problems += _schema_problems(data, where)
    checks = _Checks(data, where, path.parent)
    checks.run()
    problems += checks.problems
    if problems:
        unique = sorted(set(problems), key=lambda p: (p.pos, _dotted(p.path), p.message))
        lines = [problem.render(display) for problem in unique[:MAX_REPORTED]]
        if len(unique) > MAX_REPORTED:
            lines.append(f"{display}: ... and {len(unique) - MAX_REPORTED} more problems")
        raise ConfigError("\n".join(lines))
    return _build_config(data, path, where, display)
