"""What Slurm's own commands answered, as FirecREST v2 passes it on. Pure.

FirecREST runs sbatch/scancel over SSH. When the command answers with an error, the server replies
500 `Unexpected Slurm command response. exit_status:N std_err:<stderr>` (403 `Job submission
rejected: accounting/QOS policy limit exceeded. <stderr>` for a QOS/association limit). That is the
scheduler's verdict, not a transient failure of the API: repeating the same request gets the same
answer. The exceptions are the controller's own transient failures (slurmctld unreachable or busy),
which a retry can cure. This module tells the two apart and turns a rejection into a message that
names the sbatch option to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SLURM_COMMAND_ANSWER = "Unexpected Slurm command response"
QUOTA_REJECTION = "Job submission rejected"

# stderr of a Slurm command that failed for a reason a retry can cure (the controller, not the job)
_TRANSIENT = re.compile(
    r"unable to contact slurm controller|socket timed out|temporarily unable|resource temporarily unavailable"
    r"|connection refused|zero bytes were transmitted|communication connection failure|slurmctld.*(?:down|busy)",
    re.IGNORECASE,
)
_STDERR = re.compile(r"std_err:(.*)\Z", re.DOTALL)
_QUOTA_LIMIT = re.compile(r"\b(?:QOS|Assoc)(?:Max|Min|Grp)\w*Limit\b", re.IGNORECASE)
# scancel's answers for a job that cannot be cancelled because it is over (or never existed)
_ALREADY_OVER = re.compile(r"already complet|job has finished|invalid job id", re.IGNORECASE)

# sbatch's wording → the long option it is about (first match wins)
_OPTION_HINTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), option) for pattern, option in (
        (r"account", "account"),  # before partition: "Invalid account or account/partition combination"
        (r"\bqos\b", "qos"),
        (r"partition", "partition"),
        (r"reservation", "reservation"),
        (r"time limit|invalid time", "time"),
        (r"generic resource|\bgres\b|gpu", "gres"),
        (r"feature|constraint", "constraint"),
        (r"node count|nodes? specification", "nodes"),
        (r"memory|--mem", "mem"),
    )
)
_UNRECOGNISED = re.compile(r"unrecognized option '--([\w-]+)|invalid option -- '(\w)'|option '--([\w-]+)' requires")


def is_slurm_answer(status: int | None, message: str) -> bool:
    """True when FirecREST answered with the Slurm command's own verdict (not a transient failure):
    a 500 'Unexpected Slurm command response' whose stderr is not a controller hiccup, or a 403
    quota rejection. Such an answer must not be repeated unchanged."""
    if status == 403 and message.startswith(QUOTA_REJECTION):
        return True
    return status == 500 and message.startswith(SLURM_COMMAND_ANSWER) and not _TRANSIENT.search(message)


def command_stderr(message: str) -> str:
    """The command's stderr inside the server's message (the whole message when it has none)."""
    match = _STDERR.search(message)
    return (match.group(1) if match else message).strip()


@dataclass(frozen=True)
class SbatchRejection:
    """sbatch refused the job: its own words, and the sbatch option they are about (None: unknown)."""

    reasons: tuple[str, ...]
    option: str | None

    def describe(self) -> str:
        text = "sbatch rejected the job: " + "; ".join(self.reasons)
        if self.option is None:
            return text + " (check the sbatch options and the script's #SBATCH lines)"
        return text + f" (check the sbatch option --{self.option}: `sbatch.{self.option}` in the config)"


def sbatch_rejection(message: str) -> SbatchRejection:
    """sbatch's reasons from the server's message, without the `sbatch: error:` prefixes and the
    `Try "sbatch --help"` hint, and the option they name."""
    text = command_stderr(message) if message.startswith(SLURM_COMMAND_ANSWER) else message
    reasons: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"^\s*sbatch:\s*(?:error:\s*)?", "", line).strip()
        if line and not line.startswith("Try \"sbatch --help\"") and line not in reasons:
            reasons.append(line)
    return SbatchRejection(tuple(reasons) or (text.strip() or "no reason given",), _option_named(text))


def _option_named(text: str) -> str | None:
    unrecognised = _UNRECOGNISED.search(text)
    if unrecognised:
        return next(group for group in unrecognised.groups() if group)
    limit = _QUOTA_LIMIT.search(text)
    if limit:
        return "qos"
    for pattern, option in _OPTION_HINTS:
        if pattern.search(text):
            return option
    return None


def job_already_over(message: str) -> bool:
    """scancel's answer for a job that has completed (or that Slurm does not know): nothing to cancel."""
    return message.startswith(SLURM_COMMAND_ANSWER) and bool(_ALREADY_OVER.search(message))
