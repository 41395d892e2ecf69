"""ci-runner: run CI tests as Slurm jobs through FirecREST."""

__version__ = "0.1.0"
