"""Where a run's files live on the cluster.

    <workdir>/<run_id>/                  the run: made by one `mkdir` (with parents) of `output/`
    <workdir>/<run_id>/output/           every job's working directory and output file,
        <entry>.<jobid>.out              so one `ls` of it gives the size of every output
    <workdir>/<run_id>/source.tar.gz.partNNN  the `git archive` (checkout: upload) in parts that fit
                                         one direct upload, uploaded once per run on a cache miss;
                                         the first job joins them into the cache and removes them
    <workdir>/<run_id>/<entry>/          made by the job itself: `src/` (the checkout, where the
        src/, ci-runner-job.sh,          user's script runs), the rendered script and the parts of
        artifact-parts/                  artifacts too large for one download (transfer.py)
    <workdir>/sources/                   the source cache, one verified archive per commit:
        <sha>-<sha256[:16]>.tar.gz{,.sha256}  made by the jobs (rename when complete); unused
                                         for CACHE_RETENTION_DAYS days → removed by the jobs

Nothing per entry is created before the submit, so the set-up costs the same whatever the number of
entries (Slurm opens the output file before the script runs: it must lie in an existing directory).

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

OUTPUT_DIR = "output"
SOURCES_DIR = "sources"         # <workdir>/sources: the per-commit source cache (so no run may be called that)
OUTPUT_SUFFIX = ".out"          # <entry>.%j.out: stdout and stderr merged; sbatch replaces %j by the job id
ARCHIVE_NAME = "source.tar.gz"
BODY_NAME = "ci-runner-job.sh"  # the user's rendered script, written there by the job itself


@dataclass(frozen=True)
class RunLayout:
    """Remote paths shared by every entry of a run."""

    root: str        # <workdir>/<run_id>
    output_dir: str  # root/output: the jobs' working directory and output files
    archive: str     # root/source.tar.gz: the uploaded `git archive` (its parts add .partNNN)

    @property
    def sources(self) -> str:
        """`<workdir>/sources`: the per-commit source cache shared by every run of the workdir."""
        return f"{self.root.rsplit('/', 1)[0]}/{SOURCES_DIR}"


def run_layout(workdir: str, run_id: str) -> RunLayout:
    """The layout of run `run_id` under the remote base directory `workdir` (ConfigError for an
    unusable `workdir`, UsageError for an unusable run id)."""
    base = check_remote_dir(workdir)
    _check_name(run_id, "run id", UsageError)
    if run_id == SOURCES_DIR:
        raise UsageError(f"run id {run_id!r}: reserved for the source cache directory")
    root = f"{base.rstrip('/')}/{run_id}"
    return RunLayout(root=root, output_dir=f"{root}/{OUTPUT_DIR}", archive=f"{root}/{ARCHIVE_NAME}")


@dataclass(frozen=True)
class EntryLayout:
    """Remote paths of one entry. `output` still contains `%j` (see `output_path`)."""

    run: RunLayout
    root: str      # <workdir>/<run_id>/<entry>: made by the job
    src: str       # root/src: the checkout; the user's script runs here
    output: str    # <run>/output/<entry>.%j.out: stdout and stderr of the job

    @property
    def archive(self) -> str:
        return self.run.archive

    @property
    def working_dir(self) -> str:
        """The job's working directory at submit (it must exist before the job starts)."""
        return self.run.output_dir

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
    run = run_layout(workdir, run_id)
    _check_name(entry_name, "entry name", ConfigError)
    if entry_name == OUTPUT_DIR:
        raise ConfigError(f"entry name {entry_name!r}: reserved for the run's output directory")
    root = f"{run.root}/{entry_name}"
    return EntryLayout(run=run, root=root, src=f"{root}/src",
                       output=f"{run.output_dir}/{entry_name}.%j{OUTPUT_SUFFIX}")


def output_prefix(entry_root: str) -> str:
    """The start of every output file name of the entry whose directory is `entry_root`
    (`<run>/output/<entry>.`): how a job found by the run's name is told apart from the others."""
    run_root, entry_name = entry_root.rsplit("/", 1)
    return f"{run_root}/{OUTPUT_DIR}/{entry_name}."


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
