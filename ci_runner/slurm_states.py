"""Slurm job states and pending reasons → what the CI should report. Pure.

States arrive as FirecREST reports them: sacct's `State` column verbatim on SSH-mode clusters, so
"CANCELLED by 1001" occurs; every function matches on the first word, upper-cased. A state may also
be a comma-joined list from some schedulers ("COMPLETED,..."): the first part decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable


class Outcome(enum.Enum):
    """Result of one entry; `.value` is the process exit code (design.md)."""

    PASSED = 0
    FAILED = 1
    CONFIG = 2  # Slurm refused the job as configured (sbatch rejected it): fix the configuration
    INFRA = 3
    TIMEOUT = 4
    CANCELLED = 130

    @property
    def exit_code(self) -> int:
        return self.value

    @property
    def severity(self) -> int:
        """PASSED < FAILED < TIMEOUT < INFRA < CONFIG < CANCELLED. A configuration that Slurm refuses
        fails again on every retry, so it outranks a cluster failure."""
        return _SEVERITY[self]


_SEVERITY = {
    Outcome.PASSED: 0,
    Outcome.FAILED: 1,
    Outcome.TIMEOUT: 2,
    Outcome.INFRA: 3,
    Outcome.CONFIG: 4,
    Outcome.CANCELLED: 5,
}


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """The most severe outcome; PASSED for an empty iterable (nothing failed)."""
    return max(outcomes, key=lambda o: o.severity, default=Outcome.PASSED)


# Terminal states: the job will not run (again) on its own.
TERMINAL = frozenset({
    "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT",
})
# Waiting to (re)start. REQUEUE_HOLD/RESV_DEL_HOLD are held: only a release or `queue_timeout` ends them.
PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})
# Allocated and running, or on the way in/out of running. Not terminal: output may still come.
ACTIVE = frozenset({
    "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING",
})
# Terminal states caused by the cluster, not by the tests: worth a resubmit.
INFRASTRUCTURE = frozenset({"NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "REVOKED", "DEADLINE"})

KNOWN = TERMINAL | PENDING | ACTIVE


def base_state(state: str) -> str:
    """'CANCELLED by 1001' → 'CANCELLED'; 'completed' → 'COMPLETED'; '' → ''."""
    first = state.strip().split(",", 1)[0].split()
    return first[0].upper().rstrip("+") if first else ""


def is_terminal(state: str) -> bool:
    """True for an explicit set of final states. CONFIGURING, COMPLETING, REQUEUED, REQUEUE_FED are not
    final; an unknown state is not final either (keep following; the runner's limits end the wait)."""
    return base_state(state) in TERMINAL


def is_pending(state: str) -> bool:
    """Waiting in the queue (including requeued and held jobs)."""
    return base_state(state) in PENDING


def is_infrastructure(state: str) -> bool:
    """A final state caused by the cluster (node/boot failure, preemption, deadline, revoked): resubmit-worthy."""
    return base_state(state) in INFRASTRUCTURE


@dataclass(frozen=True)
class Verdict:
    """An outcome plus one line for the CI log, e.g. 'FAILED (exit code 3)'."""

    outcome: Outcome
    summary: str


def classify(
    state: str, exit_code: int | None, signal: int | None, *, ci_cancelled: bool = False
) -> Verdict:
    """Map a final Slurm state to a verdict.

    - COMPLETED: PASSED when the exit code is 0 (or unknown) and no signal, else FAILED.
    - FAILED, OUT_OF_MEMORY: FAILED (the tests' fault). SPECIAL_EXIT (requeued on an exit value the
      site or user configured): FAILED.
    - TIMEOUT: TIMEOUT, whatever the exit code (Slurm reports 0:15 or 0:0).
    - NODE_FAIL, BOOT_FAIL, PREEMPTED, DEADLINE, REVOKED: INFRA.
    - CANCELLED[ by N]: CANCELLED only when `ci_cancelled` (the runner cancelled the job because the CI
      cancelled the run); otherwise someone else (a user, an admin, a queue-timeout of ours) cancelled it,
      which is not the tests' fault and not a CI cancellation: INFRA.
    - Anything else (non-final or unknown states): INFRA with the state text in the summary.
    """
    base = base_state(state)
    code = "" if exit_code is None else f" (exit code {exit_code}" + (f", signal {signal})" if signal else ")")
    if base == "COMPLETED":
        if (exit_code or 0) == 0 and not signal:
            return Verdict(Outcome.PASSED, "COMPLETED")
        return Verdict(Outcome.FAILED, f"COMPLETED{code}")
    if base in ("FAILED", "OUT_OF_MEMORY", "SPECIAL_EXIT"):
        return Verdict(Outcome.FAILED, f"{base}{code}")
    if base == "TIMEOUT":
        return Verdict(Outcome.TIMEOUT, "TIMEOUT (Slurm time limit reached)")
    if base in INFRASTRUCTURE:
        return Verdict(Outcome.INFRA, f"{base} (cluster failure, not the tests)")
    if base == "CANCELLED":
        if ci_cancelled:
            return Verdict(Outcome.CANCELLED, f"{state.strip()} (cancelled because the CI cancelled the run)")
        return Verdict(Outcome.INFRA, f"{state.strip()} (cancelled outside ci-runner)")
    if base in KNOWN:
        return Verdict(Outcome.INFRA, f"job ended in non-final state {state.strip()!r}")
    return Verdict(Outcome.INFRA, f"unknown Slurm state {state.strip()!r}")


# Pending reasons that never resolve by waiting: fail fast instead of waiting for queue_timeout.
# Per-job limits compare the job itself with a fixed limit, so no amount of waiting helps; group
# limits (AssocGrp*, QOSGrp*, AssocMaxJobsLimit, ...) free up when other jobs end and are NOT here;
# neither are holds (JobHeldUser/JobHeldAdmin: a release can come), ReqNodeNotAvail (nodes return,
# maintenance ends) or PartitionDown/PartitionInactive (an admin brings it back).
HOPELESS_REASONS: dict[str, str] = {
    "InvalidAccount": "the account does not exist or you are not in it",
    "InvalidQOS": "the QOS does not exist or is not allowed for your account",
    "AccountNotAllowed": "the partition does not accept this account",
    "QOSNotAllowed": "the partition does not accept this QOS",
    "PartitionTimeLimit": "the requested time exceeds the partition's maximum",
    "BadConstraints": "the requested constraints/features can never be satisfied",
    "DependencyNeverSatisfied": "a dependency of the job can never be satisfied",
    "QOSMaxWallDurationPerJobLimit": "the requested time exceeds the QOS per-job limit",
    "QOSMaxCpuPerJobLimit": "the requested CPUs exceed the QOS per-job limit",
    "QOSMaxNodePerJobLimit": "the requested nodes exceed the QOS per-job limit",
    "QOSMaxMemoryPerJob": "the requested memory exceeds the QOS per-job limit",
    "QOSMaxGRESPerJob": "the requested GRES exceed the QOS per-job limit",
    "QOSMinCpuNotSatisfied": "the job asks for fewer CPUs than the QOS minimum",
    "AssocMaxWallDurationPerJobLimit": "the requested time exceeds your association's per-job limit",
    "AssocMaxCpuPerJobLimit": "the requested CPUs exceed your association's per-job limit",
    "AssocMaxNodePerJobLimit": "the requested nodes exceed your association's per-job limit",
    "AssocMaxMemPerJob": "the requested memory exceeds your association's per-job limit",
    "AssocMaxGRESPerJob": "the requested GRES exceed your association's per-job limit",
}

_COMMON_REASONS: dict[str, str] = {
    "None": "waiting to be scheduled",
    "Priority": "other jobs have higher priority",
    "Resources": "waiting for free resources",
    "Dependency": "waiting for a job it depends on",
    "BeginTime": "the requested start time has not come yet",
    "JobHeldUser": "held by the user (scontrol release)",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail": "a required node is unavailable (down, drained or reserved)",
    "Reservation": "waiting for its reservation to start",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "PartitionNodeLimit": "the node count is outside the partition's current limits",
    "NodeDown": "a node required by the job is down",
    "Licenses": "waiting for licenses",
    "AssocMaxJobsLimit": "your association's running-job limit is reached",
    "AssocGrpCpuLimit": "your association's CPU limit is in use by other jobs",
    "AssocGrpNodeLimit": "your association's node limit is in use by other jobs",
    "QOSMaxJobsPerUserLimit": "the QOS running-job limit per user is reached",
    "QOSGrpCpuLimit": "the QOS CPU limit is in use by other jobs",
    "QOSGrpNodeLimit": "the QOS node limit is in use by other jobs",
    "Cleaning": "the job is being requeued and still cleaning up",
    "launch failed requeued held": "launching failed; the job was requeued and held",
}


def _reason_key(reason: str | None) -> str:
    """'ReqNodeNotAvail, UnavailableNodes:nid[1-3]' → 'ReqNodeNotAvail'."""
    text = (reason or "None").strip().strip("()")
    if text in _COMMON_REASONS or text in HOPELESS_REASONS:
        return text
    return text.split(",", 1)[0].split()[0] if text.split() else ""


def hopeless_pending(reason: str | None) -> bool:
    """True when a pending job with this reason will never start by waiting (see HOPELESS_REASONS)."""
    return _reason_key(reason) in HOPELESS_REASONS


def describe_pending(reason: str | None) -> str:
    """A short human description of a pending reason for the CI log; unknown reasons are echoed."""
    key = _reason_key(reason)
    text = HOPELESS_REASONS.get(key) or _COMMON_REASONS.get(key)
    raw = (reason or "None").strip() or "None"
    if text is None:
        return raw
    return f"{raw}: {text}"
