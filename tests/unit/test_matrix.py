"""matrix.expand: product order, exclude, include (GitHub semantics), sbatch merge, names, limits."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ci_runner.config import Config, ConfigError, MatrixSpec, load
from ci_runner.matrix import MAX_NAME, expand, safe_name, unique_names


def make(axes: dict[str, list[Any]] | None = None, *, exclude: list[dict[str, Any]] | None = None,
         include: list[dict[str, Any]] | None = None, max_entries: int = 256, system: str = "daint",
         sbatch: dict[str, Any] | None = None) -> Config:
    spec = MatrixSpec(axes=tuple((k, tuple(v)) for k, v in (axes or {}).items()), exclude=tuple(exclude or ()),
                      include=tuple(include or ()), max_entries=max_entries, location="c.yml:4:1")
    return Config(path=Path("c.yml"), system=system, matrix=spec, script="true", sbatch=sbatch or {})


def names(config: Config) -> list[str]:
    return [entry.name for entry in expand(config)]


def values(config: Config) -> list[dict[str, Any]]:
    return [dict(entry.values) for entry in expand(config)]


def test_product_in_file_order_first_axis_slowest() -> None:
    entries = expand(make({"compiler": ["gcc", "nvhpc"], "ranks": [1, 4]}))
    assert [e.name for e in entries] == ["gcc-1", "gcc-4", "nvhpc-1", "nvhpc-4"]
    assert [e.index for e in entries] == [0, 1, 2, 3]
    assert entries[1].values == {"compiler": "gcc", "ranks": 4}
    assert all(e.system == "daint" for e in entries)


def test_no_matrix_is_one_default_entry() -> None:
    [entry] = expand(make(sbatch={"partition": "debug"}))
    assert (entry.name, entry.index, dict(entry.values), dict(entry.sbatch)) == ("default", 0, {}, {"partition": "debug"})


def test_exclude_partial_and_full_matches() -> None:
    config = make({"a": [1, 2], "b": ["x", "y"], "c": [True, False]},
                  exclude=[{"a": 2}, {"a": 1, "b": "y", "c": False}])
    assert names(config) == ["1-x-true", "1-x-false", "1-y-true"]


def test_exclude_that_matches_nothing_left_changes_nothing() -> None:
    config = make({"a": [1, 2]}, exclude=[{"a": 2}, {"a": 2}])  # the second one has nothing left to drop
    assert names(config) == ["1"]


def test_exclude_compares_types() -> None:
    assert names(make({"n": [1, 4]}, exclude=[{"n": 4.0}])) == ["1"]
    assert names(make({"n": [1, 4]}, exclude=[{"n": "4"}])) == ["1", "4"]
    assert names(make({"b": [True, 1]}, exclude=[{"b": True}])) == ["1"]


def test_github_documentation_example() -> None:
    """The example of the GitHub Actions docs ("Expanding or adding matrix configurations")."""
    config = make({"fruit": ["apple", "pear"], "animal": ["cat", "dog"]}, include=[
        {"color": "green"},
        {"color": "pink", "animal": "cat"},
        {"fruit": "apple", "shape": "circle"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ])
    assert values(config) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]
    assert names(config) == ["apple-cat", "apple-dog", "pear-cat", "pear-dog", "banana", "banana-cat"]


def test_include_never_overwrites_an_axis_value() -> None:
    config = make({"cc": ["gcc"], "n": [1]}, include=[{"cc": "gcc", "n": 2}])
    assert values(config) == [{"cc": "gcc", "n": 1}, {"cc": "gcc", "n": 2}]  # cannot extend gcc-1: new entry


def test_include_can_bring_back_an_excluded_combination() -> None:
    config = make({"cc": ["gcc", "cray"], "n": [1, 2]}, exclude=[{"cc": "cray", "n": 2}],
                  include=[{"cc": "cray", "n": 2, "note": "back"}])
    assert names(config) == ["gcc-1", "gcc-2", "cray-1", "cray-2"]
    assert expand(config)[-1].values == {"cc": "cray", "n": 2, "note": "back"}


def test_include_only_matrix_makes_one_entry_per_include() -> None:
    config = make(include=[{"cc": "gcc"}, {"cc": "cray", "n": 2}])
    assert values(config) == [{"cc": "gcc"}, {"cc": "cray", "n": 2}]
    assert names(config) == ["gcc", "cray-2"]


def test_include_sbatch_is_merged_only_where_it_applies() -> None:
    config = make({"cc": ["gcc", "cray"]}, sbatch={"partition": "normal", "time": "00:10:00"}, include=[
        {"cc": "cray", "sbatch": {"partition": "debug"}},
        {"sbatch": {"nodes": 2}},
        {"cc": "cray", "sbatch": {"partition": "large"}},
        {"cc": "intel", "sbatch": {"time": "01:00:00"}},
    ])
    sbatch = {e.name: dict(e.sbatch) for e in expand(config)}
    assert sbatch == {
        "gcc": {"partition": "normal", "time": "00:10:00", "nodes": 2},
        "cray": {"partition": "large", "time": "00:10:00", "nodes": 2},
        "intel": {"partition": "normal", "time": "01:00:00"},
    }
    assert all("sbatch" not in e.values for e in expand(config))


def test_system_per_entry() -> None:
    config = make({"system": ["daint", "eiger"], "n": [1]}, system="", include=[{"system": "alps", "n": 9}])
    assert [(e.name, e.system) for e in expand(config)] == [("daint-1", "daint"), ("eiger-1", "eiger"), ("alps-9", "alps")]
    assert [e.system for e in expand(make({"n": [1]}, include=[{"system": "eiger"}]))] == ["eiger"]


def test_entry_without_system_is_an_error() -> None:
    config = make({"system": ["daint"]}, system="", include=[{"n": 1, "system": "daint"}, {"other": 1}])
    with pytest.raises(ConfigError, match=r"^c\.yml:4:1: matrix: entry '1' has no system"):
        expand(make({"n": [1]}, system=""))
    assert [e.system for e in expand(config)] == ["daint"]  # both includes extend daint


def test_zero_entries_is_an_error_naming_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^c\.yml:4:1: matrix: expands to zero entries"):
        expand(make({"a": [1, 2]}, exclude=[{"a": 1}, {"a": 2}]))


def test_more_than_max_entries_is_an_error() -> None:
    assert len(expand(make({"a": list(range(4)), "b": list(range(4))}, max_entries=16))) == 16
    with pytest.raises(ConfigError, match=r"more than max_entries \(15\)"):
        expand(make({"a": list(range(4)), "b": list(range(4))}, max_entries=15))
    with pytest.raises(ConfigError, match=r"expands to 3 entries, more than max_entries \(2\)"):
        expand(make({"a": [1, 2]}, include=[{"a": 3}], max_entries=2))


def test_huge_product_fails_fast() -> None:
    config = make({f"axis{i}": list(range(10)) for i in range(12)})
    with pytest.raises(ConfigError, match="combinations before exclude"):
        expand(config)


def test_name_collisions_get_numbered_suffixes() -> None:
    config = make({"v": ["a b", "a_b", "a/b", "A_B"]})
    assert names(config) == ["a_b", "a_b-2", "a_b-3", "A_B-4"]


def test_suffix_never_takes_a_later_natural_name() -> None:
    assert unique_names(["a", "a", "a-2"]) == ["a", "a-3", "a-2"]
    assert unique_names(["x", "X", "x-2", "x"]) == ["x", "X-3", "x-2", "x-4"]


HOSTILE = ["$(rm -rf /)", "`id`", "a'b\"c", "line\nbreak", "../../etc", "-rf", ".hidden", "..", "café", "日本語",
           " ", "", "a" * 200, "x;y|z&w", "tab\there", "*", "~root", "\x00nul", 3.5, True, False, -1]


def test_hostile_values_give_safe_unique_names() -> None:
    result = names(make({"v": HOSTILE}))
    assert len(set(n.lower() for n in result)) == len(HOSTILE)
    for name in result:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name), name
        assert len(name) <= MAX_NAME
    assert result[HOSTILE.index("café")] == "cafe"
    assert result[HOSTILE.index(3.5)] == "3.5"
    assert result[HOSTILE.index(True)] == "true"
    assert result[HOSTILE.index("-rf")] == "rf"


@pytest.mark.parametrize(("text", "name"), [
    ("gcc-4", "gcc-4"), ("../x", "_x"), ("...", "entry"), ("--", "entry"), ("a b  c", "a_b_c"), ("Ünïcode", "Unicode"),
    ("x" * 100, "x" * MAX_NAME),
])
def test_safe_name(text: str, name: str) -> None:
    assert safe_name(text) == name


def test_expansion_of_a_loaded_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(textwrap.dedent("""\
        version: 1
        system: daint
        sbatch: {partition: normal, time: 15m}
        matrix:
          compiler: [gcc, nvhpc]
          ranks: [1, 4]
          exclude: [{compiler: nvhpc, ranks: 4}]
          include: [{compiler: cray, ranks: 2, sbatch: {partition: debug, time: 1h}}]
        script: echo
        """))
    entries = expand(load(path))
    assert [e.name for e in entries] == ["gcc-1", "gcc-4", "nvhpc-1", "cray-2"]
    assert dict(entries[-1].sbatch) == {"partition": "debug", "time": "01:00:00"}
    assert dict(entries[0].sbatch) == {"partition": "normal", "time": "00:15:00"}


def test_loaded_file_with_zero_entries_names_the_matrix_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("version: 1\nsystem: d\nscript: x\nmatrix:\n  a: [1]\n  exclude: [{a: 1}]\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:4:1: matrix: expands to zero entries"):
        expand(load(path))
