"""Render each matrix entry's Slurm batch script. Pure: no cluster, no CI, no printing.

Layout of a generated script:

1. `#!/bin/bash` and the `#SBATCH` header: `--job-name`, `--output`/`--error` (one file, see
   layout.py), `--account` (from `account:` unless the entry's sbatch sets it), then the entry's
   merged `sbatch:` options as `--name=value` (true -> `--name`, false -> omitted).
2. A prologue (`set -uo pipefail`, no `-e`: it keeps exit codes itself) that exports the
   `CI_RUNNER_*` variables (CI_RUNNER_OUTPUT: the job's own output file), then the checkout into
   `<root>/src` (the job creates its entry directory; layout.py): `clone` fetches exactly the CI's
   SHA (`git init`, `git fetch --depth 1 <url> <sha>`, `git checkout --detach FETCH_HEAD`, and
   verifies HEAD); `upload` takes the commit's archive from the cluster's source cache, after
   joining the run's uploaded parts into it if it is not there yet (each part's sha256 checked,
   the whole renamed into the cache only when complete and verified; transfer.py), checks it and
   extracts it; `none` only creates the directory. Without a `SourcePlan` (`ci-runner render`
   outside a run) `upload` extracts the run's `source.tar.gz`.
   A failing checkout prints `ci-runner: checkout failed: ...` and exits with CHECKOUT_FAILED.
3. The user's rendered script, written by a quoted heredoc (delimiter derived from a hash of the
   body and checked absent from it) to `<root>/ci-runner-job.sh`. Then the `env:` variables are
   exported (this late, so that e.g. a PATH there cannot disturb git, tar or cat), and the script
   runs from `<root>/src` with `bash -eo pipefail` (the options GitHub Actions uses for `run:`
   steps); its exit status becomes the job's exit status. The job's very last action prints
   `ci-runner: job script exited with status N` (JOB_END_LINE, on stderr, i.e. into the output file):
   the user sees how the script ended, and the runner, seeing it in the stream, checks the job
   state at once instead of waiting for its next scheduled check. Just before that line, with
   `artifacts`/`junit` set, the job splits each matching file too large for one direct download
   (and not over `max_artifact_size`) into parts for the runner (`_split_artifacts`, transfer.py).

Quoting rules. Every value from the CI (sha, ref, URL, run id) and from `env:` is written through
`shlex.quote`. In the template, every `{{ expression }}` is shell-quoted by default (a
`finalize` hook), so `echo {{ ci.ref }}` stays one inert word whatever the branch is called;
`| shquote` is accepted (no double quoting) and `| raw` opts out for text that must stay shell
syntax (several words, a macro's output). Quoting makes values safe as shell *words*: inside a
"double-quoted string" use the exported variables ("$CI_RUNNER_REF") instead.

`#SBATCH` lines are read by sbatch, not by a shell: it splits on whitespace, strips quotes,
honours backslashes and treats `#` as a comment. So option names must match
`[A-Za-z][A-Za-z0-9-]*` and values may only contain printable ASCII without space, quotes,
backslash or `#`; anything else is a ConfigError, never escaped. Options ci-runner owns
(job-name, output, error, chdir, ...) cannot be set: the working directory is passed to the
submit call (`working_dir = layout.working_dir`, the run's output directory).

The template context is exactly: the entry's matrix values at top level, `matrix` (the same
dict), `entry` (name, index), `ci` (sha, ref, repo, run_id, provider) and `env` (only the
variables named in `pass_env`, taken from `environ`). Names that look like secrets are refused in
`pass_env`: a job script is stored on the cluster and returned by the job metadata API.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from ci_runner.ci import CIContext
from ci_runner.config import Config, Scalar, same_value
from ci_runner.errors import ConfigError
from ci_runner.steps import allocation_cpus, own_options, refusal, step_cpus
from ci_runner.arrays import array_script, group_tasks
from ci_runner.layout import TASK_ID_SUFFIX, EntryLayout, array_layout, entry_layout, pack_layout
from ci_runner.matrix import Entry
from ci_runner.api import SERVER_OUTPUT_CAP
from ci_runner.workspace import glob_tokens
from ci_runner.transfer import ARTIFACT_PART_DIGITS, CACHE_RETENTION_DAYS, PART_SUFFIX, SourcePlan, \
    artifact_parts_dir, download_part_size

CHECKOUT_FAILED = 199  # exit code of a failed checkout; above 128+64, so no signal death looks like it
CHECKOUT_FAILED_LINE = "ci-runner: checkout failed: "  # printed by the job script before it exits CHECKOUT_FAILED
JOB_END_LINE = "ci-runner: job script exited with status "  # + the status: the job script's last output
CONTEXT_NAMES = ("matrix", "entry", "ci", "env")

_SBATCH_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_SBATCH_VALUE = re.compile(r"[!$-&(-\[\]-~]+")  # printable ASCII minus space " # ' \
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW(OR)?D|CREDENTIAL|PRIVATE|(?:^|_)KEY(?:$|_)|APIKEY", re.I)
_OWN_OPTIONS = {
    "job-name": "ci-runner names the job after the entry",
    "output": "ci-runner streams the output from its own file",
    "error": "ci-runner merges stderr into the output file",
    "input": "batch jobs read no input",
    "chdir": "the job runs in the entry directory; use `cd` in the script",
    "wrap": "the job script is generated from `script`/`template`",
    "array": "one entry is one job; use the matrix",
    "wait": "ci-runner follows the job itself",
    "parsable": "ci-runner reads the job id from the API",
    "test-only": "the job must really run",
}
_INLINE = "<script>"


@dataclass(frozen=True)
class JobSpec:
    """One entry's batch script and where it lives on the cluster.

    `env` is for the submit call: only comma-free identifiers (FirecREST passes it through
    `sbatch --export=ALL,K=V,...`); `config.env` is exported by the script itself. For a task of a
    job array (`layout.array`), `header` is the array's and `commands` that task's branch.
    """

    entry: Entry
    header: str    # the #SBATCH lines (of a packed entry: its packed job's, the allocation)
    commands: str  # what the job runs, after the header
    layout: EntryLayout
    env: Mapping[str, str]
    step_options: tuple[str, ...] = ()  # a packed entry: the srun options of its job step

    @property
    def script(self) -> str:
        """The entry's batch script as a job of its own would run it."""
        return "#!/bin/bash\n" + self.header + self.commands

    @property
    def job_name(self) -> str:
        """The Slurm job name in the header: the run's (one state list answers for every entry)."""
        return job_name(self.layout.run.root.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class Submission:
    """One sbatch: the job of one entry, or a job array whose task i runs entry `specs[i]`
    (`tasks`: which of them; all but for a resubmit)."""

    specs: tuple[JobSpec, ...]
    tasks: tuple[int, ...] = ()

    @property
    def is_array(self) -> bool:
        return self.specs[0].layout.array is not None

    @property
    def is_pack(self) -> bool:
        """The steps of one packed job (its script: pack.submitted_script)."""
        return self.specs[0].layout.pack is not None

    @property
    def script(self) -> str:
        """The script of a job or a job array (a packed job's: pack.submitted_script)."""
        if self.is_pack:
            raise ValueError("a packed job's script is pack.submitted_script's")
        if not self.is_array:
            return self.specs[0].script
        first = self.specs[0]
        array = first.layout.array
        assert array is not None
        names = ", ".join(spec.entry.name for spec in self.specs)
        return array_script(first.header, [(spec.entry.name, spec.commands) for spec in self.specs],
                            self.tasks or range(len(self.specs)),
                            f"job array {array[0]} of run {first.layout.run.root.rsplit('/', 1)[-1]} "
                            f"(entries {names})", CHECKOUT_FAILED)

    @property
    def working_dir(self) -> str:
        return self.specs[0].layout.working_dir

    @property
    def env(self) -> dict[str, str]:
        """The submit environment: what every task's entry has in common."""
        first = dict(self.specs[0].env)
        return {k: v for k, v in first.items() if all(spec.env.get(k) == v for spec in self.specs)}


def submissions(specs: Sequence[JobSpec]) -> list[Submission]:
    """The submits of a run: one per packed job (its steps' specs in step order), one per job array
    (its tasks' specs in task order), one per other entry; in the order of each one's first entry."""
    groups: dict[tuple[str, int], list[JobSpec]] = {}  # in the order of each group's first entry
    for position, spec in enumerate(specs):
        if spec.layout.pack is not None:
            key = ("pack", spec.layout.pack[0])
        elif spec.layout.array is not None:
            key = ("array", spec.layout.array[0])
        else:
            key = ("job", position)
        groups.setdefault(key, []).append(spec)
    return [Submission(tuple(group)) for group in groups.values()]


class _Quoted(str):
    """Text that is already a shell word (from `shquote`) or deliberately raw (from `raw`)."""


def shquote(value: object) -> _Quoted:
    """Jinja filter: `value` as one inert shell word."""
    return value if isinstance(value, _Quoted) else _Quoted(shlex.quote(str(value)))


def _raw(value: object) -> _Quoted:
    return _Quoted(str(value))


def job_name(run_id: str) -> str:
    """`ci-runner-<run id>`, restricted to `[A-Za-z0-9._-]`: every job of a run has it, so one
    `GET /compute/{system}/jobs?name=` lists them all, and the run id keeps concurrent runs (two
    branches, a re-run) apart. Which entry a job is comes from its submit answer, or, after a lost
    answer, from its output file (cluster.find_job)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"ci-runner-{run_id}")


def job_scripts(
    config: Config, entries: Sequence[Entry], ci: CIContext, workdir: str, environ: Mapping[str, str],
    *, source: SourcePlan | None = None, output_cap: int = SERVER_OUTPUT_CAP, arrays: bool = True,
    pack: bool = False,
) -> list[JobSpec]:
    """The job script of every entry, in order. Raises ConfigError (template, sbatch, env) or UsageError.

    `source`: the run's archive and its parts (checkout: upload); `output_cap`: the system's
    `max_ops_file_size`, which sizes the parts of large artifacts. `arrays`: entries with the same
    system and sbatch options become the tasks of one job array (arrays.py); else one job each.
    `pack`: the entries of each system are the steps of one packed job instead (pack.py; numbered
    in the order of each system's first entry, steps in entry order)."""
    template = _Template.load(config)
    passed = pass_env(config, environ)
    options = [_option_lines(config, entry) for entry in entries]
    keys = [(entry.system, lines) for entry, lines in zip(entries, options)]
    placed = group_tasks(keys) if arrays and not pack else [None] * len(entries)
    packs: dict[str, list[Entry]] = {}
    for entry in entries:
        packs.setdefault(entry.system, []).append(entry)
    specs = []
    for entry, lines, array in zip(entries, options, placed):
        layout = entry_layout(workdir, ci.run_id, entry.name)
        if array is not None:
            layout = array_layout(layout, *array)
        if pack:
            layout = pack_layout(layout, list(packs).index(entry.system), packs[entry.system].index(entry))
        spec = _job(config, entry, ci, layout, lines, passed, template, source, output_cap)
        if pack:
            spec = replace(spec, header=allocation_header(config, layout, job_name(ci.run_id)),
                           step_options=step_options(config, entry))
        specs.append(spec)
    return specs


def job_script(
    config: Config, entry: Entry, ci: CIContext, workdir: str, environ: Mapping[str, str],
    *, source: SourcePlan | None = None, output_cap: int = SERVER_OUTPUT_CAP,
) -> JobSpec:
    """The job script of one entry (see `job_scripts`)."""
    return job_scripts(config, [entry], ci, workdir, environ, source=source, output_cap=output_cap)[0]


def pass_env(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The `env` template variable: the `pass_env` names present in `environ`. Refuses secret-like names."""
    for name in config.pass_env:
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{config.path}: pass_env: {name!r} is not an environment variable name")
        if _SECRET_NAME.search(name):
            raise ConfigError(
                f"{config.path}: pass_env: {name!r} looks like a secret; secrets must not reach job scripts "
                "(they are stored on the cluster and shown by the job metadata API)"
            )
    secrets = {value for key, value in environ.items() if _SECRET_NAME.search(key) and len(value) >= 8}
    for name in config.pass_env:
        if environ.get(name) in secrets:
            raise ConfigError(
                f"{config.path}: pass_env: {name!r} holds the value of a secret variable of this environment; "
                "secrets must not reach job scripts"
            )
    return {name: environ[name] for name in config.pass_env if name in environ}


def _job(
    config: Config, entry: Entry, ci: CIContext, layout: EntryLayout, option_lines: str, passed: Mapping[str, str],
    template: _Template, source: SourcePlan | None, output_cap: int,
) -> JobSpec:
    context = _context(config, entry, ci, passed)
    body = template.render(context)
    ours = {
        "CI_RUNNER_ENTRY": entry.name,
        "CI_RUNNER_RUN_ID": ci.run_id,
        "CI_RUNNER_PROVIDER": ci.provider,
        "CI_RUNNER_SHA": ci.sha,
        "CI_RUNNER_REF": ci.ref,
        "CI_RUNNER_REPO": ci.repo_url,
    }
    commands = "".join(
        [
            _prologue(config, entry, ci, layout, ours),
            _checkout(config.checkout, ci, layout, source),
            _run_body(body, layout, _user_env(config), _split_artifacts(config, layout, output_cap)),
        ]
    )
    submit_env = {"CI_RUNNER_ENTRY": entry.name, "CI_RUNNER_RUN_ID": ci.run_id}
    header = _own_lines(layout, job_name(ci.run_id)) + option_lines
    return JobSpec(entry=entry, header=header, commands=commands, layout=layout, env=submit_env)


def sbatch_header(config: Config, entry: Entry, layout: EntryLayout, name: str) -> str:
    """The `#SBATCH` lines for `entry`. Raises ConfigError for an option sbatch could misread."""
    return _own_lines(layout, name) + _option_lines(config, entry)


def allocation_header(config: Config, layout: EntryLayout, name: str) -> str:
    """The `#SBATCH` lines of a packed job (pack.py): the run's job name, the job's one output file
    (`layout`: a step's, layout.pack_layout) and `account:` plus the top-level `sbatch:` options,
    which describe the allocation its entries' steps share."""
    allocation = Entry(name="packed allocation", index=-1, values={}, sbatch=config.sbatch, system=config.system)
    return _own_lines(layout, name) + _option_lines(config, allocation)


def step_options(config: Config, entry: Entry) -> tuple[str, ...]:
    """The srun options of `entry`'s step in a packed job: its sbatch options that the top-level
    `sbatch` does not set to the same value (an include's), as `--name=value` (true: `--name`, false:
    none). Raises ConfigError naming the entry and the option when a step cannot set it (config.py
    reports it at its line first; this is the wall for a Config not made by config.load)."""
    options = []
    for name, value in own_options(entry.sbatch, config.sbatch, same_value).items():
        reason = refusal(name)
        if reason is not None:
            raise ConfigError(f"{config.path}: matrix.include: sbatch.{name} (entry {entry.name}): "
                              f"not a job step option (pack: true): {reason}")
        if value is not False:
            options.append(f"--{name}" if value is True else f"--{name}={value}")
    return tuple(options)


def pack_notes(config: Config, specs: Sequence[JobSpec]) -> list[str]:
    """What the log says about each packed job before it is submitted: its entries, and when their
    steps need more CPUs than the allocation has, that steps wait inside it (or cannot start)."""
    notes = []
    for submission in submissions(specs):
        if not submission.is_pack:
            continue
        first = submission.specs[0]
        note = (f"packed job {first.layout.pack[0]} (system {first.entry.system}): "  # type: ignore[index]
                f"{len(submission.specs)} entries as the steps of one allocation")
        cpus = allocation_cpus(config.sbatch)
        if cpus is not None:
            need = {spec.entry.name: step_cpus(config.sbatch, spec.entry.sbatch) for spec in submission.specs}
            too_big = [name for name, n in need.items() if n > cpus]
            if too_big:
                note += (f"; {', '.join(too_big)} ask(s) for more CPUs than its {cpus}: their steps cannot start")
            elif sum(need.values()) > cpus:
                note += (f" of {cpus} CPUs; together they need {sum(need.values())}: steps that do not fit wait "
                         "inside it for the others")
        notes.append(note)
    return notes


def _own_lines(layout: EntryLayout, name: str) -> str:
    """The #SBATCH lines ci-runner owns: the run's job name and the output file (stderr merged)."""
    return "".join(f"#SBATCH --{option}={value}\n" for option, value in
                   (("job-name", name), ("output", layout.slurm_output), ("error", layout.slurm_output)))


def _option_lines(config: Config, entry: Entry) -> str:
    """The #SBATCH lines of `account:` and the entry's `sbatch:` options (what tells two entries' jobs
    apart besides their commands). Raises ConfigError for an option sbatch could misread."""
    options: dict[str, Scalar] = {}
    if config.account and "account" not in entry.sbatch:
        options["account"] = config.account
    for name, value in entry.sbatch.items():
        valid = _SBATCH_NAME.fullmatch(name) is not None
        where = f"{config.path}: sbatch.{name if valid else repr(name)} (entry {entry.name})"
        if not valid:
            hint = f"; did you mean {name.replace('_', '-')!r}?" if "_" in name else ""
            raise ConfigError(f"{where}: not a long sbatch option name (write it without dashes){hint}")
        if name in _OWN_OPTIONS:
            raise ConfigError(f"{where}: set by ci-runner ({_OWN_OPTIONS[name]})")
        options[name] = value
    lines = []
    for name, value in options.items():
        if value is False:
            continue
        if value is True:
            lines.append(f"#SBATCH --{name}\n")
            continue
        text = str(value)
        if not _SBATCH_VALUE.fullmatch(text):
            raise ConfigError(
                f"{config.path}: sbatch.{name} (entry {entry.name}): value {text!r} not allowed in an #SBATCH line; "
                "use printable ASCII without spaces, quotes, backslashes or '#'"
            )
        lines.append(f"#SBATCH --{name}={text}\n")
    return "".join(lines)


def _prologue(
    config: Config, entry: Entry, ci: CIContext, layout: EntryLayout, ours: Mapping[str, str]
) -> str:
    lines = [
        f"# Generated by ci-runner: entry {entry.name} of run {ci.run_id}.\n",
        "set -uo pipefail\n",
        f"ci_runner_fail() {{ printf '{CHECKOUT_FAILED_LINE}%s\\n' \"$1\" >&2; exit "
        f"{CHECKOUT_FAILED}; }}\n",
    ]
    for name, value in ours.items():
        lines.append(f"export {name}={_value(config, name, value)}\n")
    output_dir, output_name = layout.output.rsplit("/", 1)
    before, after = output_name.split("%j", 1)
    job = '"${SLURM_JOB_ID:-}"'
    if layout.array is not None:  # the task's id A_i, and the file that maps it to the task's own job id
        job = '"${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-}"'
        lines.append(f": > {shlex.quote(output_dir + '/' + before)}{job}.\"${{SLURM_JOB_ID:-}}\""
                     f"{TASK_ID_SUFFIX} 2>/dev/null\n")
    lines.append(f"export CI_RUNNER_OUTPUT={shlex.quote(output_dir + '/' + before)}{job}{shlex.quote(after)}\n")
    lines.append(f"ci_runner_root={shlex.quote(layout.root)}\n")
    lines.append(f"ci_runner_src={shlex.quote(layout.src)}\n")
    lines.append('ci_runner_path=$PATH\n')  # ours, before `env:` can change it
    return "".join(lines)


def _user_env(config: Config) -> str:
    """`export` lines for `env:`, placed just before the user's script so they cannot disturb our commands."""
    lines = []
    for name, value in config.env.items():
        if not _ENV_NAME.fullmatch(name) or name.startswith("CI_RUNNER_"):
            raise ConfigError(f"{config.path}: env: {name!r} is not a usable environment variable name")
        lines.append(f"export {name}={_value(config, f'env.{name}', value)}\n")
    return "".join(lines)


def _checkout(mode: str, ci: CIContext, layout: EntryLayout, source: SourcePlan | None = None) -> str:
    src = '"$ci_runner_src"'
    if mode == "none":
        return f"mkdir -p {src} || ci_runner_fail 'cannot create the source directory'\n"
    if mode == "upload":
        archive = '"$ci_runner_archive"' if source is not None else shlex.quote(layout.archive)
        return (
            (_cached_source(source) if source is not None else "")
            + f"rm -rf -- {src} && mkdir -p {src} || ci_runner_fail 'cannot create the source directory'\n"
            f"tar -xzf {archive} -C {src} || ci_runner_fail 'cannot extract the uploaded archive'\n"
        )
    if mode != "clone":
        raise ConfigError(f"checkout: unknown mode {mode!r}; use clone, upload or none")
    url, sha = shlex.quote(ci.repo_url), shlex.quote(ci.sha)
    return (
        f"rm -rf -- {src} && mkdir -p {src} || ci_runner_fail 'cannot create the source directory'\n"
        f"cd {src} || ci_runner_fail 'cannot enter the source directory'\n"
        "export GIT_TERMINAL_PROMPT=0\n"
        "git init -q . || ci_runner_fail 'git init failed (is git installed on the compute node?)'\n"
        "git -c protocol.ext.allow=never fetch -q --no-tags --depth 1 -- "
        f"{url} {sha} || ci_runner_fail \"cannot fetch commit $CI_RUNNER_SHA from $CI_RUNNER_REPO\"\n"
        "git -c advice.detachedHead=false checkout -q --detach FETCH_HEAD "
        "|| ci_runner_fail 'git checkout failed'\n"
        f'[ "$(git rev-parse HEAD)" = {sha} ] || ci_runner_fail "HEAD is not $CI_RUNNER_SHA"\n'
    )


def _cached_source(source: SourcePlan) -> str:
    """Shell: `$ci_runner_archive`, the commit's verified archive in the source cache, joined from the
    run's uploaded parts first when it is not there (see transfer.py). Every failure names what failed
    (the part, its sha256) and ends in `ci_runner_fail`. A job whose parts were joined and removed by
    another job of the run in the meantime finds the archive in the cache instead. The jobs also apply
    the cache's retention: files of the cache unused for CACHE_RETENTION_DAYS days are removed."""
    joins = "".join(f"    ci_runner_part \"$joined\" {shlex.quote(part.path)} {part.sha256} &&\n"
                    for part in source.parts)
    parts = " ".join(shlex.quote(part.path) for part in source.parts)
    return (
        f"ci_runner_archive={shlex.quote(source.cached)}\n"
        f"ci_runner_sha256={source.sha256}\n"
        "ci_runner_why='source archive not available'\n"
        "ci_runner_sum() {  # file, what: its sha256 must be $2\n"
        "  local sum\n"
        '  sum=$(sha256sum < "$1") || { ci_runner_why="cannot read $3"; return 1; }\n'
        '  sum=${sum%% *}\n'
        '  [ "$sum" = "$2" ] || { ci_runner_why="$3 is corrupt: sha256 $sum, expected $2"; return 1; }\n'
        "}\n"
        "ci_runner_part() {  # joined file, part, its sha256: check the part and append it\n"
        '  [ -f "$2" ] || { ci_runner_why="source part ${2##*/} is missing (not uploaded?)"; return 1; }\n'
        '  ci_runner_sum "$2" "$3" "source part ${2##*/} of ' f'{len(source.parts)}' '" || return 1\n'
        '  cat -- "$2" >> "$1" || { ci_runner_why="cannot append source part ${2##*/}"; return 1; }\n'
        "}\n"
        "ci_runner_join() {  # the run's parts -> the cache, renamed there only when complete and verified\n"
        "  local joined status=0\n"
        '  mkdir -p -- "${ci_runner_archive%/*}" || { ci_runner_why="cannot create ${ci_runner_archive%/*}"; return 1; }\n'
        '  joined=$(mktemp -- "$ci_runner_archive.XXXXXX.tmp") || { ci_runner_why="cannot write in ${ci_runner_archive%/*}"; return 1; }\n'
        "  {\n"
        f"{joins}"
        '    ci_runner_sum "$joined" "$ci_runner_sha256" "the joined source archive" &&\n'
        '    printf \'%s  %s\\n\' "$ci_runner_sha256" "${ci_runner_archive##*/}" > "$joined.sha256" &&\n'
        '    mv -f -- "$joined.sha256" "$ci_runner_archive.sha256" &&\n'
        '    mv -f -- "$joined" "$ci_runner_archive"\n'
        "  } || status=1\n"
        '  rm -f -- "$joined" "$joined.sha256"\n'
        f'  [ "$status" != 0 ] || rm -f -- {parts}\n'
        '  return "$status"\n'
        "}\n"
        'if [ ! -f "$ci_runner_archive" ] && ! ci_runner_join && [ ! -f "$ci_runner_archive" ]; then\n'
        '  ci_runner_fail "$ci_runner_why"\n'
        "fi\n"
        'ci_runner_sum "$ci_runner_archive" "$ci_runner_sha256" "the cached source archive $ci_runner_archive" '
        '|| { rm -f -- "$ci_runner_archive"; ci_runner_fail "$ci_runner_why (removed from the cache)"; }\n'
        'touch -c -- "$ci_runner_archive" "$ci_runner_archive.sha256"  # used: kept by the retention rule\n'
        f'find "${{ci_runner_archive%/*}}" -maxdepth 1 -type f -mtime +{CACHE_RETENTION_DAYS} -delete 2>/dev/null\n'
    )


def _split_artifacts(config: Config, layout: EntryLayout, output_cap: int) -> str:
    """Shell run after the user's script (never changing its status): every file of the checkout that
    an artifact or JUnit glob may match (a superset: `*` also crosses `/` in `case`), over one direct
    download and at most `max_artifact_size`, split into parts with its sha256 (transfer.py names)."""
    patterns = [_case_pattern(glob) for glob in (*config.artifacts, *config.junit)]
    if not patterns:
        return ""
    part = download_part_size(output_cap)
    parts_dir = artifact_parts_dir(layout)
    return (
        f"ci_runner_parts={shlex.quote(parts_dir)}\n"
        "ci_runner_split() {  # large artifacts -> parts of one download each, for the runner\n"
        "  local file rel size\n"
        '  rm -rf -- "$ci_runner_parts"\n'
        "  while IFS= read -r -d '' file; do\n"
        '    rel=${file#"$ci_runner_src"/}\n'
        f'    case $rel in {"|".join(patterns)}) ;; *) continue ;; esac\n'
        '    [ -f "$file" ] && size=$(stat -L -c %s -- "$file") || continue\n'
        f'    [ "$size" -gt {part} ] && [ "$size" -le {config.max_artifact_size} ] || continue\n'
        '    mkdir -p -- "$(dirname -- "$ci_runner_parts/$rel")" &&\n'
        f'    split -d -a {ARTIFACT_PART_DIGITS} -b {part} -- "$file" "$ci_runner_parts/$rel{PART_SUFFIX}" &&\n'
        '    sha256sum < "$file" > "$ci_runner_parts/$rel.sha256" ||\n'
        "      printf 'ci-runner: cannot split artifact %s into parts for its download\\n' \"$rel\" >&2\n"
        '  done < <(find "$ci_runner_src" \\( -type f -o -type l \\) -print0 2>/dev/null)\n'
        "}\n"
    )


def _case_pattern(glob: str) -> str:
    """A `case` pattern matching at least every path `workspace.glob_regex(glob)` matches (the same
    tokens): `*`, `**` and `**/` become `*` (which crosses `/` in `case`), `?` and a `[...]` class `?`,
    literal ASCII is escaped one character at a time and anything else widened to `*`. Never shell
    syntax, whatever `glob` holds."""
    out: list[str] = []
    for kind, text in glob_tokens(glob.removeprefix("./")):
        if kind:
            out.append("?" if kind in "?[" else "*")
        elif text.isascii() and text.isalnum():
            out.append(text)
        elif text.isascii() and text.isprintable():
            out.append("\\" + text)
        else:
            out.append("*")
    return "".join(out) or "''"


def _run_body(body: str, layout: EntryLayout, exports: str, split_step: str = "") -> str:
    if "\0" in body:
        raise ConfigError("the rendered script contains a NUL byte")
    if body and not body.endswith("\n"):
        body += "\n"
    delimiter = heredoc_delimiter(body)
    split = f"{split_step}(PATH=$ci_runner_path; ci_runner_split)\n" if split_step else ""  # our PATH, not env:'s
    return (
        f"ci_runner_body={shlex.quote(layout.body)}\n"
        f"cat > \"$ci_runner_body\" <<'{delimiter}' || ci_runner_fail 'cannot write the job script'\n"
        f"{body}{delimiter}\n"
        f"{exports}"
        'cd "$ci_runner_src" || ci_runner_fail \'cannot enter the source directory\'\n'
        '"${BASH:-/bin/bash}" -eo pipefail "$ci_runner_body"\n'
        "ci_runner_status=$?\n"
        f"{split}"
        f"printf '{JOB_END_LINE}%s\\n' \"$ci_runner_status\" >&2\n"
        'exit "$ci_runner_status"\n'
    )


def heredoc_delimiter(body: str) -> str:
    """A heredoc delimiter that is not a line of `body` (a hash of the body, extended if needed)."""
    lines = set(body.split("\n"))
    digest = hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()
    delimiter = f"CI_RUNNER_EOF_{digest[:16]}"
    while delimiter in lines:
        delimiter += "_"
    return delimiter


def _value(config: Config, name: str, value: object) -> str:
    text = str(value)
    if "\0" in text:
        raise ConfigError(f"{config.path}: {name}: value contains a NUL byte")
    return shlex.quote(text)


def _context(config: Config, entry: Entry, ci: CIContext, passed: Mapping[str, str]) -> dict[str, Any]:
    clash = sorted(set(entry.values) & set(CONTEXT_NAMES))
    if clash:
        raise ConfigError(
            f"{config.path}: matrix variable(s) {', '.join(clash)} clash with the template names "
            f"{', '.join(CONTEXT_NAMES)}; rename the axis"
        )
    matrix = dict(entry.values)
    return {
        **matrix,
        "matrix": matrix,
        "entry": {"name": entry.name, "index": entry.index},
        "ci": {"sha": ci.sha, "ref": ci.ref, "repo": ci.repo_url, "run_id": ci.run_id, "provider": ci.provider},
        "env": dict(passed),
    }


@dataclass(frozen=True)
class _Template:
    """A compiled job template and how to name its lines in error messages."""

    template: jinja2.Template
    describe: Callable[[str | None, int | None], str]

    @classmethod
    def load(cls, config: Config) -> _Template:
        if (config.script is None) == (config.template is None):
            raise ConfigError(f"{config.path}: set exactly one of `script` and `template`")
        environment = _environment(config)
        name = _INLINE if config.script is not None else str(config.template)
        describe = _describer(config)
        try:
            template = environment.get_template(name)
        except jinja2.TemplateSyntaxError as error:
            raise ConfigError(f"{describe(error.filename, error.lineno)}: {error.message}") from error
        except jinja2.TemplateNotFound as error:
            raise ConfigError(f"{config.path}: template: file not found: {error.name}") from error
        return cls(template=template, describe=describe)

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            return self.template.render(context)
        except jinja2.TemplateSyntaxError as error:  # in an included template
            raise ConfigError(f"{self.describe(error.filename, error.lineno)}: {error.message}") from error
        except jinja2.TemplateNotFound as error:  # an {% include %} of a missing file
            where = self.describe(*_template_frame(error.__traceback__))
            raise ConfigError(f"{where}: template not found: {error.name}") from error
        except ConfigError:
            raise
        except Exception as error:  # sandbox violations, undefined names, errors in expressions
            filename, lineno = _template_frame(error.__traceback__)
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            if isinstance(error, jinja2.UndefinedError):
                message += f" ({_available(context)})"
            raise ConfigError(f"{self.describe(filename, lineno)}: {message}") from error


def _environment(config: Config) -> SandboxedEnvironment:
    base = config.path.parent.resolve()

    def load(name: str) -> tuple[str, str, Callable[[], bool]] | None:
        if name == _INLINE:
            return config.script or "", str(config.path), lambda: True
        path = (Path(name) if Path(name).is_absolute() else base / name).resolve()
        if not path.is_relative_to(base):  # an absolute name, `..` or a symlink out: files of the CI runner
            raise ConfigError(f"{config.path}: template {name!r} lies outside {base}; templates (and their "
                              "includes) must be files in the config file's directory or below")
        try:
            return path.read_text(encoding="utf-8"), str(path), lambda: True
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read template: {error}") from error

    environment = SandboxedEnvironment(
        loader=jinja2.FunctionLoader(load),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=shquote,
    )
    environment.filters["shquote"] = shquote
    environment.filters["raw"] = _raw
    return environment


def _template_frame(tb: TracebackType | None) -> tuple[str | None, int | None]:
    """(file, line) of the innermost template frame of a traceback jinja2 has rewritten."""
    found: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name in ("template", "top-level template code") or code.co_name.startswith("block "):
            found = (code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _describer(config: Config) -> Callable[[str | None, int | None], str]:
    """Names a template line: `file:line` for template files, the config file's line for inline scripts."""
    offset = _script_offset(config) if config.script is not None else None

    def describe(filename: str | None, lineno: int | None) -> str:
        if config.script is not None and filename in (None, str(config.path)):
            if lineno is None:
                return f"{config.path}: script"
            if offset is not None:
                return f"{config.path}:{offset + lineno}: script line {lineno}"
            return f"{config.path}: script line {lineno}"
        name = filename or str(config.template)
        return f"{name}:{lineno}" if lineno is not None else name

    return describe


def _script_offset(config: Config) -> int | None:
    """Line of the config file just before an inline `script: |` block's first line, if it can be found."""
    try:
        root = yaml.compose(config.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if key.value == "script" and isinstance(value, yaml.ScalarNode):
            if value.style == "|" and value.value == config.script:
                return value.start_mark.line + 1  # 0-based line of `|` + 1 = 1-based line of `|`
            if value.style in (None, "", "'", '"') and "\n" not in value.value and value.value == config.script:
                return value.start_mark.line
    return None


def _available(context: Mapping[str, Any]) -> str:
    """A hint listing the template variables, for undefined-name errors."""
    names = [name for name in context if name not in CONTEXT_NAMES] + list(CONTEXT_NAMES)
    passed = ", ".join(context.get("env", {})) or "none"
    return f"template variables: {', '.join(names)}; env has the pass_env variables that are set: {passed}"
