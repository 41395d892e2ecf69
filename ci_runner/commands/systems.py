"""`ci-runner systems`: the health of the FirecREST systems (a pre-check)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import click

from ci_runner.commands.connect import ONE_SHOT_REQUESTS_PER_MINUTE, open_cluster, pre_submit_policy, settings_hint
from ci_runner.errors import InfraError, UsageError


def systems(system: str | None) -> int:
    """`ci-runner systems`: one line per system and service; 3 when the chosen system is missing or unhealthy.

    The chosen system is `--system`, else FIRECREST_SYSTEM; with neither, every system is shown and
    any unhealthy one gives 3.
    """
    environ = dict(os.environ)
    chosen = system or environ.get("FIRECREST_SYSTEM")

    async def health() -> list[dict[str, Any]]:
        cluster = open_cluster(environ, chosen, ONE_SHOT_REQUESTS_PER_MINUTE)
        cluster.retry = pre_submit_policy(cluster.retry)  # a pre-check: say at once what is wrong
        try:
            return await cluster.systems()
        except (UsageError, InfraError) as error:
            raise type(error)(f"{error}\n{settings_hint(cluster)}") from None
        finally:
            await cluster.close()

    found = asyncio.run(health())
    shown = [s for s in found if not chosen or str(s.get("name", "")).lower() == chosen.lower()]
    if chosen and not shown:
        names = ", ".join(str(s.get("name")) for s in found) or "none"
        raise InfraError(f"FirecREST has no system named {chosen!r}; systems: {names}")
    unhealthy = []
    for listed in shown:
        name = str(listed.get("name"))
        services = listed.get("servicesHealth") or []
        bad = [service for service in services if not service.get("healthy")]
        if bad:
            unhealthy.append(name)
        click.echo(f"{name}: {'healthy' if not bad else 'UNHEALTHY'}")
        for service in services:
            status = "ok" if service.get("healthy") else f"unhealthy: {service.get('message') or 'no message'}"
            where = f" {service['path']}" if service.get("path") else ""
            click.echo(f"  {service.get('serviceType')}{where}: {status}")
    if unhealthy:
        raise InfraError(f"unhealthy: {', '.join(unhealthy)}")
    return 0
