"""The rules of the config file that `schema.json` cannot express: durations and sizes, reserved
sbatch options and names, pack mode's step options, matrix references, the job body, paths.

`semantic_problems` is written defensively: the data may also have schema errors (reported apart).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from ci_runner.config_problems import KeyPath, Positions, Problem, locate, suggest
from ci_runner.config_values import describe, same_value
from ci_runner.reserved import MATRIX_KEYWORDS, RESERVED_SBATCH, TEMPLATE_NAMES
from ci_runner.steps import own_options, refusal
from ci_runner.units import InvalidDuration, InvalidSize, format_size, parse_duration, parse_size

_MIN_MAX_OUTPUT = 1024  # bytes: `max_output` below this would show next to nothing
# Matrix axes may not shadow the template's names, nor `sbatch` (an include's option overrides).
_RESERVED_AXES = frozenset(TEMPLATE_NAMES) | {"sbatch"}
_SYSTEM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def semantic_problems(data: dict[str, Any], where: Positions, base: Path) -> list[Problem]:
    """The problems of `data` beyond the schema; `base` is the config file's directory (templates)."""
    checks = _Checks(data, where, base)
    checks.run()
    return checks.problems


class _Checks:
    """Rules beyond the schema. Written defensively: the data may also have schema errors."""

    def __init__(self, data: dict[str, Any], where: Positions, base: Path) -> None:
        self.data = data
        self.where = where
        self.base = base
        self.problems: list[Problem] = []

    def fail(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        self.problems.append(Problem(locate(self.where, path, key=key), path, message))

    def run(self) -> None:
        data = self.data
        for key in ("queue_timeout", "api_retry_limit"):
            if key in data:
                self.duration((key,), data[key])
        if isinstance(data.get("sbatch"), dict):
            self.sbatch(("sbatch",), data["sbatch"])
        if "max_output" in data:
            self.size(("max_output",), data["max_output"], _MIN_MAX_OUTPUT)
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
        sbatch = self.data.get("sbatch")
        top: Mapping[str, object] = sbatch if isinstance(sbatch, dict) else {}
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
            elif name in _RESERVED_AXES:
                self.fail(("matrix", name), f"{name!r} is reserved in templates; rename the axis", key=True)
        if isinstance(axes.get("system"), list):
            for index, value in enumerate(axes["system"]):
                if not (isinstance(value, str) and _SYSTEM_NAME.fullmatch(value)):
                    self.fail(("matrix", "system", index), f"expected a system name, got {describe(value)}")
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
                if name in TEMPLATE_NAMES:
                    self.fail(path + (name,), f"{name!r} is reserved in templates; rename the variable", key=True)
                elif name == "system" and not (isinstance(value, str) and _SYSTEM_NAME.fullmatch(value)):
                    self.fail(path + (name,), f"expected a system name, got {describe(value)}")
            if isinstance(include.get("sbatch"), dict):
                self.sbatch(path + ("sbatch",), include["sbatch"])
                if self.data.get("pack") is True:
                    self.step_options(path + ("sbatch",), include["sbatch"])

    def exclude(self, path: KeyPath, exclude: dict[str, Any], axes: Mapping[str, list[Any]]) -> None:
        for name, value in exclude.items():
            if name not in axes:
                hint = suggest(name, axes) or f" (axes: {', '.join(axes) or 'none'})"
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
