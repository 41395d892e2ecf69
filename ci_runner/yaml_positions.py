"""Read the config file's YAML into plain data, remembering the line and column of every key and value.

Syntax errors (and unreadable files, bad UTF-8, alias bombs) raise `ConfigError` at once: nothing
else can be checked. Duplicate keys and keys that are not text are `Problem`s, reported with the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ci_runner.config_problems import KeyPath, Problem, Where
from ci_runner.config_values import describe
from ci_runner.errors import ConfigError

_MAX_NODES = 100_000


class _PositionLoader(yaml.SafeLoader):
    """SafeLoader that keeps YAML 1.1 surprises out: `1:30` stays a string, dates stay strings."""


def _position(mark: yaml.Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


class _Builder:
    """Turns a composed YAML node tree into plain data plus a map key path -> positions."""

    def __init__(self, loader: _PositionLoader, problems: list[Problem]) -> None:
        self.loader = loader
        self.problems = problems
        self.where: dict[KeyPath, Where] = {}
        self.nodes = 0
        self.active: set[int] = set()

    def build(self, node: yaml.Node, path: KeyPath, key_pos: tuple[int, int] | None = None) -> Any:
        pos = _position(node.start_mark)
        self.where[path] = Where(key_pos or pos, pos)
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
                self.problems.append(Problem(_position(key_node.start_mark), path + (str(key),),
                                             f"duplicate key (first defined on line {seen[key]})"))
            else:
                seen[key] = line
        self.loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_pos = _position(key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(Problem(key_pos, path, "keys must be plain text, not lists or mappings"))
                continue
            key = self._scalar(key_node)
            if not isinstance(key, str):
                self.problems.append(Problem(key_pos, path + (str(key_node.value),),
                                             f"key {key_node.value!r} is read as {describe(key)}; quote it"))
                continue
            result[key] = self.build(value_node, path + (key,), key_pos)
        return result


class _TooBig(Exception):
    def __init__(self, pos: tuple[int, int]) -> None:
        self.pos = pos


class _Recursive(Exception):
    def __init__(self, pos: tuple[int, int]) -> None:
        self.pos = pos


def read_yaml(path: Path, display: str) -> tuple[Any, dict[KeyPath, Where], list[Problem]]:
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
    problems: list[Problem] = []
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

