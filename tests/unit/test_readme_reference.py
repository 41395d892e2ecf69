"""The README's configuration reference is generated from schema.json; the schema documents every key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from jsonschema import Draft202012Validator

from ci_runner.config_reference import REGENERATE, readme_reference, reference_markdown
from ci_runner.config_schema import schema

README = Path(__file__).resolve().parents[2] / "README.md"


def objects(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node that describes a mapping with named properties."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path or "(top level)", node
        for key, child in node.items():
            yield from objects(child, f"{path}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from objects(child, f"{path}/{index}")


def test_readme_reference_matches_the_schema() -> None:
    current = readme_reference(README.read_text(encoding="utf-8"))
    assert current == reference_markdown(), f"README.md config reference is stale; regenerate with:\n  {REGENERATE}"


def test_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_property_has_a_description_and_no_unknown_keys_pass() -> None:
    found = list(objects(schema()))
    assert len(found) >= 3  # top level, matrix, include items
    for path, node in found:
        for name, child in node["properties"].items():
            assert "$ref" in child or child.get("description"), f"{path}.{name} has no description"
        assert node.get("additionalProperties") is not True and "additionalProperties" in node, path


def test_reference_lists_every_top_level_key() -> None:
    text = reference_markdown()
    for name in schema()["properties"]:
        assert f"| `{name}` |" in text
    assert "### Matrix expansion" in text and "fits no combination" in text
