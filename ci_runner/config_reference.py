"""The configuration reference in README.md, generated from `schema.json` and the matrix rules.

Regenerate after changing either with the command in `REGENERATE` (tests/test_readme_reference.py
fails, and prints it, while the README is stale).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ci_runner import matrix
from ci_runner.config_schema import schema as config_schema

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
REGENERATE = ('python -c "from pathlib import Path; from ci_runner.config_reference import update_readme; '
              "update_readme(Path('README.md'))\"")


def _type_text(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    types = node.get("type", [])
    types = types if isinstance(types, list) else [types]
    words = []
    for kind in types:
        if kind == "array":
            item = node.get("items", {}).get("type", "value")
            item = "scalar" if isinstance(item, list) else item
            words.append(f"list of {item}s" if item != "object" else "list of mappings")
        elif kind == "object":
            words.append("mapping")
        else:
            words.append(kind)
    if set(types) >= {"string", "integer", "number", "boolean"}:
        return "scalar"
    return " or ".join(words) or "see below"


def _default_text(node: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'])}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(node: dict[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        if "$ref" in child:
            continue
        key = f"{prefix}{name}"
        yield key, child, name in required
        yield from _rows(child, f"{key}.")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "description" in extra:
        placeholder = "<axis>" if prefix == "matrix." else "<option>" if prefix == "sbatch." else "<name>"
        yield f"{prefix}{placeholder}", extra, False


def reference_markdown(schema: dict[str, Any] | None = None) -> str:
    """The README's configuration reference: one table row per key, then the matrix expansion rules."""
    schema = schema if schema is not None else config_schema()
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, node, required in _rows(schema, ""):
        lines.append(f"| `{key}` | {_type_text(node)} | {_default_text(node, required)} | "
                     f"{_cell(node['description'])} |")
    rules = (matrix.__doc__ or "").split("\n\n", 1)[1].strip()
    return "\n".join(lines) + "\n\n### Matrix expansion\n\n" + rules + "\n"


def update_readme(path: Path) -> bool:
    """Replace the text between the reference markers in `path`; True when it changed."""
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{reference_markdown()}{END}{tail}"
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


def readme_reference(text: str) -> str:
    """The text between the markers of a README (without the markers and the newline after START)."""
    return text.split(START, 1)[1].split(END, 1)[0].removeprefix("\n")
