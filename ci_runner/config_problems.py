"""A problem found in the config file, at the line and column of the key or value it is about.

The YAML reader records where every key path sits (`Positions`); the schema and the semantic
checks report `Problem`s against those positions; `config.load` renders them as
`file:line:col: key.path: what was expected`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

KeyPath = tuple[Union[str, int], ...]


@dataclass(frozen=True)
class Where:
    """1-based line and column of a key (for mappings) and of its value."""

    key: tuple[int, int]
    value: tuple[int, int]


Positions = Mapping[KeyPath, Where]


@dataclass(frozen=True)
class Problem:
    """One thing to fix: where (line, column), which key, what was expected."""

    pos: tuple[int, int]
    path: KeyPath
    message: str

    def render(self, file: str) -> str:
        line, col = self.pos
        where = f"{file}:{line}:{col}"
        key = dotted(self.path)
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"


def dotted(path: Iterable[str | int]) -> str:
    """A key path as the user writes it: `matrix.include[0].sbatch`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def locate(where: Positions, path: KeyPath, *, key: bool = False) -> tuple[int, int]:
    """Position of `path` (its key when `key`), else of the nearest enclosing node that has one."""
    for cut in range(len(path), -1, -1):
        found = where.get(path[:cut])
        if found:
            return found.key if key and cut == len(path) else found.value
    return (1, 1)


def suggest(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest of `choices`, or ""."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
