"""Names ci-runner keeps for itself: sbatch options it sets (or that would break following the job),
the names of the job template's context and the keywords of `matrix:`. config_checks.py refuses
them at their line in the file; render.py refuses the first two again for a `Config` not made by
`config.load`."""

from __future__ import annotations

from typing import Mapping

# sbatch option -> why the user cannot set it (shown in the error).
RESERVED_SBATCH: Mapping[str, str] = {
    "output": "ci-runner writes the job's output to <workdir>/<run-id>/<entry>/slurm-%j.out",
    "error": "ci-runner merges stderr into the job's output file",
    "input": "jobs run without stdin",
    # The job starts in the working directory given at submit (layout.working_dir, the run's output
    # directory, which exists before the job does); the script then runs in its checkout (<entry>/src).
    "chdir": "ci-runner sets the job's working directory and runs the script in its checkout; "
             "use `workdir` for the base directory",
    "wrap": "the job script comes from `script` or `template`",
    "job-name": "ci-runner names the job after the entry",
    "array": "use a `matrix` instead of job arrays",
    "wait": "ci-runner follows the job itself",
    "parsable": "ci-runner reads the job id from FirecREST",
    "test-only": "ci-runner submits real jobs; use `ci-runner render` for a dry run",
}

# The template context's own names (render.py): a matrix variable of that name would shadow one.
TEMPLATE_NAMES = ("matrix", "entry", "ci", "env")

# The keywords of the `matrix:` mapping; every other key there is an axis.
MATRIX_KEYWORDS = ("exclude", "include", "max_entries")
