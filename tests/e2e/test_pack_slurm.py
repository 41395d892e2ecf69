"""Pack mode on real Slurm (2 CPUs): the packed script of a run's entries, submitted with `sbatch`
as it is, is ONE job whose steps wait inside the allocation for each other's CPUs, and whose one
output file, read back through the demux, gives every entry its own output byte for byte and an
end record that tells exit 0, exit 3, a signal and a step that could not start apart (a step's own
time limit on real Slurm, 60-90 s: tests/e2e/test_run_pack.py, through the whole run)."""

from __future__ import annotations

import random
import re
import subprocess
import time
from pathlib import Path

import pytest

from ci_runner import pack, sbatch_header
from ci_runner.ci import CIContext
from ci_runner.config import load
from ci_runner.matrix import expand
from ci_runner.job_spec import JOB_END_LINE, job_name
from ci_runner.render import job_scripts
from ci_runner.sbatch_header import allocation_header

pytestmark = pytest.mark.slurm

CI = CIContext(provider="github", sha="0" * 40, ref="main", repo_url="https://example.org/r.git", run_id="pack-e2e")
LONG = "é€😀" * 1200  # 10800 bytes: one line over two records' worth

CONFIG = """\
version: 1
system: local
checkout: none
sbatch:
  ntasks: {ntasks}
  time: 4m
matrix:
  kind: [text, bytes, inner, killed]
  include:
{include}
script: |
  echo "start $SLURM_JOB_ID $(date +%s.%N)"
  sleep 3
  case {{{{ kind }}}} in
    text) printf 'é€😀 line\\n'; for i in $(seq 1200); do printf 'é€😀'; done; printf '\\n'; printf 'ünfinished 😀' ;;
    bytes) printf 'raw \\377\\376 bytes \\200\\n'; printf 'half a char \\342\\202\\n'; exit 3 ;;
    inner) srun -n1 echo "inner srun" ;;
    killed) kill -9 $PPID; sleep 5 ;;
    toomany) echo never ;;
    sleeper) echo sleeping; sleep 200 ;;
  esac
"""
TOO_MANY = "    - {kind: toomany, sbatch: {cpus-per-task: 4}}"


def _submit(tmp_path: Path, include: str, ntasks: int) -> tuple[str, list[str], Path]:
    """Render and sbatch the packed job of CONFIG; its job id, the steps' entry names, its output dir."""
    (tmp_path / "ci.yml").write_text(CONFIG.format(include=include, ntasks=ntasks))
    config = load(tmp_path / "ci.yml")
    specs = job_scripts(config, expand(config), CI, str(tmp_path / "work"), {}, pack=True)
    header = allocation_header(config, specs[0].layout, job_name(CI.run_id))
    script = pack.packed_script(specs, header, [sbatch_header.step_options(config, spec.entry) for spec in specs])
    output_dir = Path(specs[0].layout.run.output_dir)
    output_dir.mkdir(parents=True)
    (tmp_path / "packed.sh").write_text(script)
    done = subprocess.run(["sbatch", "--parsable", str(tmp_path / "packed.sh")], cwd=output_dir,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0], [spec.entry.name for spec in specs], output_dir


def _wait_gone(job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=15)
        if not listed.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still in the queue after {timeout} s")


def _wait_for(path: Path, text: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_bytes():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s")


def _demux(stream: bytes, steps: int) -> tuple[dict[int, bytes], dict[int, pack.StepEnd], str]:
    """The stream read in random pieces, as the runner would: each step's bytes, its end, the job's text."""
    text = stream.decode("utf-8", "surrogateescape")
    demux = pack.StreamDemux(range(steps))
    cuts = sorted(random.Random(13).sample(range(len(text)), 40))
    outs = [demux.feed(text[a:b]) for a, b in zip([0] + cuts, cuts + [len(text)])] + [demux.finish()]
    got: dict[int, str] = {}
    for out in outs:
        for step, part in out.text.items():
            got[step] = got.get(step, "") + part
    ends = [end for out in outs for end in out.ends]
    assert len(ends) == len({end.step for end in ends})
    return ({step: part.encode("utf-8", "surrogateescape") for step, part in got.items()},
            {end.step: end for end in ends}, "".join(out.job_text for out in outs))


def _run(tmp_path: Path, include: str, timeout: float, ntasks: int = 2, cancel_on: bytes = b""
         ) -> tuple[str, list[str], dict[int, bytes], dict[int, pack.StepEnd], str]:
    """Submit, wait for the job's end (or cancel it once its output holds `cancel_on`), demux its output."""
    job_id, names, output_dir = _submit(tmp_path, include, ntasks)
    try:
        if cancel_on:
            _wait_for(output_dir / f"pack+0.{job_id}.out", cancel_on, timeout)
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
        _wait_gone(job_id, timeout)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    files = sorted(path.name for path in output_dir.iterdir())
    assert files == [f"pack+0.{job_id}.out"], files  # one job, one stream
    return (job_id, names, *_demux((output_dir / files[0]).read_bytes(), len(names)))


def _start(text: bytes, job_id: str) -> tuple[float, bytes]:
    """The entry's start time and the rest of its output; the step ran inside the packed job."""
    first, rest = text.split(b"\n", 1)
    word, job, when = first.decode().split()
    assert (word, job) == ("start", job_id)
    return float(when), rest


def test_four_entries_share_one_allocation_and_each_gets_its_own_bytes(tmp_path: Path) -> None:
    job_id, names, text, ends, job = _run(tmp_path, TOO_MANY, timeout=300)
    assert names == ["text", "bytes", "inner", "killed", "toomany"]
    starts = {}
    for step in range(4):
        starts[step], text[step] = _start(text[step], job_id)
    assert max(starts.values()) - min(starts.values()) >= 2, "two steps waited for the CPUs of the others"
    end = JOB_END_LINE.encode()
    assert text[0] == f"é€😀 line\n{LONG}\nünfinished 😀".encode() + end + b"0\n"
    # srun's "task 0: Exited with exit code 3" is left out: the entry's job-end line said it
    assert text[1] == b"raw \xff\xfe bytes \x80\nhalf a char \xe2\x82\n" + end + b"3\n", text[1]
    assert text[2] == b"inner srun\n" + end + b"0\n"  # the script's own srun shares its step's CPU
    assert re.fullmatch(rb"srun: error: \S+: task 0: Killed\n", text[3]), text[3]
    assert re.fullmatch(rb"srun: error: Unable to create step for job \d+: More processors requested "
                        rb"than permitted\n", text[4]), text[4]
    assert [(ends[i].status, ends[i].how) for i in range(5)] == [
        (0, "exited"), (3, "exited"), (0, "exited"), (137, "signal 9"), (1, "not-started")]
    assert [pack.entry_verdict(ends[i], "FAILED").outcome.name for i in range(5)] == [
        "PASSED", "FAILED", "PASSED", "FAILED", "INFRA"]
    assert job == f"{JOB_END_LINE}1\n"


def test_a_cancelled_job_leaves_its_unfinished_entries_to_the_job_s_state(tmp_path: Path) -> None:
    job_id, names, text, ends, job = _run(tmp_path, "    - {kind: sleeper}", timeout=120, cancel_on=b"4|sleeping\n")
    assert 4 not in ends and text[4].endswith(b"sleeping\n")
    assert re.search(rf"slurmstepd\S*: error: \*\*\* JOB {job_id} ON \S+ CANCELLED AT ", job), job
    for step in range(len(names)):  # finished before the cancel, or ended by it (a step still waiting: not started)
        verdict = pack.entry_verdict(ends.get(step), "CANCELLED by 0", ci_cancelled=True)
        finished = step in ends and ends[step].how in ("exited", "time-limit")
        assert verdict.outcome.name in (("PASSED", "FAILED") if finished else ("CANCELLED",)), (step, ends.get(step))
