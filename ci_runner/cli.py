"""Command line: thin click commands that call the library and map errors to exit codes.

Only this module calls `sys.exit`. Heavy modules (pyfirecrest, httpx, the sandbox server) are
imported inside the commands that need them, so `ci-runner --help` stays fast.
"""

from __future__ import annotations

import gc
import sys
import traceback
from pathlib import Path

import click

from ci_runner import __version__
from ci_runner.commands.render import RENDER_WORKDIR
from ci_runner.config_defaults import CONFIG_FILE
from ci_runner.errors import CIRunnerError

EXIT_CODES_HELP = """\b
Exit codes:
  0    every entry passed
  1    a test failed (non-zero exit, FAILED, OUT_OF_MEMORY)
  2    usage or configuration error (also: sbatch rejected the job)
  3    infrastructure (API unreachable, NODE_FAIL, BOOT_FAIL, PREEMPTED, queue timeout)
  4    Slurm time limit (TIMEOUT)
  130  cancelled by the CI (SIGINT/SIGTERM)
With several entries the most severe outcome wins."""


@click.group(
    help="Run CI tests as Slurm jobs through FirecREST.\n\n" + EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="ci-runner")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
def cli(debug: bool) -> None:
    """Top-level group; `--debug` is read again in `main` to decide on tracebacks."""


def _register_sandbox() -> None:
    from ci_runner.sandbox.command import sandbox  # click only; the server is imported on use

    cli.add_command(sandbox)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `ci-runner` console script."""
    code = _exit_code(sys.argv[1:] if argv is None else argv)
    # Exit without a collection of the whole heap: a run's imports and objects took ~0.1 s to collect
    # at interpreter exit, after the job had ended (atexit handlers and stream flushes still run).
    gc.freeze()
    sys.exit(code)


def _exit_code(args: list[str]) -> int:
    """Run the command line `args`; its exit code, errors reported in one line (`--debug`: traceback)."""
    debug = "--debug" in args
    try:
        result = cli.main(args=args, prog_name="ci-runner", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("ci-runner: cancelled", err=True)
        return 130
    except click.exceptions.Exit as stop:
        return stop.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except CIRunnerError as error:
        if debug:
            traceback.print_exc()
        click.echo(f"ci-runner: error: {error}", err=True)
        return error.exit_code
    except KeyboardInterrupt:
        click.echo("ci-runner: cancelled", err=True)
        return 130
    except Exception as error:  # noqa: BLE001 - last line of defence: one line, infrastructure code
        if debug:
            traceback.print_exc()
        click.echo(f"ci-runner: internal error: {type(error).__name__}: {error} (run with --debug for details)", err=True)
        return 3
    return result if isinstance(result, int) else 0


_register_sandbox()


# --- validate / matrix / render: the configuration, nothing submitted -------------------------------
# Each command's module (ci_runner/commands/) is imported inside its click function.

_CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=CONFIG_FILE,
    show_default=True, help="Configuration file.")


@cli.command("validate", help="Check the configuration file and its matrix; print one line with the entry count.")
@_CONFIG_OPTION
def validate_command(config_path: Path) -> None:
    from ci_runner.commands import validate

    validate.validate(config_path)


@cli.command("matrix", help="Print the matrix entries. json: a list of {name, values, sbatch, system}; "
             "github: one line for `strategy.matrix: ${{ fromJSON(...) }}` with `entry` per job "
             "(then `ci-runner run --entry ${{ matrix.entry }}`); gitlab: a `parallel: matrix:` list "
             "with ENTRY (then `ci-runner run --entry $ENTRY`).")
@_CONFIG_OPTION
@click.option("--format", "output_format", type=click.Choice(["json", "github", "gitlab"]), default="json",
              show_default=True, help="Output format.")
def matrix_command(config_path: Path, output_format: str) -> None:
    from ci_runner.commands import matrix

    matrix.matrix(config_path, output_format)


@cli.command("render", help="Dry run: print each entry's job script (or write <DIR>/<entry>.sh); submits nothing. "
                           "Entries with the same sbatch options are submitted as one job array, and with "
                           "`pack: true` a system's entries as the steps of one packed job: --arrays shows "
                           "the scripts as submitted (<DIR>/array+<k>.sh for an array, <DIR>/pack+<k>.sh for "
                           "a packed job).")
@_CONFIG_OPTION
@click.option("--entry", "entry_names", multiple=True, metavar="NAME", help="Only this entry (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write the scripts to DIR/<entry>.sh instead of printing them.")
@click.option("--workdir", metavar="DIR",
              help=f"Remote base directory (default: the config's `workdir`, else {RENDER_WORKDIR}; "
                   "`run` asks the system for its default).")
@click.option("--arrays", "as_submitted", is_flag=True,
              help="The scripts as submitted: one per packed job (step i runs entry i), one per job array "
                   "(task i runs entry i), one per other entry.")
def render_command(config_path: Path, entry_names: tuple[str, ...], out_dir: Path | None, workdir: str | None,
                   as_submitted: bool) -> None:
    from ci_runner.commands import render

    render.render(config_path, entry_names, out_dir, workdir, as_submitted)


# --- run / cancel / systems: talking to FirecREST ----------------------------------------------------
# Heavy imports (pyfirecrest, the sandbox server) stay inside the functions.


RUN_ENVIRONMENT_HELP = """\b
Environment (the pyfirecrest CLI's names):
  FIRECREST_URL            FirecREST v2 base URL
  AUTH_TOKEN_URL           OIDC token endpoint (client-credentials grant)
  FIRECREST_CLIENT_ID      OIDC client id
  FIRECREST_CLIENT_SECRET  OIDC client secret (never printed)
  FIRECREST_API_KEY        instead of the client credentials, where the site uses API keys
  FIRECREST_API_KEY_HEADER its header (default X-API-Key)
  FIRECREST_SYSTEM         system when neither --system nor the config names one
  NO_COLOR, FORCE_COLOR, CLICOLOR_FORCE  colour of plain (Jenkins, terminal) output
The CI's own variables (GITHUB_*, CI_*, JENKINS_URL, BUILD_*, GIT_*) give the commit and run id.
--sandbox sets the FIRECREST_* variables itself."""


@cli.command("run", help="Submit the matrix entries as Slurm jobs, stream their output live, exit with the "
             "most severe outcome.\n\n" + RUN_ENVIRONMENT_HELP + "\n\n" + EXIT_CODES_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=CONFIG_FILE,
              show_default=True, help="Configuration file.")
@click.option("--entry", "entry_names", multiple=True, metavar="NAME", help="Run only this entry (repeatable).")
@click.option("--system", help="FirecREST system (overrides the configuration).")
@click.option("--workdir", help="Remote base directory (default: config `workdir`, else the system's default).")
@click.option("--checkout", type=click.Choice(["clone", "upload", "none"]), help="Override `checkout`.")
@click.option("--queue-timeout", metavar="DUR", help="Cancel and fail (exit 3) when still pending after DUR, e.g. 30m.")
@click.option("--requests-per-minute", type=click.IntRange(min=1), metavar="N",
              help="FirecREST request budget shared by all entries (default: config, else 10).")
@click.option("--state-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Run state file (default: ./.ci-runner-state/<run-id>.json).")
@click.option("--attach", is_flag=True, help="Resume following the jobs of a state file (after a runner restart).")
@click.option("--sandbox", "use_sandbox", is_flag=True,
              help="Start the embedded sandbox FirecREST in-process and run against it (system `local`; its "
                   "quota per minute is the run's request budget, as a site's would be; "
                   "needs the `sandbox` extra: pip install 'ci-runner[sandbox]').")
@click.option("--sandbox-backend", type=click.Choice(["auto", "slurm", "local"]), default="auto", show_default=True,
              help="Where --sandbox runs the jobs: auto = this machine's Slurm when sbatch works here, else local "
                   "processes; slurm; local.")
def run_command(config_path: str, entry_names: tuple[str, ...], system: str | None, workdir: str | None,
                checkout: str | None, queue_timeout: str | None, requests_per_minute: int | None,
                state_file: str | None, attach: bool, use_sandbox: bool, sandbox_backend: str) -> int:
    from ci_runner.commands import run

    return run.run(run.RunRequest(
        config_path=config_path, entry_names=entry_names, system=system, workdir=workdir, checkout=checkout,
        queue_timeout=queue_timeout, requests_per_minute=requests_per_minute, state_file=state_file,
        attach=attach, sandbox=use_sandbox, sandbox_backend=sandbox_backend))


@cli.command("cancel", help="Cancel jobs: the given JOB_IDs, or every unfinished job of the state file "
             "(for `if: cancelled()` steps and GitLab `after_script`). Idempotent; exit 0 when nothing is left running.")
@click.argument("job_ids", nargs=-1)
@click.option("--state-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Run state file (default: this CI run's, else the newest in ./.ci-runner-state/).")
@click.option("--system", help="FirecREST system of the JOB_IDs (default: the state file's, else FIRECREST_SYSTEM).")
def cancel_command(job_ids: tuple[str, ...], state_file: str | None, system: str | None) -> int:
    from ci_runner.commands import cancel

    return cancel.cancel(job_ids, state_file, system)


@cli.command("systems", help="Show the health of the FirecREST systems (a pre-check); exit 3 when the chosen "
             "system is missing or unhealthy.")
@click.option("--system", help="Check only this system.")
def systems_command(system: str | None) -> int:
    from ci_runner.commands import systems

    return systems.systems(system)
