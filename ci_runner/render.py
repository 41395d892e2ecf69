"""Render each matrix entry's Slurm batch script. Pure: no cluster, no CI, no printing.

The header comes from sbatch_header.py, the user's script from script_template.py, and the result is
a job_spec.JobSpec; this module puts them together with the prologue, the checkout and the epilogue.

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
from dataclasses import replace
from typing import Mapping, Sequence

from ci_runner.api import SERVER_OUTPUT_CAP
from ci_runner.arrays import group_tasks
from ci_runner.artifact_selection import glob_tokens
from ci_runner.ci import CIContext
from ci_runner.config import Config
from ci_runner.errors import ConfigError
from ci_runner.job_spec import CHECKOUT_FAILED, CHECKOUT_FAILED_LINE, JOB_END_LINE, JobSpec, job_name
from ci_runner.layout import TASK_ID_SUFFIX, EntryLayout, array_layout, entry_layout, pack_layout
from ci_runner.matrix import Entry
from ci_runner.sbatch_header import allocation_header, option_lines, own_lines, step_options
from ci_runner.script_template import ScriptTemplate, template_context
from ci_runner.transfer import (ARTIFACT_PART_DIGITS, CACHE_RETENTION_DAYS, PART_SUFFIX, SourcePlan, artifact_bundle, artifact_parts_dir,
                                download_part_size)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW(OR)?D|CREDENTIAL|PRIVATE|(?:^|_)KEY(?:$|_)|APIKEY", re.I)


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
    template = ScriptTemplate.load(config)
    passed = pass_env(config, environ)
    options = [option_lines(config, entry) for entry in entries]
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
    template: ScriptTemplate, source: SourcePlan | None, output_cap: int,
) -> JobSpec:
    context = template_context(config, entry, ci, passed)
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
    header = own_lines(layout, job_name(ci.run_id)) + option_lines
    limit = download_part_size(output_cap) if (config.artifacts or config.junit) else 0
    return JobSpec(entry=entry, header=header, commands=commands, layout=layout, env=submit_env,
                   artifact_limit=limit)


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
    download and at most `max_artifact_size`, split into parts with its sha256 (transfer.py names).
    When all those files are regular files of one download at most, they are also packed into one
    tar of one download at most (`artifact_bundle`); otherwise no tar is left and the runner lists."""
    patterns = [_case_pattern(glob) for glob in (*config.artifacts, *config.junit)]
    if not patterns:
        return ""
    part = download_part_size(output_cap)
    return (
        f"ci_runner_parts={shlex.quote(artifact_parts_dir(layout))}\n"
        f"ci_runner_bundle={shlex.quote(artifact_bundle(layout))}\n"
        'rm -f -- "$ci_runner_bundle"  # an earlier attempt\'s, before the user\'s script can change anything\n'
        "ci_runner_split() {  # large artifacts -> parts of one download each; all small ones -> one tar\n"
        '  local file rel size whole=yes listed="$ci_runner_bundle.list"\n'
        '  rm -rf -- "$ci_runner_parts" "$ci_runner_bundle.tmp"\n'
        '  : > "$listed" || whole=no\n'
        "  while IFS= read -r -d '' file; do\n"
        '    rel=${file#"$ci_runner_src"/}\n'
        f'    case $rel in {"|".join(patterns)}) ;; *) continue ;; esac\n'
        '    [ -f "$file" ] && [ ! -L "$file" ] || whole=no  # a link: the runner follows it in a listing\n'
        '    [ -f "$file" ] && size=$(stat -L -c %s -- "$file") || { whole=no; continue; }\n'
        f'    if [ "$size" -le {part} ]; then\n'
        '      printf \'%s\\0\' "$rel" >> "$listed" || whole=no\n'
        "      continue\n"
        "    fi\n"
        "    whole=no\n"
        f'    [ "$size" -le {config.max_artifact_size} ] || continue\n'
        '    mkdir -p -- "$(dirname -- "$ci_runner_parts/$rel")" &&\n'
        f'    split -d -a {ARTIFACT_PART_DIGITS} -b {part} -- "$file" "$ci_runner_parts/$rel{PART_SUFFIX}" &&\n'
        '    sha256sum < "$file" > "$ci_runner_parts/$rel.sha256" ||\n'
        "      printf 'ci-runner: cannot split artifact %s into parts for its download\\n' \"$rel\" >&2\n"
        '  done < <(find "$ci_runner_src" \\( -type f -o -type l \\) -print0 2>/dev/null)\n'
        '  if [ "$whole" = yes ] && tar -cf "$ci_runner_bundle.tmp" -C "$ci_runner_src" --no-recursion --null \\\n'
        '      -T "$listed" 2>/dev/null && [ "$(stat -c %s -- "$ci_runner_bundle.tmp")" -le ' f'{part}' ' ]; then\n'
        '    mv -f -- "$ci_runner_bundle.tmp" "$ci_runner_bundle"\n'
        "  fi\n"
        '  rm -f -- "$listed" "$ci_runner_bundle.tmp"\n'
        "}\n"
    )


def _case_pattern(glob: str) -> str:
    """A `case` pattern matching at least every path `artifact_selection.glob_regex(glob)` matches (the same
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
    split = "(PATH=$ci_runner_path; ci_runner_split)\n" if split_step else ""  # our PATH, not env:'s
    return (
        f"{split_step}"
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
