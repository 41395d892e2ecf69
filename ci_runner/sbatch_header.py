"""The `#SBATCH` header of a job script: ci-runner's own options (job name, output), then the entry's
merged `sbatch:` options, checked so that sbatch cannot misread them; in pack mode the allocation's
header, each entry's step options, and what the log says before the submit."""

from __future__ import annotations

import re
from typing import Sequence

from ci_runner.config import Config
from ci_runner.config_values import Scalar, same_value
from ci_runner.errors import ConfigError
from ci_runner.job_spec import JobSpec, submissions
from ci_runner.layout import EntryLayout
from ci_runner.matrix import Entry
from ci_runner.reserved import RESERVED_SBATCH
from ci_runner.steps import allocation_cpus, own_options, refusal, step_cpus

_SBATCH_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_SBATCH_VALUE = re.compile(r"[!$-&(-\[\]-~]+")  # printable ASCII minus space " # ' \


def sbatch_header(config: Config, entry: Entry, layout: EntryLayout, name: str) -> str:
    """The `#SBATCH` lines for `entry`. Raises ConfigError for an option sbatch could misread."""
    return own_lines(layout, name) + option_lines(config, entry)


def allocation_header(config: Config, layout: EntryLayout, name: str) -> str:
    """The `#SBATCH` lines of a packed job (pack.py): the run's job name, the job's one output file
    (`layout`: a step's, layout.pack_layout) and `account:` plus the top-level `sbatch:` options,
    which describe the allocation its entries' steps share."""
    allocation = Entry(name="packed allocation", index=-1, values={}, sbatch=config.sbatch, system=config.system)
    return own_lines(layout, name) + option_lines(config, allocation)


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


def own_lines(layout: EntryLayout, name: str) -> str:
    """The #SBATCH lines ci-runner owns: the run's job name and the output file (stderr merged)."""
    return "".join(f"#SBATCH --{option}={value}\n" for option, value in
                   (("job-name", name), ("output", layout.slurm_output), ("error", layout.slurm_output)))


def option_lines(config: Config, entry: Entry) -> str:
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
        if name in RESERVED_SBATCH:
            raise ConfigError(f"{where}: set by ci-runner ({RESERVED_SBATCH[name]})")
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

