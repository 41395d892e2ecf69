"""Job backends of the sandbox: real Slurm (`slurm`) or local subprocesses with Slurm-like semantics (`local`)."""

from __future__ import annotations

from pathlib import Path

from ci_runner.sandbox.backends.base import Backend, BackendError, JobRecord, job_dict, metadata_dict

__all__ = ["Backend", "BackendError", "JobRecord", "job_dict", "metadata_dict", "pick_backend", "slurm_works"]


def slurm_works() -> bool:
    """True when `sbatch` is on PATH and the Slurm controller answers."""
    from ci_runner.sandbox.backends.slurm import slurm_works as _works

    return _works()


def pick_backend(
    name: str,
    root: Path,
    slots: int = 2,
    *,
    time_scale: float = 1.0,
    kill_wait: float = 5.0,
    min_job_age: float = 600.0,
    rejected_qos: frozenset[str] = frozenset(),
) -> Backend:
    """Create the backend `name` ("slurm", "local", or "auto": slurm if it works here, else local).

    `root` holds the backend's own files (local job scripts). `slots`, `time_scale`, `kill_wait`,
    `min_job_age` and `rejected_qos` only concern the local backend (see `LocalBackend`); `time_scale` is a
    sandbox-only knob that shrinks `--time` minutes so tests can reach TIMEOUT quickly, `rejected_qos` a
    fault (real Slurm's QOS limits are its own, so asking for it with the slurm backend is a ValueError).
    """
    if name == "auto":
        name = "slurm" if slurm_works() else "local"
    if name == "slurm":
        if rejected_qos:
            raise ValueError("rejecting a QOS is a fault of the local backend; real Slurm applies its own limits")
        from ci_runner.sandbox.backends.slurm import SlurmBackend

        return SlurmBackend()
    if name == "local":
        from ci_runner.sandbox.backends.local import LocalBackend

        return LocalBackend(
            root, slots=slots, time_scale=time_scale, kill_wait=kill_wait, min_job_age=min_job_age,
            rejected_qos=rejected_qos,
        )
    raise ValueError(f"unknown backend {name!r}: expected 'slurm', 'local' or 'auto'")
