"""`ci-runner matrix`: the matrix entries as JSON, or for the CI's own matrix (GitHub, GitLab)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ci_runner import config
from ci_runner import matrix as matrices
from ci_runner.errors import UsageError

GITLAB_MAX_PARALLEL = 200  # GitLab rejects a `parallel: matrix:` with more jobs


def matrix(config_path: Path, output_format: str) -> None:
    """Print the entries in `output_format` (json, github, gitlab)."""
    entries = matrices.expand(config.load(config_path))
    if output_format == "github":
        document: object = {"include": [{"entry": e.name, **e.values} for e in entries]}
        click.echo(json.dumps(document, separators=(",", ":"), ensure_ascii=False))
    elif output_format == "gitlab":
        if len(entries) > GITLAB_MAX_PARALLEL:
            raise UsageError(f"{config_path}: {len(entries)} entries; GitLab's parallel:matrix allows at most "
                             f"{GITLAB_MAX_PARALLEL} jobs")
        click.echo(json.dumps([{"ENTRY": [e.name for e in entries]}], ensure_ascii=False))
    else:
        document = [{"name": e.name, "values": dict(e.values), "sbatch": dict(e.sbatch), "system": e.system}
                    for e in entries]
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
