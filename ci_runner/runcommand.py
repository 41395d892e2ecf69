"""The `run`, `cancel` and `systems` commands behind their thin click functions in cli.py.

Assembly only: config → entries → CI context → job scripts → Cluster → `runner.run`, plus the
signal handlers (SIGINT/SIGTERM set the runner's stop event) and the embedded sandbox of `--sandbox`.
Results are exit codes; errors are the typed errors of errors.py (cli.main maps them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import click

from ci_runner import statefile
from ci_runner.errors import CIRunnerError, InfraError, UsageError

if TYPE_CHECKING:
    from ci_runner.ci import CIContext
    from ci_runner.api import SystemInfo
    from ci_runner.cluster import Cluster, RetryPolicy
    from ci_runner.config import Config
    from ci_runner.matrix import Entry
    from ci_runner.reporters import Reporter
    from ci_runner.statefile import RunState

PRE_SUBMIT_RETRY_LIMIT = 15.0  # seconds: before the first submit a wrong URL or credential fails fast
CANCEL_REQUESTS_PER_MINUTE = 60
CANCEL_WAIT = 30.0  # `ci-runner cancel`: seconds to wait for the jobs to leave the queue


@dataclass(frozen=True)
class RunRequest:
    """The command line of `ci-runner run`."""

    config_path: str
    entry_names: tuple[str, ...] = ()
    system: str | None = None
    workdir: str | None = None
    checkout: str | None = None
    queue_timeout: str | None = None
    requests_per_minute: int | None = None
    state_file: str | None = None
    attach: bool = False
    sandbox: bool = False
    sandbox_backend: str = "auto"  # auto: the machine's Slurm when sbatch works here, else local processes


def run(request: RunRequest) -> int:
    """`ci-runner run`; the process exit code. An error that stops the run (usage, configuration,
    FirecREST unusable) is also reported to the CI (`Reporter.run_failed`: annotations, outputs)."""
    from ci_runner import ci as ci_module
    from ci_runner import reporters

    environ = dict(os.environ)
    reporter: Reporter | None = None
    sandbox = None
    try:
        if request.attach and request.sandbox:
            raise UsageError("--attach cannot be combined with --sandbox: a new embedded sandbox knows none of the "
                             "recorded jobs (serve one with `ci-runner sandbox` instead)")
        plan = _plan(request, environ)
        if request.sandbox:
            from ci_runner.sandbox import server_module

            server = server_module()
            # the site's quota, as the run's budget says: the sandbox tells the truth about a site
            quota = server.Faults(quota_per_minute=plan.config.requests_per_minute)
            sandbox = server.start_sandbox(server.SandboxOptions(root=None, backend=request.sandbox_backend,
                                                                 port=0, faults=quota))  # temp root, removed on stop
            environ.update(sandbox.env())
            plan = dataclasses.replace(plan, system=plan.system or sandbox.system,
                                       default_workdir=f"{sandbox.root}/ci-runner")
        entries, system = _entries(plan, request)
        reporter = reporters.for_context(plan.ci, sys.stdout, entries=[entry.name for entry in entries],
                                         color=reporters.supports_color(sys.stdout, environ))
        if sandbox is not None:
            where = ("this machine's Slurm" if sandbox.backend_name == "slurm"
                     else "local processes (no Slurm)")
            reporter.info(f"sandbox: the {sandbox.backend_name} backend runs the jobs on {where}; "
                          "--sandbox-backend local|slurm chooses")
        return asyncio.run(_run(plan, entries, system, environ, reporter))
    except CIRunnerError as error:
        if reporter is None:
            reporter = reporters.for_failure(ci_module.provider(environ), ci_module.report_paths(environ), sys.stdout)
        reporter.run_failed(str(error), error.exit_code)
        raise
    finally:
        if sandbox is not None:
            sandbox.stop()


@dataclass(frozen=True)
class _Plan:
    """What `run` knows before it talks to FirecREST."""

    config: Config
    ci: CIContext
    state_path: Path
    recorded: RunState | None
    cwd: Path
    system: str | None = None            # --system, or the sandbox's
    default_workdir: str | None = None   # the sandbox's root


def _plan(request: RunRequest, environ: Mapping[str, str]) -> _Plan:
    from ci_runner import ci as ci_module
    from ci_runner import config as config_module

    cwd = Path.cwd()
    config = _with_overrides(config_module.load(Path(request.config_path)), request)
    ci = ci_module.detect(environ, cwd)
    recorded: RunState | None = None
    if request.attach:
        state_path = Path(request.state_file) if request.state_file else find_state_file(ci.run_id, cwd)
        recorded = statefile.load(state_path)
        ci = dataclasses.replace(ci, run_id=recorded.run_id)
    else:
        state_path = Path(request.state_file) if request.state_file else statefile.default_path(ci.run_id, cwd)
    return _Plan(config, ci, state_path, recorded, cwd, system=request.system)


def _entries(plan: _Plan, request: RunRequest) -> tuple[list[Entry], str]:
    """The selected entries (on `plan.system` when set) and the one system they run on."""
    from ci_runner import matrix

    entries = matrix.expand(plan.config)
    if plan.system:
        entries = [dataclasses.replace(entry, system=plan.system) for entry in entries]
    entries = select_entries(entries, request.entry_names, plan.recorded)
    systems = sorted({entry.system for entry in entries})
    if len(systems) > 1:
        raise UsageError(f"the selected entries run on several systems ({', '.join(systems)}); run one system "
                         "per `ci-runner run` (--system, or --entry with the CI's own matrix: `ci-runner matrix`)")
    return entries, systems[0]


def _with_overrides(config: Config, request: RunRequest) -> Config:
    from ci_runner.config import parse_duration

    changes: dict[str, Any] = {}
    if request.checkout:
        changes["checkout"] = request.checkout
    if request.queue_timeout:
        try:
            changes["queue_timeout"] = parse_duration(request.queue_timeout)
        except (ValueError, TypeError) as error:
            raise UsageError(f"--queue-timeout {request.queue_timeout!r}: {error}") from error
    if request.requests_per_minute:
        changes["requests_per_minute"] = request.requests_per_minute
    if request.workdir:
        changes["workdir"] = request.workdir
    return dataclasses.replace(config, **changes)


async def _run(plan: _Plan, entries: Sequence[Entry], system: str, environ: Mapping[str, str],
               reporter: Reporter) -> int:
    from ci_runner import render, runner, transfer, workspace
    from ci_runner.layout import run_layout

    config, ci, recorded = plan.config, plan.ci, plan.recorded
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    cluster = open_cluster(environ, system, config.requests_per_minute, on_secret=reporter.mask,
                           retry_limit=config.api_retry_limit)
    for secret in cluster.credentials.secrets():
        reporter.mask(secret)
    try:
        # The output cap, and the default work dir if none is set. With --attach jobs exist already:
        # an outage then is waited out like any other, with the configured limit.
        info = await first_contact(cluster, pre_submit=recorded is None)
        if recorded is not None:
            workdir = recorded.workdir
        else:
            workdir = config.workdir or plan.default_workdir or site_workdir(info)
        source = None  # with --attach too: a resubmitted job needs the same archive (from the cache)
        if config.checkout == "upload":
            source = transfer.plan_source(workspace.source_archive(plan.cwd, ci.sha), run_layout(workdir, ci.run_id),
                                          info.output_cap)
        specs = render.job_scripts(config, entries, ci, workdir, environ, source=source, output_cap=info.output_cap,
                                   arrays=config.job_arrays, pack=config.pack)
        for note in render.pack_notes(config, specs):
            reporter.info(note)
        options = runner.RunOptions.from_config(
            config, run_id=ci.run_id, workdir=workdir, state_file=plan.state_path, system=system, source=source,
            attach=recorded is not None, output_cap=info.output_cap)
        return await runner.run(specs, cluster, reporter, options, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await cluster.close()


async def first_contact(cluster: Cluster, *, pre_submit: bool = True) -> SystemInfo:
    """The system's entry in /status/systems: the run's first request, and its check of the settings.

    `pre_submit`: nothing has been submitted yet, so there is nothing to lose by failing fast: the
    request (token included) is retried for at most PRE_SUBMIT_RETRY_LIMIT seconds instead of
    `api_retry_limit` (meant for a FirecREST restart in the middle of a run), and a failure says what
    was tried and which setting to check. The cluster's own policy is back in force afterwards.
    """
    configured = cluster.retry
    if pre_submit:
        cluster.retry = pre_submit_policy(configured)
    try:
        return await cluster.system_info()
    except (UsageError, InfraError) as error:
        raise type(error)(f"{error}\nNothing was submitted (before the first submit a request is retried for at "
                          f"most {PRE_SUBMIT_RETRY_LIMIT:g} s). {settings_hint(cluster)}") from None
    finally:
        cluster.retry = configured


def pre_submit_policy(configured: RetryPolicy) -> RetryPolicy:
    """`configured`, bounded to PRE_SUBMIT_RETRY_LIMIT seconds (a shorter configured limit stays)."""
    return dataclasses.replace(configured, max_total=min(configured.max_total, PRE_SUBMIT_RETRY_LIMIT),
                               limit_name="the limit before the first submit")


def settings_hint(cluster: Cluster) -> str:
    """What to check when FirecREST cannot be used at all: every setting involved, with its value
    (never a secret's)."""
    credentials = cluster.credentials
    if credentials.api_key:
        login = f"FIRECREST_API_KEY (and FIRECREST_API_KEY_HEADER, now {credentials.api_key_header!r})"
    else:
        login = (f"AUTH_TOKEN_URL (now {credentials.token_url!r}), FIRECREST_CLIENT_ID (now "
                 f"{credentials.client_id!r}) and FIRECREST_CLIENT_SECRET (the client's secret)")
    return (f"Check FIRECREST_URL (now {credentials.url!r}: the site's FirecREST v2 base URL, reachable from "
            f"this runner), {login}, and the system name (now {cluster.system!r}: --system, the config's "
            "`system` or FIRECREST_SYSTEM; `ci-runner systems` lists them). See Troubleshooting in the README.")


def site_workdir(info: SystemInfo) -> str:
    """`ci-runner/` under the system's default work dir (when the config sets no `workdir`)."""
    if info.default_workdir is None:
        raise InfraError(f"system {info.name!r} lists no file systems: set `workdir` in the config")
    return f"{info.default_workdir.rstrip('/')}/ci-runner"


def open_cluster(environ: Mapping[str, str], system: str | None, requests_per_minute: int,
                 on_secret: Callable[[str], None] | None = None, retry_limit: float | None = None) -> Cluster:
    """A Cluster from the FIRECREST_* environment (UsageError naming what is missing); `on_secret`
    learns every access token as it is fetched (to mask it); `retry_limit`: seconds one request is
    retried (default: RetryPolicy's)."""
    from ci_runner.budget import RequestBudget
    from ci_runner.cluster import Cluster, RetryPolicy
    from ci_runner.credentials import Credentials

    retry = RetryPolicy() if retry_limit is None else RetryPolicy(max_total=retry_limit)
    return Cluster(Credentials.from_env(environ), system or None, budget=RequestBudget(requests_per_minute),
                   retry=retry, on_secret=on_secret)


def find_state_file(run_id: str, cwd: Path) -> Path:
    """This CI run's state file, else the newest in ./.ci-runner-state/ (local runs get a new id each time)."""
    path = statefile.default_path(run_id, cwd)
    if path.exists():
        return path
    newest = statefile.newest(cwd)
    if newest is None:
        raise UsageError(f"no state file in {cwd / statefile.STATE_DIR}; pass --state-file PATH")
    return newest


def select_entries(entries: Sequence[Entry], names: Sequence[str], recorded: RunState | None) -> list[Entry]:
    """`--entry` filter (an unknown name is a usage error); with --attach only the state file's entries."""
    known = [entry.name for entry in entries]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"unknown entry {', '.join(unknown)}; entries: {', '.join(known)}")
    chosen = [entry for entry in entries if not names or entry.name in names]
    if recorded is not None:
        chosen = [entry for entry in chosen if entry.name in recorded.entries]
        if not chosen:
            raise UsageError("none of the state file's entries is in the configuration")
    if not chosen:
        raise UsageError("the matrix has no entries")
    return chosen


def cancel(job_ids: Sequence[str], state_file: str | None, system: str | None) -> int:
    """`ci-runner cancel`: cancel ids, or every unfinished job of a state file; 0 once none is left running."""
    from ci_runner import cancel as cancel_module
    from ci_runner import ci as ci_module

    environ = dict(os.environ)
    handle = None
    if not job_ids:
        if state_file:
            path = Path(state_file)
        else:
            try:
                run_id = ci_module.detect(environ, Path.cwd()).run_id
            except UsageError:
                run_id = ""
            path = find_state_file(run_id, Path.cwd())
        handle = statefile.StateFile.open(path)
        system = system or handle.state.system
    system = system or environ.get("FIRECREST_SYSTEM")
    if not system:
        raise UsageError("no system: pass --system or set FIRECREST_SYSTEM")

    async def cancel_all() -> cancel_module.CancelReport:
        cluster = open_cluster(environ, system, CANCEL_REQUESTS_PER_MINUTE)
        try:
            if handle is not None:
                return await cancel_module.cancel_recorded(cluster, handle, wait=CANCEL_WAIT)
            return await cancel_module.cancel_jobs(cluster, list(job_ids), wait=CANCEL_WAIT)
        finally:
            await cluster.close()

    report = asyncio.run(cancel_all())
    for line in report.lines:
        click.echo(f"ci-runner: {line}")
    if report.still_running:
        raise InfraError(f"still not finished after {CANCEL_WAIT:.0f} s: job(s) {', '.join(report.still_running)}")
    return 0


def systems(system: str | None) -> int:
    """`ci-runner systems`: one line per system and service; 3 when the chosen system is missing or unhealthy.

    The chosen system is `--system`, else FIRECREST_SYSTEM; with neither, every system is shown and
    any unhealthy one gives 3.
    """
    environ = dict(os.environ)
    chosen = system or environ.get("FIRECREST_SYSTEM")

    async def health() -> list[dict[str, Any]]:
        cluster = open_cluster(environ, chosen, CANCEL_REQUESTS_PER_MINUTE)
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
    for entry in shown:
        name = str(entry.get("name"))
        services = entry.get("servicesHealth") or []
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
