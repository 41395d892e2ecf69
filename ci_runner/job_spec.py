"""What a run submits: one entry's job (`JobSpec`), the run's submits (`Submission`: a job, a job
array, a packed job's steps), the run's job name, and the lines and exit code by which a job script
tells the runner how it ended."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from ci_runner.arrays import array_script
from ci_runner.layout import EntryLayout
from ci_runner.matrix import Entry

CHECKOUT_FAILED = 199  # exit code of a failed checkout; above 128+64, so no signal death looks like it
CHECKOUT_FAILED_LINE = "ci-runner: checkout failed: "  # printed by the job script before it exits CHECKOUT_FAILED
JOB_END_LINE = "ci-runner: job script exited with status "  # + the status: the job script's last output


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
    artifact_limit: int = 0  # the largest tar of its artifacts the job packs (one download); 0: no artifacts

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


def job_name(run_id: str) -> str:
    """`ci-runner-<run id>`, restricted to `[A-Za-z0-9._-]`: every job of a run has it, so one
    `GET /compute/{system}/jobs?name=` lists them all, and the run id keeps concurrent runs (two
    branches, a re-run) apart. Which entry a job is comes from its submit answer, or, after a lost
    answer, from its output file (cluster.find_job)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"ci-runner-{run_id}")

