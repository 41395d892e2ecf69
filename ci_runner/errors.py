"""Errors the user can act on. Each carries the process exit code that `cli.main` uses.

Exit codes (README, `ci-runner --help`): 0 all passed, 1 a test failed, 2 usage or config error,
3 infrastructure, 4 Slurm time limit, 130 cancelled.
"""

from __future__ import annotations


class CIRunnerError(Exception):
    """Base class: a message for the user, never a traceback."""

    exit_code = 1


class ConfigError(CIRunnerError):
    """The configuration, a template or a command-line argument is wrong. Message names file:line:col."""

    exit_code = 2


class SubmitRejected(ConfigError):
    """sbatch rejected the job as configured (invalid partition, account, QOS limit, unknown option)."""


class UsageError(CIRunnerError):
    """The command was called wrongly (unknown entry, missing environment variable, ...)."""

    exit_code = 2


class InfraError(CIRunnerError):
    """The cluster or the API failed, not the tests."""

    exit_code = 3
