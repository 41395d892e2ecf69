"""Pack mode: the entries of a run that share a system run as the steps of one Slurm batch job (one
allocation), whose one output file carries every entry's output as labelled records. Pure: the step
options, the packed job's script, the stream's demultiplexer and each entry's verdict; render.py
renders the entries, the runner submits the job and reads its stream.

The packed job (`packed_script`): the top-level `sbatch:` is the allocation; each entry's `commands`
(exactly what its own job would run: prologue, checkout, the user's script, JOB_END_LINE) are
written to `<entry>/ci-runner-step.sh` and started at once, each as one job step
`srun --exact --nodes=1 --ntasks=1 <step options>`; a step that finds the allocation busy waits
inside it (srun retries "step creation temporarily disabled"), one that can never fit (more CPUs
than the allocation) fails at once. The step's stderr is joined to its stdout inside the step, so
srun's own stderr carries only srun's and slurmstepd's messages (kept in `ci-runner-step.sh.srun`):
they tell a step's time limit (`*** STEP j.s ... DUE TO TIME LIMIT ***`) from an exit, which srun's
status alone cannot (143 either way). `SLURM_OVERLAP=1` is set inside the step, so that an `srun` of
the user's script shares its step's resources instead of waiting for them forever.

The stream (the job's stdout; one writer). Each step's output passes through a small perl labeller
(perl-base is on every Debian and HPC node) that writes *records*, each one line and one write() of
at most PIPE_BUF bytes into a pipe read by a single `cat` whose stdout is the output file; a pipe
never interleaves writes of that size, so records never mix:

    <i>|<text>            the step's line <text>, whose newline the record's own newline stands for
    <i>+<text>            a piece without newline: a line longer than one record, cut on a UTF-8
                          character boundary (invalid bytes pass unchanged), or a last line
    <i>!<status> <how> <s>  the step's end, after all its lines: srun's exit status, how it ended
                          (exited | signal N | time-limit | not-started) and the seconds from the
                          step's start (its wait for CPUs inside the allocation included)

`<i>` is the entry's position in the packed job (the specs given, kept by a resubmit of a subset).
A complete line is written as soon as it arrives. srun's own messages follow the step's output
as records of the same entry. Any other line is the job's (Slurm's `slurmstepd: error: *** JOB ...
CANCELLED ...`, the script's own last line): `StreamDemux` returns it as job-level text.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ci_runner.job_spec import CHECKOUT_FAILED, JOB_END_LINE, JobSpec, Submission
from ci_runner.render import heredoc_delimiter
from ci_runner.transfer import artifact_bundle_name, pack_artifact_bundle
from ci_runner.slurm_states import Outcome, Verdict, base_state, classify, is_infrastructure

PIPE_BUF = 4096  # POSIX: a pipe write of at most this many bytes is never interleaved with others
EXITED, TIME_LIMIT, NOT_STARTED, SIGNAL = "exited", "time-limit", "not-started", "signal"

_RECORD = re.compile(r"([0-9]+)([|+!])(.*)", re.S)
_END = re.compile(r"([0-9]+) (exited|time-limit|not-started|signal [0-9?]+)(?: ([0-9]+))?")

# The labeller: stdin -> records on stdout (see the module docstring). With a second argument, srun's
# exit status (and a third, the step's seconds), stdin holds srun's messages and the end record follows
# them; srun's "task 0: Exited with exit code N" is left out (the entry's job-end line just said so).
LABELLER = r"""use strict;
my ($i, $status, $seconds) = @ARGV;
my $max = 4096 - length($i) - 2;   # a record: "$i", its mark, the text, "\n"
my ($buf, $said) = ("", "");
sub put { my $r = "$i$_[0]$_[1]\n"; defined(syswrite(STDOUT, $r)) or exit 1; }
sub cont { (ord(substr($buf, $_[0], 1)) & 0xC0) == 0x80 }   # a UTF-8 continuation byte
sub records {
  while (1) {
    my $nl = index($buf, "\n");
    if ($nl >= 0 && $nl <= $max) {
      my $line = substr($buf, 0, $nl);
      put("|", $line) unless defined $status && $line =~ /^srun: error: \S+: task \d+: Exited with exit code \d+$/;
      substr($buf, 0, $nl + 1, ""); next;
    }
    return if length($buf) <= $max;
    my $cut = $max;   # cut before a character, not inside one (unless the bytes are not UTF-8)
    $cut-- while $cut > $max - 3 && cont($cut);
    $cut = $max if cont($cut);
    put("+", substr($buf, 0, $cut)); substr($buf, 0, $cut, "");
  }
}
binmode STDIN; binmode STDOUT;
while (sysread(STDIN, my $chunk, 65536)) {
  $buf .= $chunk;
  $said .= $chunk if defined $status && length($said) < 65536;
  records();
}
put("+", $buf) if length $buf;
exit 0 unless defined $status;
my $how = $status == 0 ? "exited"
  : $said =~ /\*\*\* STEP \S+ ON \S+ CANCELLED AT \S+ DUE TO TIME LIMIT/ ? "time-limit"
  : $said =~ /: task \d+: Exited with exit code \d+/ ? "exited"
  : $said =~ /: task \d+: / ? "signal " . ($status > 128 ? $status - 128 : "?")
  : "not-started";
put("!", "$status $how" . (defined $seconds ? " $seconds" : ""));
"""

_STEP_FUNCTION = (
    "ci_runner_step() {  # position, commands file, srun options: the entry as a job step, its output as records\n"
    "  local position=$1 file=$2 status start=$SECONDS\n"
    "  shift 2\n"
    "  srun --quiet --exact --nodes=1 --ntasks=1 \"$@\" /bin/bash -c "
    "'export SLURM_OVERLAP=1; exec /bin/bash \"$0\" 2>&1' \"$file\" 2> \"$file.srun\" "
    "| perl -e \"$ci_runner_label\" \"$position\"\n"
    "  status=${PIPESTATUS[0]}\n"
    "  perl -e \"$ci_runner_label\" \"$position\" \"$status\" \"$((SECONDS - start))\" < \"$file.srun\"\n"
    "  return \"$status\"\n"
    "}\n"
)


def packed_script(specs: Sequence[JobSpec], allocation_header: str, options: Sequence[Sequence[str]],
                  steps: Iterable[int] | None = None, description: str = "") -> str:
    """The packed job's batch script: `allocation_header` (sbatch_header.allocation_header), then entry
    `specs[i]`'s commands as step i with srun options `options[i]` (step_options), for each i of
    `steps` (all by default; a subset for a resubmit), all started at once. The job's stream is the
    records of the module docstring, then its own last line JOB_END_LINE with 0 when every step
    exited 0, else 1 (its exit status; the batch shell's 128+N when a cancel signals it first)."""
    chosen = sorted(set(range(len(specs)) if steps is None else steps))
    entries = ", ".join(f"{i} {specs[i].entry.name}" for i in chosen)
    label = heredoc_delimiter(LABELLER)
    return (
        "#!/bin/bash\n"
        f"{allocation_header}"
        f"# Generated by ci-runner: packed job{' ' + description if description else ''}; "
        f"step i runs entry i ({entries}).\n"
        "set -u\n"
        + _pack_artifacts_cleared(specs) +
        f"IFS= read -r -d '' ci_runner_label <<'{label}'\n{LABELLER}{label}\n"
        f"{_STEP_FUNCTION}"
        "{\n"
        "ci_runner_pids=()\n"
        + "".join(_step(i, specs[i], options[i]) for i in chosen)
        + "ci_runner_failed=0\n"
        'for ci_runner_pid in "${ci_runner_pids[@]}"; do wait "$ci_runner_pid" || ci_runner_failed=1; done\n'
        'exit "$ci_runner_failed"\n'
        "} 2>&1 | cat  # the stream's one writer\n"
        "ci_runner_status=${PIPESTATUS[0]}\n"
        + _pack_artifacts([specs[i] for i in chosen]) +
        f"printf '{JOB_END_LINE}%s\\n' \"$ci_runner_status\"\n"
        'exit "$ci_runner_status"\n'
    )


def submitted_script(submission: Submission) -> str:
    """The script `submission` is submitted with: its packed job's (its steps: all, or a resubmit's
    `tasks`), else render's (a job, a job array)."""
    if not submission.is_pack:
        return submission.script
    first = submission.specs[0]
    assert first.layout.pack is not None
    return packed_script(submission.specs, first.header, [spec.step_options for spec in submission.specs],
                         submission.tasks or None,
                         f"{first.layout.pack[0]} of run {first.layout.run.root.rsplit('/', 1)[-1]}")


def _pack_artifacts_cleared(specs: Sequence[JobSpec]) -> str:
    """Shell: remove an earlier attempt's tar of the entries' tars (none without artifacts)."""
    if not any(spec.artifact_limit for spec in specs):
        return ""
    return f"rm -f -- {shlex.quote(pack_artifact_bundle(specs[0].layout))}\n"


def _pack_artifacts(specs: Sequence[JobSpec]) -> str:
    """Shell, after every step: the tars the entries' jobs made of their artifacts (artifact_bundle)
    packed into one (pack_artifact_bundle), named relative to the run's directory, when it fits one
    download; otherwise none, and the runner fetches each entry's own."""
    limit = min((spec.artifact_limit for spec in specs if spec.artifact_limit), default=0)
    if not limit:
        return ""
    run = specs[0].layout.run.root
    target = shlex.quote(pack_artifact_bundle(specs[0].layout))
    names = " ".join(shlex.quote(artifact_bundle_name(spec.layout)) for spec in specs)
    return (
        f"( cd {shlex.quote(run)} || exit\n"
        "  ci_runner_tars=()\n"
        f'  for ci_runner_tar in {names}; do [ -f "$ci_runner_tar" ] && ci_runner_tars+=("$ci_runner_tar"); done\n'
        f'  [ "${{#ci_runner_tars[@]}}" -gt 0 ] && tar -cf {target}.tmp -- "${{ci_runner_tars[@]}}" 2>/dev/null &&\n'
        f'    [ "$(stat -c %s -- {target}.tmp)" -le {limit} ] && mv -f -- {target}.tmp {target}\n'
        f"  rm -f -- {target}.tmp )\n"
    )


def _step(position: int, spec: JobSpec, options: Sequence[str]) -> str:
    """Shell: write the entry's commands to its step script, then start its step in the background; an
    entry whose script cannot be written ends at once (not started), with the reason as its text."""
    commands = spec.commands if spec.commands.endswith("\n") else spec.commands + "\n"
    delimiter = heredoc_delimiter(commands)
    root, file = shlex.quote(spec.layout.root), shlex.quote(spec.layout.step_script)
    srun = "".join(f" {shlex.quote(option)}" for option in options)
    return (
        f"# step {position}: entry {spec.entry.name}\n"
        f"if mkdir -p -- {root} && cat > {file} <<'{delimiter}'\n"
        f"{commands}{delimiter}\n"
        f"then ci_runner_step {position} {file}{srun} &\n"
        f"else {{ printf 'ci-runner: cannot write the step script %s\\n' {file} "
        f"| perl -e \"$ci_runner_label\" {position} 1; false; }} &\n"
        "fi\n"
        'ci_runner_pids+=("$!")\n'
    )


@dataclass(frozen=True)
class StepEnd:
    """An entry's end record: srun's exit status and how the step ended (`exited`, `signal N`,
    `time-limit`, `not-started`)."""

    step: int
    status: int
    how: str
    seconds: int | None = None  # how long the step ran, from its start (waiting for CPUs included)


@dataclass(frozen=True)
class Demuxed:
    """What one piece of the stream completed: each step's output text (exact, in stream order within
    the step), the end records, and the job's own lines (not records)."""

    text: Mapping[int, str] = field(default_factory=dict)
    ends: tuple[StepEnd, ...] = ()
    job_text: str = ""


class StreamDemux:
    """The packed job's stream, fed as the runner reads it (cut anywhere), split into its entries.
    Only whole lines are decided; a line still open waits for the next `feed` (or `finish`)."""

    def __init__(self, steps: Iterable[int]) -> None:
        self._steps = frozenset(steps)
        self._open = ""

    def feed(self, text: str) -> Demuxed:
        """The records completed by `text`."""
        lines = (self._open + text).split("\n")
        self._open = lines.pop()
        return self._decide(lines, closed=True)

    @property
    def pending_bytes(self) -> int:
        """Bytes fed but not decided yet (the open last line): the stream is printed up to its offset
        minus these, which is where an `--attach` resumes."""
        return len(self._open.encode("utf-8", "surrogateescape"))

    def finish(self) -> Demuxed:
        """After the stream's end: a last line without newline (never a record the labeller wrote
        whole) is the job's text, as written."""
        rest, self._open = self._open, ""
        return self._decide([rest], closed=False) if rest else Demuxed()

    def _decide(self, lines: Iterable[str], closed: bool) -> Demuxed:
        text: dict[int, list[str]] = {}
        ends: list[StepEnd] = []
        job: list[str] = []
        newline = "\n" if closed else ""
        for line in lines:
            record = _RECORD.fullmatch(line) if closed else None
            step = int(record.group(1)) if record else -1
            if record is None or step not in self._steps:
                job.append(line + newline)
                continue
            mark, body = record.group(2), record.group(3)
            if mark == "!":
                end = _END.fullmatch(body)
                if end is None:
                    job.append(line + newline)
                else:
                    seconds = int(end.group(3)) if end.group(3) is not None else None
                    ends.append(StepEnd(step, int(end.group(1)), end.group(2), seconds))
                continue
            text.setdefault(step, []).append(body + "\n" if mark == "|" else body)
        return Demuxed({step: "".join(parts) for step, parts in text.items()}, tuple(ends), "".join(job))


def job_end_status(job_text: str) -> int | None:
    """The status in the packed job's own end line (JOB_END_LINE) when that is the last line of
    `job_text` (the job's lines of one piece of the stream, whole), else None."""
    if not job_text.endswith("\n"):
        return None
    last = job_text[:-1].rpartition("\n")[2]
    status = last[len(JOB_END_LINE):] if last.startswith(JOB_END_LINE) else ""
    return int(status) if status.isdigit() else None


def stream_complete(end_status: int | None, state: str, exit_code: int | None, signal: int | None) -> bool:
    """Whether a packed job's stream, read to its end line (status `end_status`, nothing after it),
    is complete once Slurm reports it final with `state`: COMPLETED or FAILED with that exit status.
    Only the batch script and Slurm write the stream (the entries' processes write through their
    steps, which all ended before the line); the script exits right after the line, and Slurm
    writes into it only when it ends the job otherwise (CANCELLED, TIMEOUT, OUT_OF_MEMORY, ...).
    So no listing is needed for its final size."""
    return (end_status is not None and base_state(state) in ("COMPLETED", "FAILED") and not signal
            and exit_code == end_status)


def entry_verdict(end: StepEnd | None, job_state: str | None, *, ci_cancelled: bool = False) -> Verdict:
    """An entry's outcome. From its end record: exit 0 passed, the checkout's exit infrastructure,
    other exits and signals failed, its step's time limit TIMEOUT, a step that could not start
    infrastructure. From how the allocation ended (`job_state`, the packed job's final state as
    slurm_states.classify reads it; None while it runs) when there is no end record, or when the job ended
    abnormally (TIMEOUT, CANCELLED, NODE_FAIL, ...) and the step was killed or never started: then
    the job's end is the cause (a step still waiting when the job is cancelled fails to start)."""
    allocation = None if job_state is None else classify(job_state, None, None, ci_cancelled=ci_cancelled)
    ended_early = allocation is not None and allocation.outcome not in (Outcome.PASSED, Outcome.FAILED)
    if end is not None and not (ended_early and (end.how == NOT_STARTED or end.how.startswith(SIGNAL))):
        if end.how == TIME_LIMIT:
            return Verdict(Outcome.TIMEOUT, "TIMEOUT (the step's time limit reached)")
        if end.how == NOT_STARTED:
            return Verdict(Outcome.INFRA, f"the step could not start (srun exit status {end.status})")
        if end.how.startswith(SIGNAL):
            return Verdict(Outcome.FAILED, f"FAILED (step killed by {end.how})")
        if end.status == 0:
            return Verdict(Outcome.PASSED, "COMPLETED")
        if end.status == CHECKOUT_FAILED:
            return Verdict(Outcome.INFRA, f"checkout failed (exit code {CHECKOUT_FAILED})")
        return Verdict(Outcome.FAILED, f"FAILED (exit code {end.status})")
    if allocation is None or job_state is None:
        raise ValueError("an entry without an end record is decided by the packed job's final state")
    if not ended_early:
        return Verdict(Outcome.INFRA, f"the packed job ended ({job_state.strip()}) without the entry's end record")
    return Verdict(allocation.outcome, f"{allocation.summary}: the allocation ended before the entry finished")


def entry_state(verdict: Verdict, job_state: str | None) -> str:
    """The Slurm-like state an entry of a packed job is reported with (summary, JUnit, outputs): what a
    job of its own would have ended as; the packed job's own state when its ending decided the entry."""
    named = {Outcome.PASSED: "COMPLETED", Outcome.FAILED: "FAILED", Outcome.TIMEOUT: "TIMEOUT",
             Outcome.CANCELLED: "CANCELLED"}
    if verdict.outcome is Outcome.INFRA and job_state and is_infrastructure(job_state):
        return base_state(job_state)
    return named.get(verdict.outcome, "FAILED")
