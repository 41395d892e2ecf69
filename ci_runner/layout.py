"""Where an entry's files live on the cluster: `<workdir>/<run_id>/<entry>/...`.

Every path built here ends up in `#SBATCH` lines, FirecREST requests and shell commands, so the
rule is strict: absolute POSIX paths made of `A-Z a-z 0-9 . _ - + , @ /` only, no `.`/`..`
components. No whitespace, quotes, `%` (sbatch expands `%` patterns in output paths), `~`, `$` or
other shell metacharacters: the generated script still shell-quotes them, this rule is a second wall.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ci_runner.errors import ConfigError, UsageError

_PATH_CHARS = re.compile(r"[A-Za-z0-9._+,@/-]+")
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_JOB_ID = re.compile(r"[0-9]+")

OUTPUT_NAME = "slurm-%j.out"   # stdout and stderr merged; sbatch replaces %j by the job id
BODY_NAME = "ci-runner-job.sh"  # the user's rendered script, written there by the job itself


@dataclass(frozen=True)
class EntryLayout:
    """Remote paths of one entry. `output` still contains `%j` (see `output_path`)."""

    root: str      # <workdir>/<run_id>/<entry>; the job's working directory
    src: str       # root/src: the checkout; the user's script runs here
    archive: str   # root/source.tar.gz: the uploaded `git archive` (checkout: upload)
    output: str    # root/slurm-%j.out: stdout and stderr of the job

    @property
    def body(self) -> str:
        """Where the job writes the user's rendered script before running it (outside the checkout)."""
        return f"{self.root}/{BODY_NAME}"

    def output_path(self, job_id: str | int) -> str:
        """The output file of job `job_id` (`%j` expanded)."""
        text = str(job_id)
        if not _JOB_ID.fullmatch(text):
            raise UsageError(f"not a Slurm job id: {text!r}")
        return self.output.replace("%j", text)


def entry_layout(workdir: str, run_id: str, entry_name: str) -> EntryLayout:
    """The layout of entry `entry_name` of run `run_id` under the remote base directory `workdir`.

    Raises ConfigError for an unusable `workdir` or entry name, UsageError for an unusable run id.
    """
    base = check_remote_dir(workdir)
    _check_name(run_id, "run id", UsageError)
    _check_name(entry_name, "entry name", ConfigError)
    root = f"{base.rstrip('/')}/{run_id}/{entry_name}"
    return EntryLayout(
        root=root,
        src=f"{root}/src",
        archive=f"{root}/source.tar.gz",
        output=f"{root}/{OUTPUT_NAME}",
    )


def check_remote_dir(path: str) -> str:
    """`path` without trailing slashes if it is a safe absolute remote directory, else ConfigError."""
    if not path.startswith("/"):
        raise ConfigError(f"workdir {path!r}: must be an absolute path on the cluster")
    if not _PATH_CHARS.fullmatch(path):
        bad = sorted({c for c in path if not _PATH_CHARS.fullmatch(c)})
        raise ConfigError(
            f"workdir {path!r}: character(s) {''.join(bad)!r} not allowed; "
            "use only letters, digits and . _ - + , @ /"
        )
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise ConfigError(f"workdir {path!r}: '.' and '..' components are not allowed")
    return "/" + "/".join(parts)


def _check_name(name: str, what: str, error: type[ConfigError] | type[UsageError]) -> None:
    if not _NAME_CHARS.fullmatch(name) or name in (".", ".."):
        raise error(f"{what} {name!r}: use only letters, digits and . _ - (and not '.' or '..')")
