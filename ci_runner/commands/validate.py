"""`ci-runner validate`: check the configuration and its matrix; one line with the entry count."""

from __future__ import annotations

from pathlib import Path

import click

from ci_runner import config, matrix


def validate(config_path: Path) -> None:
    """Print `<file>: OK, <n> entries: <names>` (and whether the run is packed); ConfigError otherwise."""
    loaded = config.load(config_path)
    entries = matrix.expand(loaded)
    noun = "entry" if len(entries) == 1 else "entries"
    systems = len({entry.system for entry in entries})
    packed = f"; packed: the steps of {systems} job{'s' if systems > 1 else ''} (one per system)" if loaded.pack else ""
    click.echo(f"{config_path}: OK, {len(entries)} {noun}: {', '.join(e.name for e in entries)}{packed}")
