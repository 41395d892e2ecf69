"""Where a run's files live on the cluster.

    <workdir>/<run_id>/                  the run: made by one `mkdir` (with parents) of `output/`
    <workdir>/<run_id>/output/           every job's working directory and output file,
        <entry>.<jobid>.out              so one `ls` of it gives the size of every output
        pack+<k>.<jobid>.out             (a packed job's: every entry of it, as labelled records)
    <workdir>/<run_id>/source.tar.gz.partNNN  the `git archive` (checkout: upload) in parts that fit
                                         one direct upload, uploaded once per run on a cache miss;
                                         the first job joins them into the cache and removes them
    <workdir>/<run_id>/<entry>/          made by the job itself: `src/` (the checkout, where the
        src/, ci-runner-job.sh,          user's script runs), the rendered script and the parts of
        artifact-parts/                  artifacts too large for one download (transfer.py); in a
        ci-runner-step.sh{,.srun}        packed job also the entry's commands and srun's messages
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ci_runner.errors import ConfigError, UsageError

_PATH_CHARS = re.compile(r"[A-Za-z0-9._+,@/-]+")
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")  # a job, or task i of job array A as "A_i"

OUTPUT_DIR = "output"
SOURCES_DIR = "sources"         # <workdir>/sources: the per-commit source cache (so no run may be called that)
OUTPUT_SUFFIX = ".out"          # <entry>.%j.out: stdout and stderr merged; sbatch replaces %j by the job id
ARRAY_PREFIX = "array+"         # array+<k>.<A>_<i>.out: task i of the run's k-th job array (its entries in
TASK_ID_SUFFIX = ".id"          # order; `+` is not allowed in entry names); array+<k>.<A>_<i>.<j>.id: made by
                                # task i, whose own job id is j
PACK_PREFIX = "pack+"           # pack+<k>.<jobid>.out: the run's k-th packed job, every entry's output as
                                # labelled records (pack.py)
STEP_SCRIPT_NAME = "ci-runner-step.sh"  # <entry>/ci-runner-step.sh: a packed entry's commands, run as a job step
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
    array: tuple[int, int] | None = None  # (k, i): task i of the run's k-th job array; %j is then "A_i"
    pack: tuple[int, int] | None = None   # (k, i): step i of the run's k-th packed job (pack.py)

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

    @property
    def step_script(self) -> str:
        """Where a packed job writes this entry's commands before running them as a job step."""
        return f"{self.root}/{STEP_SCRIPT_NAME}"

    @property
    def output_prefix(self) -> str:
        """The start of the output file name of every job of this entry (`<run>/output/<entry>.`,
        for an array task `<run>/output/array+<k>.`): how a job found by the run's name is told
        apart from the others after a lost submit answer."""
        return self.output.split("%j", 1)[0]

    @property
    def slurm_output(self) -> str:
        """`output` as an sbatch pattern: `%j` for a job, `%A_%a` for a task of a job array."""
        return self.output.replace("%j", "%A_%a") if self.array is not None else self.output

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


def array_layout(layout: EntryLayout, array: int, task: int) -> EntryLayout:
    """`layout` as task `task` of the run's job array number `array`: its output file is
    `<run>/output/array+<k>.<A>_<i>.out`, named by the array and the task, not the entry (one sbatch
    pattern serves every task of an array)."""
    output = f"{layout.run.output_dir}/{ARRAY_PREFIX}{array}.%j{OUTPUT_SUFFIX}"
    return EntryLayout(run=layout.run, root=layout.root, src=layout.src, output=output, array=(array, task))


def pack_layout(layout: EntryLayout, pack: int, step: int) -> EntryLayout:
    """`layout` as step `step` of the run's packed job number `pack`: its output is the packed job's one
    file `<run>/output/pack+<k>.%j.out`, shared by every step of it as labelled records (pack.py)."""
    output = f"{layout.run.output_dir}/{PACK_PREFIX}{pack}.%j{OUTPUT_SUFFIX}"
    return EntryLayout(run=layout.run, root=layout.root, src=layout.src, output=output, pack=(pack, step))


def is_array_output(pattern: str) -> bool:
    """Whether an output file pattern (with `%j`) is a job array's (`<run>/output/array+<k>.%j.out`)."""
    return pattern.rsplit("/", 1)[-1].startswith(ARRAY_PREFIX)


def array_id_in(prefix: str, path: str) -> str | None:
    """A in `<prefix><A>_<i>.out` (an array task's output file, `prefix` = `<run>/output/array+<k>.`), else None."""
    if not path.startswith(prefix):
        return None
    head, underscore, _ = path[len(prefix):].partition("_")
    return head if underscore and head.isdigit() else None


def array_of(job_id: str) -> str:
    """What addresses job `job_id` when nothing more is known: the job, or for an array task `A_i` its
    array A (FirecREST addresses jobs by number only; that cancels every task of the array)."""
    task = split_task_id(job_id)
    return job_id if task is None else task[0]


def job_found(prefix: str) -> Callable[[str, str], str]:
    """For a job found by name after a lost submit answer, given its id and output file (which starts
    with `prefix`): the id to take, a job array's id (parsed from the file) for one of its tasks."""
    return lambda job_id, path: array_id_in(prefix, path) or job_id


def task_id(array_id: str, task: int) -> str:
    """`A_i`: how Slurm (and ci-runner's log and state file) names task `task` of job array `array_id`."""
    return f"{array_id}_{task}"


def split_task_id(job_id: str) -> tuple[str, int] | None:
    """(A, i) for a task id `A_i` as made by `task_id`, None for a plain job id."""
    array_id, underscore, task = job_id.partition("_")
    return (array_id, int(task)) if underscore and array_id.isdigit() and task.isdigit() else None


_TASK_ID_FILE = re.compile(rf"{re.escape(ARRAY_PREFIX)}[0-9]+\.([0-9]+_[0-9]+)\.([0-9]+){re.escape(TASK_ID_SUFFIX)}")


def task_job_ids(names: Iterable[str]) -> dict[str, str]:
    """From the names in the output directory: task id `A_i` -> the task's own Slurm job id (which
    FirecREST addresses it by, and which a Slurm without accounting lists it as)."""
    found = {}
    for name in names:
        match = _TASK_ID_FILE.fullmatch(name)
        if match:
            found[match.group(1)] = match.group(2)
    return found


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
