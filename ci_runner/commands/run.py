"""`ci-runner run`: config → entries → CI context → job scripts → Cluster → `runner.run`, plus the
signal handlers (SIGINT/SIGTERM set the runner's stop event) and the embedded sandbox of `--sandbox`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ci_runner import statefile
from ci_runner.commands.connect import first_contact, open_cluster, site_workdir
from ci_runner.errors import CIRunnerError, UsageError
from ci_runner.matrix import select_entries

if TYPE_CHECKING:
    from ci_runner.ci import CIContext
    from ci_runner.config import Config
    from ci_runner.matrix import Entry
    from ci_runner.reporters import Reporter
    from ci_runner.statefile import RunState


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
        state_path = Path(request.state_file) if request.state_file else statefile.find(ci.run_id, cwd)
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
    entries = select_entries(entries, request.entry_names)
    if plan.recorded is not None:  # --attach: only the state file's entries
        entries = [entry for entry in entries if entry.name in plan.recorded.entries]
        if not entries:
            raise UsageError("none of the state file's entries is in the configuration")
    if not entries:
        raise UsageError("the matrix has no entries")
    systems = sorted({entry.system for entry in entries})
    if len(systems) > 1:
        raise UsageError(f"the selected entries run on several systems ({', '.join(systems)}); run one system "
                         "per `ci-runner run` (--system, or --entry with the CI's own matrix: `ci-runner matrix`)")
    return entries, systems[0]


def _with_overrides(config: Config, request: RunRequest) -> Config:
    from ci_runner.units import parse_duration

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
    from ci_runner import render, runner, sbatch_header, transfer
    from ci_runner.source_archive import source_archive
    from ci_runner.run_context import RunOptions
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
            source = transfer.plan_source(source_archive(plan.cwd, ci.sha), run_layout(workdir, ci.run_id),
                                          info.output_cap)
        specs = render.job_scripts(config, entries, ci, workdir, environ, source=source, output_cap=info.output_cap,
                                   arrays=config.job_arrays, pack=config.pack)
        for note in sbatch_header.pack_notes(config, specs):
            reporter.info(note)
        options = RunOptions.from_config(
            config, run_id=ci.run_id, workdir=workdir, state_file=plan.state_path, system=system, source=source,
            attach=recorded is not None, output_cap=info.output_cap)
        return await runner.run(specs, cluster, reporter, options, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await cluster.close()
