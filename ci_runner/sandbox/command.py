"""`ci-runner sandbox`: serve the local FirecREST. Imports only click at module level."""

from __future__ import annotations

import click


@click.command(help="Serve a local FirecREST v2-compatible API (127.0.0.1 only) backed by Slurm or local processes.")
def sandbox() -> None:
    """Placeholder until the sandbox server lands."""
    raise click.ClickException("the sandbox is not implemented yet")
