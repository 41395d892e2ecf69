"""Which sbatch options a job step can set: the facts pack mode's checks share (config.py checks an
include's options with file:line, pack.py turns them into the step's `srun` options). No imports from
ci_runner: both sides import this.

In pack mode (`pack: true`) the top-level `sbatch:` describes the allocation; a matrix `include` may
only set what `srun` applies to a step inside it: the resources of the entry's one task, its node
features among the allocation's, its own time limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

STEP_OPTIONS = frozenset({
    "cpus-per-task", "cpus-per-gpu", "mem", "mem-per-cpu", "mem-per-gpu", "gpus", "gpus-per-task",
    "gpus-per-node", "gres", "constraint", "time",
})
_ONE_TASK = ("a packed entry's commands run once, as the one task of its job step; ask for its CPUs with "
             "cpus-per-task (an `srun` in the script shares them), or set pack: false")
_NOT_STEP = {
    "partition": "a step runs in the allocation's partition; set it in the top-level sbatch",
    "account": "a step is charged to the allocation's account; set it in the top-level sbatch or `account:`",
    "qos": "a step runs under the allocation's QOS; set it in the top-level sbatch",
    "reservation": "a step runs in the allocation's reservation; set it in the top-level sbatch",
    "exclusive": "steps share the allocation by design; set it in the top-level sbatch for the whole job",
    "nodes": "a packed entry runs on one node of the allocation; set nodes in the top-level sbatch",
    "ntasks": _ONE_TASK,
    "ntasks-per-node": _ONE_TASK,
}


def refusal(name: str) -> str | None:
    """Why `name` cannot be a packed entry's own option (a job step cannot set it), or None when it can."""
    if name in STEP_OPTIONS:
        return None
    return _NOT_STEP.get(name, "not an option of a job step (srun applies it to job allocations only); "
                               "set it in the top-level sbatch, which describes the packed job's allocation")


def own_options(options: Mapping[str, object], allocation: Mapping[str, object],
                same: Callable[[object, object], bool]) -> dict[str, object]:
    """The options a packed entry's step sets itself: those of its `options` (the top-level `sbatch`
    merged with its includes') that the allocation does not set to the same value (`same`, config's
    comparison of YAML values)."""
    return {name: value for name, value in options.items() if not (name in allocation and same(allocation[name], value))}


def allocation_cpus(allocation: Mapping[str, object]) -> int | None:
    """CPUs of an allocation from its sbatch options (`ntasks` × `cpus-per-task`, 1 each by default,
    as Slurm gives); None when whole nodes or per-node counts make it depend on the nodes."""
    if any(name in allocation for name in ("nodes", "ntasks-per-node", "exclusive", "cpus-per-gpu")):
        return None
    return _count(allocation.get("ntasks", 1)) * _count(allocation.get("cpus-per-task", 1))


def step_cpus(allocation: Mapping[str, object], entry: Mapping[str, object]) -> int:
    """CPUs one packed entry's step takes: its `cpus-per-task`, else the allocation's (a step inherits it)."""
    return _count(entry.get("cpus-per-task", allocation.get("cpus-per-task", 1)))


def _count(value: object) -> int:
    try:
        return max(1, int(str(value)))
    except ValueError:
        return 1
