# ReFrame site configuration for a generic Slurm cluster, used by examples/reframe/.ci-runner.yml.
#
# ReFrame runs *inside* the Slurm job that ci-runner submitted: the `local` scheduler runs each
# test case in that allocation, and the `srun` launcher makes its executable a job step. So a whole
# suite costs one queue wait, and no ReFrame job is ever submitted from the CI runner.
#
# To use your site's own configuration instead, point RFM_CONFIG_FILES (in the `env:` of
# .ci-runner.yml) at it, with a partition whose scheduler is `local` (see the README, "Running ReFrame").

site_configuration = {
    'systems': [
        {
            'name': 'cluster',
            'descr': 'Any Slurm cluster, from inside a ci-runner job',
            'hostnames': ['.*'],          # whatever node the job landed on
            'modules_system': 'nomod',    # environments below load no modules
            'partitions': [
                {
                    'name': 'alloc',
                    'descr': 'The allocation of the ci-runner job',
                    'scheduler': 'local',  # no sbatch/squeue/sacct: works without accounting
                    'launcher': 'srun',    # every test's executable is a step of the allocation
                    'environs': ['builtin', 'gnu'],  # `builtin` is ReFrame's own (cc, CC, ftn)
                    # Test cases run one after another: each step takes the job's tasks. Raise it
                    # when the allocation fits several steps side by side (srun --exact in the checks).
                    'max_jobs': 1,
                },
            ],
        },
    ],
    'environments': [
        {'name': 'gnu', 'cc': 'gcc', 'cxx': 'g++', 'ftn': 'gfortran'},
    ],
}
