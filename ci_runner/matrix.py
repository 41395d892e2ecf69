"""Expand the matrix into entries: axes x values, `exclude`, `include`; stable names.

The rules, in order (GitHub Actions semantics for `include`):

1. **Combinations.** The Cartesian product of the axes, in file order: the first axis varies
   slowest. Without axes there are no combinations.
2. **Exclude.** A combination is dropped when it equals an `exclude` object on every key the
   object names (a partial match). Values compare by type: `4` matches `4` and `4.0`, not `"4"`.
3. **Include.** Each `include` object, in order, is tried against every remaining combination of
   step 2. It *fits* a combination when it does not change any of the combination's axis values
   (keys it shares with the axes have equal values). Its other keys are set on **every**
   combination it fits, replacing values an earlier include set there; its `sbatch` mapping is
   merged over that entry's `sbatch`. An object that fits no combination becomes a **new entry** with
   just its own keys (a later include never extends such a new entry). So an include can bring
   back a combination that `exclude` dropped, as a new entry.
4. **No matrix.** A configuration without axes and without includes has one entry, `default`.
5. **sbatch.** An entry's options are the top-level `sbatch` with its includes' `sbatch` on top.
6. **system.** An entry runs on its `system` value (an axis or an include key), else on `system`.
7. **Names.** An entry's name joins its axis values with `-` in axis order (`gcc-4`), also for a
   new entry from an include (only an include without any axis key is named by all its values).
   Values become `true`/`false` for booleans; characters outside `[A-Za-z0-9._-]` become `_`
   (accents are dropped first), leading `-`/`.` are removed, names are cut at 64 characters, and
   a name already taken (ignoring case) gets `-2`, `-3`, ... in order.
8. **Limits.** Zero entries, or more than `max_entries` (default 256), is a configuration error.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ci_runner.config import Config
from ci_runner.config_values import Scalar, same_value
from ci_runner.errors import ConfigError, UsageError

MAX_NAME = 64
MAX_COMBINATIONS = 1_000_000  # product size we are willing to walk before `exclude`
DEFAULT_NAME = "default"


@dataclass(frozen=True)
class Entry:
    """One job of the matrix."""

    name: str                      # unique, readable, safe as a file/dir name, e.g. "gcc-4"
    index: int                     # position in the deterministic order, from 0
    values: Mapping[str, Scalar]   # matrix variables for the template (axes and include extras)
    sbatch: Mapping[str, Scalar]   # top-level sbatch merged with this entry's overrides
    system: str                    # FirecREST system for this entry


@dataclass
class _Row:
    """A combination under construction: its fixed axis values, the values added, sbatch overrides."""

    original: dict[str, Scalar]
    values: dict[str, Scalar]
    sbatch: dict[str, Scalar] = field(default_factory=dict)
    name_keys: tuple[str, ...] = ()


def expand(config: Config) -> list[Entry]:
    """The entries of `config`'s matrix in deterministic order (rules in the module docstring)."""
    spec = config.matrix
    where = spec.location or str(config.path)
    rows = _combinations(config, where)
    added: list[_Row] = []
    for include in spec.include:
        values = {k: v for k, v in include.items() if k != "sbatch"}
        sbatch = dict(include.get("sbatch", {}))  # type: ignore[call-overload]
        fitting = [row for row in rows if _fits(row.original, values)]
        for row in fitting:
            row.values.update(values)  # type: ignore[arg-type]
            row.sbatch.update(sbatch)
        if not fitting:
            axis_names = [name for name, _ in spec.axes]
            keys = [k for k in axis_names if k in values] or list(values)
            added.append(_Row(dict(values), dict(values), sbatch, tuple(keys)))  # type: ignore[arg-type]
    rows += added
    if not spec.axes and not spec.include:
        rows = [_Row({}, {})]
    if not rows:
        raise ConfigError(f"{where}: matrix: expands to zero entries (every combination is excluded)")
    if len(rows) > spec.max_entries:
        raise ConfigError(f"{where}: matrix: expands to {len(rows)} entries, more than max_entries "
                          f"({spec.max_entries}); exclude some or raise `max_entries`")
    names = unique_names([_base_name([row.values[k] for k in row.name_keys]) for row in rows])
    entries = []
    for index, (row, name) in enumerate(zip(rows, names)):
        system = row.values.get("system", config.system)
        if not system:
            raise ConfigError(f"{where}: matrix: entry {name!r} has no system; set `system:` or give it a "
                              f"`system` value")
        entries.append(Entry(name=name, index=index, values=dict(row.values),
                             sbatch={**config.sbatch, **row.sbatch}, system=str(system)))
    return entries


def _combinations(config: Config, where: str) -> list[_Row]:
    """Step 1 and 2: the product of the axes minus the excluded combinations (lazily, within limits)."""
    spec = config.matrix
    if not spec.axes:
        return []
    total = math.prod(len(values) for _, values in spec.axes)
    if total > MAX_COMBINATIONS:
        raise ConfigError(f"{where}: matrix: {total} combinations before exclude, more than "
                          f"{MAX_COMBINATIONS}; the limit is max_entries ({spec.max_entries})")
    names = tuple(name for name, _ in spec.axes)
    rows: list[_Row] = []
    for combination in itertools.product(*(values for _, values in spec.axes)):
        values = dict(zip(names, combination))
        if any(_fits(values, exclude) for exclude in spec.exclude):
            continue
        rows.append(_Row(values, dict(values), name_keys=names))
        if len(rows) > spec.max_entries:  # includes never remove entries: fail before walking further
            raise ConfigError(f"{where}: matrix: expands to more than max_entries ({spec.max_entries}) "
                              f"entries; exclude some or raise `max_entries`")
    return rows


def _fits(fixed: Mapping[str, Scalar], candidate: Mapping[str, object]) -> bool:
    """True when `candidate` agrees with `fixed` on every key they share."""
    return all(same_value(fixed[key], value) for key, value in candidate.items() if key in fixed)


def value_text(value: Scalar) -> str:
    """A matrix value as it appears in names: booleans as `true`/`false`, numbers as written by Python."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """`text` reduced to `[A-Za-z0-9._-]`, no leading `-`/`.`, at most MAX_NAME characters, never empty."""
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = "".join(c for c in decomposed if not unicodedata.combining(c))
    cleaned = _UNSAFE.sub("_", ascii_text).lstrip("-.")[:MAX_NAME].rstrip("-")
    return cleaned or "entry"


def _base_name(values: Iterable[Scalar]) -> str:
    parts = [value_text(v) for v in values]
    return safe_name("-".join(parts)) if parts else DEFAULT_NAME


def unique_names(bases: list[str]) -> list[str]:
    """Make `bases` unique ignoring case: repeats get `-2`, `-3`, ..., never taking a later base name."""
    reserved = {base.lower() for base in bases}
    taken: set[str] = set()
    names = []
    for base in bases:
        name = base
        counter = 1
        while name.lower() in taken or (name != base and name.lower() in reserved):
            counter += 1
            suffix = f"-{counter}"
            name = base[: MAX_NAME - len(suffix)] + suffix
        taken.add(name.lower())
        names.append(name)
    return names


def select_entries(entries: Sequence[Entry], names: Sequence[str]) -> list[Entry]:
    """The entries called `names` (all when empty), in matrix order; UsageError naming the valid ones."""
    if not names:
        return list(entries)
    known = {entry.name for entry in entries}
    unknown = [name for name in dict.fromkeys(names) if name not in known]
    if unknown:
        raise UsageError(f"unknown entry {', '.join(repr(name) for name in unknown)}; valid entries: "
                         f"{', '.join(entry.name for entry in entries)}")
    return [entry for entry in entries if entry.name in names]
