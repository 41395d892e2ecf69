"""The defaults schema.json documents (and the README reference shows) are the ones the code uses.

The code's defaults live in config_defaults.py; schema.json states them again in the file's own
notation for the reader. These tests fail when either side changes alone.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import yaml

from ci_runner.budget import RequestBudget
from ci_runner.cluster import RetryPolicy
from ci_runner.config import Config, MatrixSpec, load
from ci_runner.config_schema import schema
from ci_runner.runner import RunOptions

REQUIRED = {"version": 1, "system": "daint", "script": "echo hi"}


def documented(node: dict[str, Any]) -> dict[str, Any]:
    """Key -> its schema default, for the properties of `node` that document one."""
    return {name: child["default"] for name, child in node["properties"].items() if "default" in child}


def field_defaults(cls: type) -> dict[str, Any]:
    """Field name -> default of a dataclass, for the fields that have one."""
    values = {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            values[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            values[item.name] = item.default_factory()
    return values


def load_text(tmp_path: Path, data: dict[str, Any]) -> Config:
    path = tmp_path / ".ci-runner.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load(path)


def test_the_schema_documents_defaults() -> None:
    assert {"checkout", "requests_per_minute", "api_retry_limit", "max_output", "resubmit"} <= set(
        documented(schema()))
    assert "max_entries" in documented(schema()["properties"]["matrix"])


def test_writing_the_documented_defaults_changes_nothing(tmp_path: Path) -> None:
    top = {name: value for name, value in documented(schema()).items() if name != "matrix"}
    matrix = documented(schema()["properties"]["matrix"])
    explicit = load_text(tmp_path, {**REQUIRED, **top, "matrix": {"n": [1], **matrix}})
    implicit = load_text(tmp_path, {**REQUIRED, "matrix": {"n": [1]}})
    differ = {name: (getattr(explicit, name), getattr(implicit, name))
              for name in top if getattr(explicit, name) != getattr(implicit, name)}
    assert differ == {}, f"schema.json default -> (as loaded, the code's default): {differ}"
    assert explicit.matrix.max_entries == implicit.matrix.max_entries == MatrixSpec().max_entries


def test_every_default_of_the_code_is_documented() -> None:
    properties = schema()["properties"]
    undocumented = [name for name, value in field_defaults(Config).items()
                    if name in properties and value is not None and "default" not in properties[name]
                    and name not in ("matrix", "version")]
    assert undocumented == []
    assert "default" in properties["matrix"]["properties"]["max_entries"]


def test_the_runner_and_the_api_client_default_to_the_config_defaults() -> None:
    config = field_defaults(Config)
    run = field_defaults(RunOptions)
    shared = sorted(set(config) & set(run))
    assert {"queue_timeout", "resubmit", "cleanup", "max_output", "max_artifact_size"} <= set(shared)
    assert {name: run[name] for name in shared} == {name: config[name] for name in shared}
    budget = inspect.signature(RequestBudget).parameters["requests_per_minute"].default
    assert budget == config["requests_per_minute"]
    assert RetryPolicy().max_total == config["api_retry_limit"]
