"""Reporters: the only code that writes CI log syntax and CI report files.

`for_context` picks the reporter for the detected CI; `base.py` holds the interface and what every
reporter shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence, TextIO

from ci_runner.reporters.base import Reporter
from ci_runner.reporters.github import GitHubReporter
from ci_runner.reporters.gitlab import GitLabReporter
from ci_runner.reporters.junit import JUNIT_NAME
from ci_runner.reporters.plain import PlainTextReporter, supports_color
from ci_runner.reporters.result import EntryResult

if TYPE_CHECKING:
    from ci_runner.ci import CIContext, CIPaths, Provider

__all__ = ["EntryResult", "PlainTextReporter", "Reporter", "for_context", "for_failure", "supports_color"]


def for_context(
    ci: CIContext,
    stream: TextIO,
    *,
    entries: Sequence[str] | None = None,
    color: bool = False,
) -> Reporter:
    """The reporter for the CI that runs us.

    `entries`: names of the entries this run will follow (one entry: groups/sections; several:
    `[entry] ` prefixes; None: prefixes). `color` applies to plain/Jenkins output only (the caller
    decides with `supports_color(stream, environ)`); GitHub and GitLab always render colours.
    Report files go where the CI wants them: GitHub outputs/summary files and the current directory
    (the workspace) for JUnit + JSON summary; GitLab CI_PROJECT_DIR; Jenkins WORKSPACE. A project
    directory that does not exist here (gitlab-ci-local's shell executor reports a made-up one) means
    the current directory, where the CI's job script starts.
    """
    if ci.provider == "github":
        return GitHubReporter(
            stream,
            entries=entries,
            output_path=ci.paths.github_output,
            summary_path=ci.paths.github_step_summary,
            report_dir=Path.cwd(),
            run_url=ci.run_url,
        )
    if ci.provider == "gitlab":
        return GitLabReporter(stream, entries=entries, report_dir=_existing_dir(ci.paths.gitlab_project_dir))
    if ci.provider == "jenkins":
        workspace = _existing_dir(ci.paths.jenkins_workspace)
        return PlainTextReporter(stream, color=color, entries=entries, junit_path=workspace / JUNIT_NAME)
    return PlainTextReporter(stream, color=color, entries=entries)


def for_failure(provider: Provider, paths: CIPaths, stream: TextIO) -> Reporter:
    """A reporter for a run that failed before it had one (`run_failed` only): the configuration
    could not be read, or the CI context not be built."""
    if provider == "github":
        return GitHubReporter(stream, output_path=paths.github_output, summary_path=paths.github_step_summary)
    return PlainTextReporter(stream)


def _existing_dir(path: Path | None) -> Path:
    return path if path is not None and path.is_dir() else Path.cwd()
