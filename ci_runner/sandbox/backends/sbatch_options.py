"""The `#SBATCH` header as sbatch 22.05 reads it, for the local backend: every option sbatch knows, the
few the local backend honours, and sbatch's own wording when it refuses a script.

sbatch reads `#SBATCH` lines from the top of the script until the first line that is neither blank
nor a comment, and parses their words with getopt_long: long options may be abbreviated to a unique
prefix, short flags combine (`-Qv`), a short option's argument may be attached (`-pdebug`).
Options the local backend has no use for (nodes, account, ...) are accepted and ignored; `--account`
is not checked because the local backend has no accounts (a Slurm without accounting, like the one the
real server was measured on, accepts any account too).

The option tables below were taken from sbatch 22.05.8 itself (`sbatch --help`, plus probing each
name for "unrecognized option" / "requires an argument" / "doesn't allow an argument").
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ci_runner.sandbox.backends.base import BackendError, sbatch_failure

_LONG_WITH_ARGUMENT = frozenset("""
    account acctg-freq array batch bb bbf begin chdir cluster cluster-constraint clusters comment
    constraint container core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot
    dependency distribution error exclude export export-file extra-node-info gid gpu-bind gpu-freq gpus
    gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint input job-name kill-on-invalid-dep
    licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu mincpus network nodefile
    nodelist nodes ntasks ntasks-per-core ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output
    partition power prefer priority profile qos reservation signal sockets-per-node switches thread-spec
    threads-per-core time time-min tmp uid wait-all-nodes wckey wrap
""".split())
_LONG_OPTIONAL_ARGUMENT = frozenset("exclusive get-user-env nice no-kill propagate".split())
_LONG_FLAGS = frozenset("""
    contiguous help hold ignore-pbs no-requeue overcommit oversubscribe parsable quiet reboot requeue
    spread-job test-only usage use-min-nodes verbose version wait
""".split())
_LONG = sorted(_LONG_WITH_ARGUMENT | _LONG_OPTIONAL_ARGUMENT | _LONG_FLAGS)
_SHORT = {  # short flag -> the long option it stands for
    "a": "array", "A": "account", "b": "begin", "B": "extra-node-info", "c": "cpus-per-task", "C": "constraint",
    "d": "dependency", "D": "chdir", "e": "error", "F": "nodefile", "G": "gpus", "h": "help", "H": "hold",
    "i": "input", "J": "job-name", "k": "no-kill", "L": "licenses", "m": "distribution", "M": "clusters",
    "n": "ntasks", "N": "nodes", "o": "output", "O": "overcommit", "p": "partition", "q": "qos", "Q": "quiet",
    "s": "oversubscribe", "S": "core-spec", "t": "time", "v": "verbose", "V": "version", "w": "nodelist",
    "W": "wait", "x": "exclude",
}  # fmt: skip
_SHORT_FLAGS = frozenset("hHkOQsvVW")
_TRY_HELP = 'Try "sbatch --help" for more information\n'
DEFAULT_PARTITION = "debug"
DEFAULT_QOS = "normal"
_UNLIMITED = {"UNLIMITED", "INFINITE", "-1"}


@dataclass(frozen=True)
class SbatchOptions:
    """Options from the `#SBATCH` header; None where the script does not set them."""

    output: str | None = None
    error: str | None = None
    input: str | None = None
    job_name: str | None = None
    time_limit: int | None = None  # seconds; None = no limit
    partition: str = DEFAULT_PARTITION
    qos: str = DEFAULT_QOS
    array: tuple[int, ...] | None = None  # --array: the task ids, sorted
    ntasks: int | None = None  # --ntasks/-n
    cpus_per_task: int | None = None  # --cpus-per-task/-c

    @property
    def cpus(self) -> int:
        """CPUs of the allocation: one per task unless --cpus-per-task says more."""
        return (self.ntasks or 1) * (self.cpus_per_task or 1)


def sbatch_error(stderr: str, exit_status: int = 1) -> BackendError:
    """A failed submission: sbatch's `stderr` (complete lines) and exit status, as the server reports them."""
    return sbatch_failure(exit_status, stderr)


def usage_error(text: str) -> BackendError:
    """getopt's complaint about the command line: exit status 255 and the hint to `sbatch --help`."""
    return sbatch_error(f"sbatch: {text}\n{_TRY_HELP}", 255)


def check_batch_script(script: str) -> None:
    """Refuse a script without `#!` on its first line, as sbatch does."""
    if not script.startswith("#!"):
        raise sbatch_error(
            "sbatch: error: This does not look like a batch script.  The first\n"
            "sbatch: error: line must start with #! followed by the path to an interpreter.\n"
            "sbatch: error: For instance: #!/bin/sh\n"
        )


def header_arguments(script: str) -> list[str]:
    """The command-line words of every `#SBATCH` line before the first command."""
    words: list[str] = []
    for number, line in enumerate(script.splitlines()[1:], start=2):
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            rest = stripped[len("#SBATCH"):]
            if rest and not rest[0].isspace():
                continue  # e.g. "#SBATCHX": not a directive
            try:
                words += shlex.split(rest, comments=True)
            except ValueError:
                quote = _unmatched_quote(rest)
                raise sbatch_error(f"sbatch: fatal: stdin: line {number}: Unmatched `{quote}` in [{rest.strip()}]\n") from None
        elif stripped and not stripped.startswith("#"):
            break
    return words


def _unmatched_quote(text: str) -> str:
    """The quote character left open at the end of `text`."""
    open_quote = ""
    for char in text:
        if open_quote:
            open_quote = "" if char == open_quote else open_quote
        elif char in "'\"":
            open_quote = char
    return open_quote or '"'


def parse_options(script: str) -> SbatchOptions:
    """The options of `script`'s `#SBATCH` header (later lines override earlier ones, like sbatch).
    Raises BackendError worded like sbatch for an unknown option, a missing argument or a bad --time."""
    values: dict[str, str] = {}
    words = header_arguments(script)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            break  # getopt: the end of the options
        if word.startswith("--"):
            name, value, takes_next = _long_option(word)
        elif word.startswith("-") and len(word) > 1:
            name, value, takes_next = _short_options(word)
        else:
            continue  # a script argument: sbatch would pass it to the script
        if takes_next:
            if i >= len(words):
                raise usage_error(f"option '--{name}' requires an argument" if word.startswith("--")
                                  else f"option requires an argument -- '{word[-1]}'")
            value = words[i]
            i += 1
        if name is not None and value is not None:
            values[name] = value
            if name == "time":
                parse_time_limit(value)  # sbatch checks it while it reads the options
            if name in ("ntasks", "cpus-per-task"):
                _positive(name, value)
    time_text = values.get("time")
    return SbatchOptions(
        output=values.get("output"),
        error=values.get("error"),
        input=values.get("input"),
        job_name=values.get("job-name"),
        time_limit=None if time_text is None else parse_time_limit(time_text),
        partition=values.get("partition", DEFAULT_PARTITION),
        qos=values.get("qos", DEFAULT_QOS),
        array=None if "array" not in values else parse_array(values["array"]),
        ntasks=None if "ntasks" not in values else _positive("ntasks", values["ntasks"]),
        cpus_per_task=None if "cpus-per-task" not in values else _positive("cpus-per-task", values["cpus-per-task"]),
    )


def _positive(name: str, text: str) -> int:
    """A count option's value; sbatch's refusal when it is not a positive number."""
    if not text.isdigit() or int(text) < 1:
        raise sbatch_error(f'sbatch: error: Invalid numeric value "{text}" for --{name}.\n')
    return int(text)


MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize: task ids 0-1000


def parse_array(text: str) -> tuple[int, ...]:
    """The task ids of `--array=0-3`, `1,4-6`, `0-7:2` (a `%N` throttle is accepted and ignored);
    sbatch's refusal for anything else or a task id at or over MaxArraySize."""
    tasks: set[int] = set()
    for part in text.split("%", 1)[0].split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if match is None:
            raise sbatch_error("sbatch: error: Invalid job array specification\n")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        step = int(match.group(3) or 1)
        if last < first or step < 1 or last >= MAX_ARRAY_SIZE:
            raise sbatch_error("sbatch: error: Batch job submission failed: Invalid job array specification\n")
        tasks.update(range(first, last + 1, step))
    return tuple(sorted(tasks))


def _long_option(word: str) -> tuple[str, str | None, bool]:
    """(full option name, inline value, whether the next word is its argument) for `--name[=value]`."""
    typed, eq, value = word[2:].partition("=")
    if typed in _LONG:
        name = typed
    else:
        matches = [n for n in _LONG if n.startswith(typed)]
        if not matches:
            raise usage_error(f"unrecognized option '{word}'")
        if len(matches) > 1:
            possibilities = " ".join(f"'--{n}'" for n in matches)
            raise usage_error(f"option '{word}' is ambiguous; possibilities: {possibilities}")
        name = matches[0]
    if name in _LONG_FLAGS:
        if eq:
            raise usage_error(f"option '--{name}' doesn't allow an argument")
        return name, None, False
    if name in _LONG_OPTIONAL_ARGUMENT:
        return name, value if eq else None, False
    return name, value if eq else None, not eq


def _short_options(word: str) -> tuple[str | None, str | None, bool]:
    """The option a `-x[value]` word sets (after any combined flags), like `_long_option`."""
    for position, flag in enumerate(word[1:], start=1):
        if flag not in _SHORT:
            raise usage_error(f"invalid option -- '{flag}'")
        if flag in _SHORT_FLAGS:
            continue
        attached = word[position + 1:]
        return _SHORT[flag], attached or None, not attached
    return None, None, False


def check_submission(options: SbatchOptions, partitions: frozenset[str], rejected_qos: frozenset[str]) -> None:
    """What slurmctld refuses after sbatch parsed the script: an unknown partition, then a QOS whose
    limit is reached (`rejected_qos`, a sandbox fault)."""
    for partition in options.partition.split(","):
        if partition not in partitions:
            raise sbatch_error(f"sbatch: error: invalid partition specified: {partition}\n"
                               "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    if options.qos in rejected_qos:
        raise sbatch_error("sbatch: error: QOSMaxSubmitJobPerUserLimit\n"
                           "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
                           "(job submit limit, user's size and/or time limits)\n")


_TIME_FORMATS = (
    (re.compile(r"(\d+)"), ("m",)),
    (re.compile(r"(\d+):(\d+)"), ("m", "s")),
    (re.compile(r"(\d+):(\d+):(\d+)"), ("h", "m", "s")),
    (re.compile(r"(\d+)-(\d+)"), ("d", "h")),
    (re.compile(r"(\d+)-(\d+):(\d+)"), ("d", "h", "m")),
    (re.compile(r"(\d+)-(\d+):(\d+):(\d+)"), ("d", "h", "m", "s")),
)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_time_limit(text: str) -> int | None:
    """Seconds of a Slurm `--time` value (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS); None = unlimited.

    Like Slurm, limits are whole minutes: seconds round up to the next minute, and 0 means no limit.
    """
    text = text.strip()
    if text.upper() in _UNLIMITED:
        return None
    for pattern, units in _TIME_FORMATS:
        match = pattern.fullmatch(text)
        if match:
            seconds = sum(int(v) * _SECONDS[u] for v, u in zip(match.groups(), units))
            minutes = -(-seconds // 60)
            return None if minutes == 0 else minutes * 60
    raise sbatch_error("sbatch: error: Invalid --time specification\n", 255)


NO_TASK = "4294967294"  # what %a expands to in a job that is not an array task (Slurm's NO_VAL)


def expand_pattern(pattern: str, job_id: str, job_name: str, user: str,
                   array_id: str | None = None, task: int | None = None) -> str:
    """Expand sbatch filename patterns %j, %J, %A, %a, %x, %u and %% (others stay as they are).
    For a task of a job array, %A is the array's job id and %a the task id; else %A is the job id."""
    replacements = {"j": job_id, "J": job_id, "A": array_id or job_id, "a": NO_TASK if task is None else str(task),
                    "x": job_name, "u": user, "%": "%"}
    return re.sub(r"%(\d*)([jJAaxu%])", lambda m: _pad(replacements[m.group(2)], m.group(1), m.group(2)), pattern)


def _pad(value: str, width: str, kind: str) -> str:
    """sbatch zero-pads numeric expansions like %5j."""
    if width and kind in "jJAa":
        return value.zfill(int(width))
    return value
