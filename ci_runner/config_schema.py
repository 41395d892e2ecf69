"""The config file's structure: `schema.json` (Draft 2020-12, a package resource, which also
generates the README reference) and its validation errors in the user's words, at their positions."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Iterator

from jsonschema import Draft202012Validator

from ci_runner.config_problems import KeyPath, Positions, Problem, locate, suggest
from ci_runner.config_values import describe, same_value


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON schema (Draft 2020-12) of the configuration file."""
    return json.loads(resources.files("ci_runner").joinpath("schema.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "nothing"}


def schema_problems(data: Any, where: Positions) -> list[Problem]:
    """Every way `data` breaks `schema.json`, as problems at their positions."""
    problems: list[Problem] = []
    for error in _validator().iter_errors(data):
        problems.extend(_translate(error, where))
    return problems


def _translate(error: Any, where: Positions) -> Iterator[Problem]:
    """One jsonschema error -> problems for the user, positioned at the offending key or value."""
    path: KeyPath = tuple(error.absolute_path)
    kind, sch, value = error.validator, error.schema, error.instance
    if "propertyNames" in error.absolute_schema_path:
        name_path = path + (value,)
        yield Problem(locate(where, name_path, key=True), name_path,
                      f"invalid name: {sch.get('x-error') or error.message}")
    elif kind == "additionalProperties":
        allowed = list(sch.get("properties", {}))
        for extra in value:
            if extra not in allowed:
                key_path = path + (extra,)
                hint = suggest(extra, allowed) or f" (expected one of: {', '.join(allowed)})"
                yield Problem(locate(where, key_path, key=True), key_path, f"unknown key{hint}")
    elif kind == "required":
        for missing in sch["required"]:
            if missing not in value:
                yield Problem(locate(where, path), path, f"missing required key {missing!r}")
    elif kind == "type":
        types = sch["type"] if isinstance(sch["type"], list) else [sch["type"]]
        if set(types) >= {"string", "integer", "number", "boolean"}:
            expected = "a single value (text, number or true/false)"
        else:
            expected = " or ".join(_TYPE_WORDS[t] for t in types)
        yield Problem(locate(where, path), path, f"expected {expected}, got {describe(value)}")
    elif kind == "enum":
        options = ", ".join(repr(o) for o in sch["enum"])
        hint = suggest(value, [str(o) for o in sch["enum"]]) if isinstance(value, str) else ""
        yield Problem(locate(where, path), path, f"expected one of {options}, got {describe(value)}{hint}")
    elif kind == "const":
        yield Problem(locate(where, path), path, f"expected {sch['const']!r}, got {describe(value)}")
    elif kind == "pattern":
        yield Problem(locate(where, path), path,
                      f"{sch.get('x-error') or 'does not match ' + sch['pattern']}, got {describe(value)}")
    elif kind in ("minimum", "maximum"):
        bound = "at least" if kind == "minimum" else "at most"
        yield Problem(locate(where, path), path, f"expected {bound} {sch[kind]}, got {describe(value)}")
    elif kind in ("minLength", "minItems", "minProperties"):
        yield Problem(locate(where, path), path, "must not be empty")
    elif kind == "uniqueItems":
        for index, item in enumerate(value):
            if any(same_value(item, earlier) for earlier in value[:index]):
                yield Problem(locate(where, path + (index,)), path + (index,), f"duplicate value {item!r}")
                break
    else:  # pragma: no cover - every keyword the schema uses is handled above
        yield Problem(locate(where, path), path, error.message)
