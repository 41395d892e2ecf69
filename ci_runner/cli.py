"""Command line: thin click commands that call the library and map errors to exit codes.

Only this module calls `sys.exit`. Heavy modules (pyfirecrest, httpx, the sandbox server) are
imported inside the commands that need them, so `ci-runner --help` stays fast.
"""

from __future__ import annotations

import sys
import traceback

import click

from ci_runner import __version__
from ci_runner.errors import CIRunnerError

EXIT_CODES_HELP = """\b
Exit codes:
  0    every entry passed
  1    a test failed (non-zero exit, FAILED, OUT_OF_MEMORY)
  2    usage or configuration error
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
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = cli.main(args=args, prog_name="ci-runner", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("ci-runner: cancelled", err=True)
        sys.exit(130)
    except click.exceptions.Exit as stop:
        sys.exit(stop.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(2 if error.exit_code == 2 else error.exit_code)
    except CIRunnerError as error:
        if debug:
            traceback.print_exc()
        click.echo(f"ci-runner: error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("ci-runner: cancelled", err=True)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - last line of defence: one line, infrastructure code
        if debug:
            traceback.print_exc()
        click.echo(f"ci-runner: internal error: {type(error).__name__}: {error} (run with --debug for details)", err=True)
        sys.exit(3)
    sys.exit(result if isinstance(result, int) else 0)


_register_sandbox()
