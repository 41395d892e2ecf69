"""`ci-runner render`: the dry run; each entry's job script, or with --arrays the scripts as
submitted (one per packed job, one per job array, one per other entry). Submits nothing."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ci_runner.errors import UsageError

RENDER_WORKDIR = "/tmp/ci-runner"  # placeholder base directory for dry runs without a configured workdir


def render(config_path: Path, entry_names: tuple[str, ...], out_dir: Path | None, workdir: str | None,
           as_submitted: bool) -> None:
    """Print the scripts (or write them to `out_dir`); `workdir`: the remote base directory shown."""
    from ci_runner import ci, config, matrix, pack
    from ci_runner.layout import ARRAY_PREFIX, PACK_PREFIX
    from ci_runner.matrix import select_entries
    from ci_runner.job_spec import submissions
    from ci_runner.render import job_scripts

    loaded = config.load(config_path)
    entries = select_entries(matrix.expand(loaded), entry_names)
    specs = job_scripts(loaded, entries, ci.detect(os.environ, Path.cwd()), workdir or loaded.workdir or RENDER_WORKDIR,
                        os.environ, arrays=loaded.job_arrays, pack=loaded.pack)
    scripts = []  # (file name, title, script)
    if as_submitted:
        for submission in submissions(specs):
            first = submission.specs[0]
            if submission.is_pack:
                label = f"{PACK_PREFIX}{first.layout.pack[0]}"  # type: ignore[index]
                names = ", ".join(spec.entry.name for spec in submission.specs)
                title = f"packed job {label}: entries {names} as its steps (system {first.entry.system})"
                scripts.append((f"{label}.sh", title, pack.submitted_script(submission)))
                continue
            if submission.is_array:
                label = f"{ARRAY_PREFIX}{first.layout.array[0]}"  # type: ignore[index]
                names = ", ".join(spec.entry.name for spec in submission.specs)
                title = f"job array {label}: entries {names} (system {first.entry.system})"
            else:
                label, title = first.entry.name, f"entry {first.entry.name} (system {first.entry.system})"
            scripts.append((f"{label}.sh", title, submission.script))
    else:
        for spec in specs:
            array, packed = spec.layout.array, spec.layout.pack
            where = f", task {array[1]} of job array {ARRAY_PREFIX}{array[0]} (--arrays)" if array is not None else ""
            where = f", step {packed[1]} of packed job {PACK_PREFIX}{packed[0]} (--arrays)" if packed else where
            scripts.append((f"{spec.entry.name}.sh", f"entry {spec.entry.name} (system {spec.entry.system}{where})",
                            spec.script))
    if out_dir is None:
        for _, title, script in scripts:
            click.echo(f"# {'=' * 20} {title} {'=' * 20}")
            click.echo(script, nl=not script.endswith("\n"))
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for file_name, _, script in scripts:
            target = out_dir / file_name
            target.write_text(script, encoding="utf-8")
            click.echo(f"wrote {target}")
    except OSError as error:
        raise UsageError(f"--out {out_dir}: cannot write: {error.strerror or error}") from None
