"""The run's remote set-up (its directories, the source archive sent once) and an entry's clean-up.

Layout (layout.py): `<workdir>/<run-id>/` with `output/` (every job's output file), the parts of
the source archive (checkout: upload, on a cache miss) and `<entry>/src/` (the checkout, made by the
job; the user's script runs there); `<workdir>/sources/` caches one archive per commit.

- `checkout: clone`: nothing to send; the job script (render.py) clones the exact SHA on the cluster.
  No credentials ever go into the script, so a private repository needs `checkout: upload`.
- `checkout: upload`: `git archive` of the exact commit (never the working tree), kept once per commit
  in the cluster's source cache (`<workdir>/sources/`): a run finds it there with one request, or
  uploads it in parts that each fit one direct upload (transfer.py); each entry's job joins and
  verifies the parts into the cache if needed and extracts the archive into its `src/`.
- `checkout: none`: the script brings its own sources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ci_runner import transfer

if TYPE_CHECKING:
    from ci_runner.cluster import Cluster
    from ci_runner.layout import EntryLayout, RunLayout
    from ci_runner.transfer import SourcePlan


async def prepare_run(cluster: Cluster, layout: RunLayout, source: SourcePlan | None,
                      info: Callable[[str], None] | None = None) -> None:
    """Create the run's output directory (and the run's, with parents) and, for `checkout: upload`,
    make sure the commit's archive reaches the cluster: one `stat` of the source cache, and on a
    miss one upload per part; whatever the number of entries (each job makes its own entry
    directory and takes the shared archive). `info` hears how many parts and bytes were sent.

    The output directory must exist before submit: it is every job's working directory, and Slurm
    cannot open the output file of a job whose directory is missing.
    """
    await cluster.mkdir(layout.output_dir)
    if source is not None:
        await transfer.upload_source(cluster, source, info)


async def cleanup(cluster: Cluster, layout: EntryLayout) -> None:
    """Remove the entry's directory (config `cleanup: true`, after success only)."""
    await cluster.rm(layout.root)
