"""A real Slurm TIMEOUT without waiting out sbatch's one-minute minimum."""

from __future__ import annotations

import subprocess


def time_out_at_next_check(job_id: str) -> None:
    """Lower the running job's time limit to zero (`scontrol update`, as its owner or an operator may).

    sbatch's smallest `--time` is one minute and slurmctld checks time limits every 30 s, so a job
    submitted with it ends 60-90 s after its start. With its limit at zero Slurm's own check ends it
    at its next pass (0-30 s): state TIMEOUT, reason TimeLimit, SIGTERM then SIGKILL after KillWait,
    as at the end of any `--time`. The job must be running (a finished job cannot be updated); a task of
    a job array is given as `A_i` (`A` alone would update every task of the array)."""
    done = subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"scontrol update JobId={job_id} TimeLimit=0: {done.stderr.strip()}"
