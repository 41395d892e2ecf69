"""Pack mode (pure parts): which options an entry's job step may set, the packed job's script, the
labelled stream (the labeller run locally on bytes) and its demultiplexer, and each entry's verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ci_runner import pack, sbatch_header, steps
from ci_runner.ci import CIContext
from ci_runner.config import Config, load
from ci_runner.errors import ConfigError
from ci_runner.matrix import Entry, expand
from ci_runner.job_spec import JOB_END_LINE, JobSpec, job_name, submissions
from ci_runner.render import job_scripts
from ci_runner.sbatch_header import allocation_header
from ci_runner.slurm_states import Outcome

CI = CIContext(provider="github", sha="0" * 40, ref="main", repo_url="https://example.org/r.git", run_id="run-7")


def packed(tmp_path: Path, text: str, workdir: str = "/scratch/ci") -> tuple[Config, list[JobSpec], str]:
    """The config, the entries' specs (as steps of pack 0) and the packed script of `text`."""
    path = tmp_path / "ci.yml"
    path.write_text(text)
    config = load(path)
    entries = expand(config)
    specs = job_scripts(config, entries, CI, workdir, {}, pack=True)
    assert [spec.layout.pack for spec in specs] == [(0, i) for i in range(len(specs))]
    header = allocation_header(config, specs[0].layout, job_name(CI.run_id))
    options = [sbatch_header.step_options(config, spec.entry) for spec in specs]
    return config, specs, pack.packed_script(specs, header, options)


BASE = """\
version: 1
system: local
checkout: none
sbatch:
  ntasks: 2
  time: 10m
matrix:
  kind: [a, b]
  include:
{include}
script: |
  echo {{{{ kind }}}}
"""


@pytest.mark.parametrize("option, value, expected", [
    ("cpus-per-task", "2", "--cpus-per-task=2"), ("cpus-per-gpu", "4", "--cpus-per-gpu=4"),
    ("mem", "2G", "--mem=2G"), ("mem-per-cpu", "500M", "--mem-per-cpu=500M"), ("mem-per-gpu", "8G", "--mem-per-gpu=8G"),
    ("gpus", "1", "--gpus=1"), ("gpus-per-task", "1", "--gpus-per-task=1"), ("gpus-per-node", "1", "--gpus-per-node=1"),
    ("gres", "gpu:1", "--gres=gpu:1"), ("constraint", "gpu", "--constraint=gpu"), ("time", "2m", "--time=00:02:00"),
])
def test_each_step_option_of_an_include_reaches_its_step_only(tmp_path: Path, option: str, value: str,
                                                              expected: str) -> None:
    config, specs, _ = packed(tmp_path, BASE.format(include=f"    - {{kind: b, sbatch: {{{option}: {value}}}}}"))
    assert [sbatch_header.step_options(config, spec.entry) for spec in specs] == [(), (expected,)]


def test_an_option_equal_to_the_allocation_s_is_no_step_option_and_booleans_are_flags(tmp_path: Path) -> None:
    config, specs, _ = packed(tmp_path, BASE.format(include="    - {kind: b, sbatch: {ntasks: 2, time: 10m}}"))
    assert sbatch_header.step_options(config, specs[1].entry) == ()
    entry = Entry("x", 0, {}, {**config.sbatch, "gres": True, "mem": False}, "local")
    assert sbatch_header.step_options(config, entry) == ("--gres",)


@pytest.mark.parametrize("option, value, words", [
    ("partition", "debug", "a step runs in the allocation's partition; set it in the top-level sbatch"),
    ("ntasks", "4", "run once, as the one task of its job step"),
    ("account", "g1", "allocation's account"),
    ("nodes", "2", "one node of the allocation"),
    ("hint", "nomultithread", "srun applies it to job allocations only"),
])
def test_an_option_a_step_cannot_set_is_refused_naming_entry_and_option(tmp_path: Path, option: str, value: str,
                                                                       words: str) -> None:
    config, specs, _ = packed(tmp_path, BASE.format(include="    - {kind: b, sbatch: {mem: 1G}}"))
    entry = Entry("b", 1, {}, {**config.sbatch, option: value}, "local")
    with pytest.raises(ConfigError) as raised:
        sbatch_header.step_options(config, entry)
    message = str(raised.value)
    assert f"sbatch.{option} (entry b)" in message and words in message and str(config.path) in message
    assert steps.refusal(option) is not None and steps.refusal("mem") is None


def test_the_packed_script_is_bash_with_the_allocation_header_and_every_entry_s_commands(tmp_path: Path) -> None:
    config, specs, script = packed(tmp_path, BASE.format(include="    - {kind: b, sbatch: {time: 2m}}"))
    path = tmp_path / "packed.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, timeout=10).returncode == 0
    assert script.startswith("#!/bin/bash\n#SBATCH --job-name=ci-runner-run-7\n"
                             "#SBATCH --output=/scratch/ci/run-7/output/pack+0.%j.out\n"
                             "#SBATCH --error=/scratch/ci/run-7/output/pack+0.%j.out\n"
                             "#SBATCH --ntasks=2\n#SBATCH --time=00:10:00\n")
    for spec in specs:
        assert spec.commands in script
        assert "export CI_RUNNER_OUTPUT=/scratch/ci/run-7/output/pack+0.\"${SLURM_JOB_ID:-}\".out" in spec.commands
    assert "ci_runner_step 0 /scratch/ci/run-7/a/ci-runner-step.sh &\n" in script
    assert "ci_runner_step 1 /scratch/ci/run-7/b/ci-runner-step.sh --time=00:02:00 &\n" in script
    assert script.count("  srun --quiet --exact") == 1 and "--exact --nodes=1 --ntasks=1" in script


def test_the_packed_script_passes_shellcheck(tmp_path: Path) -> None:
    _, _, script = packed(tmp_path, BASE.format(include="    - {kind: b, sbatch: {time: 2m}}"))
    (tmp_path / "packed.sh").write_text(script)
    done = subprocess.run([str(Path(sys.executable).parent / "shellcheck"), "-s", "bash", "-S", "warning",
                           str(tmp_path / "packed.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_a_resubmit_packs_only_its_steps_under_their_positions(tmp_path: Path) -> None:
    config, specs, _ = packed(tmp_path, BASE.format(include="    - {kind: b, sbatch: {time: 2m}}"))
    script = pack.packed_script(specs, "", [(), ()], steps=[1])
    assert "ci_runner_step 1 " in script and "ci_runner_step 0 " not in script and "echo a" not in script


def test_commands_holding_the_heredoc_delimiters_stay_data(tmp_path: Path) -> None:
    """A user's script that contains the labeller's and its own delimiter lines cannot end them early."""
    config, specs, _ = packed(tmp_path, BASE.format(include="    - {kind: b, sbatch: {time: 2m}}"))
    label = pack.heredoc_delimiter(pack.LABELLER)
    evil = specs[0].commands + f"{label}\necho escaped\n"
    nasty = JobSpec(entry=specs[0].entry, header="", commands=evil, layout=specs[0].layout, env={})
    script = pack.packed_script([nasty], "", [()])
    delimiter = pack.heredoc_delimiter(evil + "\n" if not evil.endswith("\n") else evil)
    assert f"<<'{delimiter}'\n{evil}{delimiter}\n" in script
    path = tmp_path / "packed.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, timeout=10).returncode == 0


# ------------------------------------------------------------------------------------- the labeller


def label(data: bytes, step: int = 3, status: int | None = None) -> bytes:
    """The labeller's records for `data` (as a step's output, or with `status` as srun's messages)."""
    args = ["perl", "-e", pack.LABELLER, str(step)] + ([] if status is None else [str(status)])
    done = subprocess.run(args, input=data, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_lines_pieces_and_the_end_record() -> None:
    assert label(b"one\ntwo\n\nlast") == b"3|one\n3|two\n3|\n3+last\n"
    assert label(b"", status=0) == b"3!0 exited\n"
    # srun's own "Exited with exit code" repeats the entry's job-end line: left out; other messages stay
    assert label(b"srun: error: vm: task 0: Exited with exit code 3\n", status=3) == b"3!3 exited\n"
    assert label(b"srun: Job 12 step creation temporarily disabled, retrying\n", status=0) == \
        b"3|srun: Job 12 step creation temporarily disabled, retrying\n3!0 exited\n"


def test_the_end_record_carries_the_step_s_seconds_and_the_demux_reads_them() -> None:
    records = subprocess.run(["perl", "-e", pack.LABELLER, "3", "0", "42"], input=b"", capture_output=True,
                             timeout=30).stdout
    assert records == b"3!0 exited 42\n"
    assert pack.StreamDemux([3]).feed(records.decode()).ends == (pack.StepEnd(3, 0, "exited", 42),)


@pytest.mark.parametrize("said, status, how", [
    (b"slurmstepd-vm: error: *** STEP 12.3 ON vm CANCELLED AT 2026-12-01T17:08:29 DUE TO TIME LIMIT ***\n"
     b"srun: error: vm: task 0: Terminated\n", 143, "time-limit"),
    (b"srun: error: vm: task 0: Terminated\n", 143, "signal 15"),
    (b"srun: error: vm: task 0: Killed\n", 137, "signal 9"),
    (b"srun: error: vm: task 0: Exited with exit code 143\n", 143, "exited"),
    (b"srun: error: Unable to create step for job 12: More processors requested than permitted\n", 1, "not-started"),
])
def test_how_a_step_ended_comes_from_srun_s_own_messages(said: bytes, status: int, how: str) -> None:
    assert label(said, status=status).endswith(f"3!{status} {how}\n".encode())


def test_every_record_fits_one_pipe_write_and_long_lines_are_cut_between_characters() -> None:
    text = ("x" + "é€😀" * 3000 + "\n").encode() + b"a" * 9000 + b"\n" + b"\xff\xfe" * 3000 + b"\n"
    records = label(text, step=12345).split(b"\n")[:-1]
    assert all(len(r) + 1 <= pack.PIPE_BUF for r in records)
    for record in records:
        body = record[6:]
        if record.startswith(b"12345+") and not body.startswith(b"\xff"):
            body.decode()  # valid UTF-8 in, valid UTF-8 pieces out
    demux = pack.StreamDemux([12345])
    out = demux.feed(b"\n".join(records).decode("utf-8", "surrogateescape") + "\n")
    assert out.text[12345].encode("utf-8", "surrogateescape") == text and out.job_text == ""


def test_a_line_arrives_as_soon_as_it_is_complete(tmp_path: Path) -> None:
    """The labeller writes a line's record before its input ends (a CI log streams live)."""
    with subprocess.Popen(["perl", "-e", pack.LABELLER, "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"first\nsecond, still open")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"0|first\n"
        proc.stdin.close()
        assert proc.stdout.read() == b"0+second, still open\n"


# ------------------------------------------------------------------------------------------ demux

SAMPLE = ("0|é line of zero\n1+no newline\n0+piece 😀 one \n0|and its end\n"
          "slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-12-01T10:00:00 DUE TO TIME LIMIT ***\n"
          "1!0 exited\n7|step seven is not ours\n0!nonsense\n0!143 time-limit\n"
          f"{JOB_END_LINE}1\nno newline at the end")


def _whole(demux: pack.StreamDemux, pieces: list[str]) -> tuple[dict[int, str], list[pack.StepEnd], str]:
    text: dict[int, str] = {}
    ends: list[pack.StepEnd] = []
    job = ""
    for out in [demux.feed(piece) for piece in pieces] + [demux.finish()]:
        for step, part in out.text.items():
            text[step] = text.get(step, "") + part
        ends += out.ends
        job += out.job_text
    return text, ends, job


def test_the_demux_splits_entries_ends_and_job_lines() -> None:
    text, ends, job = _whole(pack.StreamDemux([0, 1]), [SAMPLE])
    assert text == {0: "é line of zero\npiece 😀 one and its end\n", 1: "no newline"}
    assert ends == [pack.StepEnd(1, 0, "exited"), pack.StepEnd(0, 143, "time-limit")]
    assert job == ("slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-12-01T10:00:00 DUE TO TIME LIMIT ***\n"
                   f"7|step seven is not ours\n0!nonsense\n{JOB_END_LINE}1\nno newline at the end")


def test_every_cut_point_gives_the_same_result() -> None:
    whole = _whole(pack.StreamDemux([0, 1]), [SAMPLE])
    for cut in range(len(SAMPLE) + 1):
        assert _whole(pack.StreamDemux([0, 1]), [SAMPLE[:cut], SAMPLE[cut:]]) == whole, cut
    assert _whole(pack.StreamDemux([0, 1]), list(SAMPLE)) == whole


def test_a_feed_reports_only_what_it_completed() -> None:
    demux = pack.StreamDemux([0])
    assert demux.feed("0|par") == pack.Demuxed()
    assert demux.feed("t\n0!") == pack.Demuxed({0: "part\n"})
    assert demux.feed("0 exited\n").ends == (pack.StepEnd(0, 0, "exited"),)


# ---------------------------------------------------------------------------------------- verdicts

@pytest.mark.parametrize("end, state, outcome, words", [
    (pack.StepEnd(0, 0, "exited"), "COMPLETED", Outcome.PASSED, "COMPLETED"),
    (pack.StepEnd(0, 3, "exited"), "FAILED", Outcome.FAILED, "exit code 3"),
    (pack.StepEnd(0, 137, "signal 9"), "COMPLETED", Outcome.FAILED, "signal 9"),
    (pack.StepEnd(0, 143, "time-limit"), "COMPLETED", Outcome.TIMEOUT, "step's time limit"),
    (pack.StepEnd(0, 1, "not-started"), "COMPLETED", Outcome.INFRA, "could not start"),
    (pack.StepEnd(0, 199, "exited"), "COMPLETED", Outcome.INFRA, "checkout failed"),
    (None, "TIMEOUT", Outcome.TIMEOUT, "allocation ended before the entry finished"),
    (None, "NODE_FAIL", Outcome.INFRA, "allocation ended before the entry finished"),
    (None, "PREEMPTED", Outcome.INFRA, "allocation ended before the entry finished"),
    (None, "CANCELLED by 0", Outcome.INFRA, "cancelled outside ci-runner"),
    (None, "COMPLETED", Outcome.INFRA, "without the entry's end record"),
    (pack.StepEnd(0, 1, "not-started"), "CANCELLED by 0", Outcome.INFRA, "cancelled outside ci-runner"),
    (pack.StepEnd(0, 143, "signal 15"), "TIMEOUT", Outcome.TIMEOUT, "allocation ended before the entry finished"),
    (pack.StepEnd(0, 143, "time-limit"), "TIMEOUT", Outcome.TIMEOUT, "step's time limit"),
    (pack.StepEnd(0, 3, "exited"), "TIMEOUT", Outcome.FAILED, "exit code 3"),
    (pack.StepEnd(0, 1, "not-started"), None, Outcome.INFRA, "could not start"),
    (pack.StepEnd(0, 0, "exited"), None, Outcome.PASSED, "COMPLETED"),
])
def test_entry_verdict(end: pack.StepEnd | None, state: str | None, outcome: Outcome, words: str) -> None:
    verdict = pack.entry_verdict(end, state)
    assert verdict.outcome is outcome and words in verdict.summary


def test_a_ci_cancel_of_the_allocation_cancels_the_unfinished_entries() -> None:
    assert pack.entry_verdict(None, "CANCELLED by 0", ci_cancelled=True).outcome is Outcome.CANCELLED
    assert pack.entry_verdict(pack.StepEnd(0, 0, "exited"), "CANCELLED", ci_cancelled=True).outcome is Outcome.PASSED
    assert pack.entry_verdict(pack.StepEnd(0, 1, "not-started"), "CANCELLED", ci_cancelled=True).outcome \
        is Outcome.CANCELLED  # a step still waiting when the job was cancelled
    with pytest.raises(ValueError):
        pack.entry_verdict(None, None)


def test_the_job_s_end_line_is_known_only_when_it_is_the_last_thing_read() -> None:
    demux = pack.StreamDemux(range(2))
    ending = demux.feed(f"0|a\n1!0 exited 1\n{JOB_END_LINE}1\n")
    assert pack.job_end_status(ending.job_text) == 1
    assert pack.job_end_status(f"{JOB_END_LINE}0\nslurmstepd: error: *** JOB 7 ON vm CANCELLED ***\n") is None
    assert pack.job_end_status(f"{JOB_END_LINE}0") is None  # the line not whole yet
    assert pack.job_end_status("") is None
    assert pack.job_end_status(demux.feed(f"0|{JOB_END_LINE}0\n").job_text) is None  # an entry's line, not the job's


@pytest.mark.parametrize("end, state, exit_code, signal, complete", [
    (0, "COMPLETED", 0, None, True),
    (1, "FAILED", 1, None, True),
    (None, "COMPLETED", 0, None, False),          # the end line not read last: the listing says what follows
    (0, "FAILED", 1, None, False),                # another status than the line's
    (0, "OUT_OF_MEMORY", 0, None, False),         # Slurm ended it otherwise, and may have written why
    (0, "CANCELLED by 1000", 0, 15, False),
    (0, "TIMEOUT", 0, None, False),
    (0, "NODE_FAIL", 0, None, False),
    (0, "COMPLETED", 0, 9, False),
])
def test_a_packed_stream_read_to_its_end_line_is_complete_when_the_final_state_agrees(
        end: int | None, state: str, exit_code: int, signal: int | None, complete: bool) -> None:
    assert pack.stream_complete(end, state, exit_code, signal) is complete


@pytest.mark.parametrize("size", [4090, 4091, 4092, 4093, 8183, 8184, 8185])
def test_lines_at_the_record_size_round_trip(size: int) -> None:
    """Step 12345: a record holds 4089 bytes of text; a 4-byte character sits across every cut."""
    for line in (b"x" * size + b"\n", b"x" * (size - 4) + "😀".encode() + b"\n", b"x" * size):
        records = label(line, step=12345)
        assert all(len(r) + 1 <= pack.PIPE_BUF for r in records.split(b"\n")[:-1])
        text = pack.StreamDemux([12345]).feed(records.decode()).text[12345]
        assert text.encode() == line


def _fake_srun(tmp_path: Path) -> dict[str, str]:
    """PATH with an `srun` that drops its options, runs the step's command here and reports an exit as
    srun does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [ "${1#-}" != "$1" ]; do shift; done\n"$@"\ns=$?\n'
                                  '[ $s = 0 ] || echo "srun: error: here: task 0: Exited with exit code $s" >&2\n'
                                  'exit $s\n')
    (bin_dir / "srun").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}


def test_the_packed_script_runs_every_step_and_ends_with_its_own_line(tmp_path: Path) -> None:
    text = BASE.format(include="    - {kind: b, sbatch: {time: 2m}}").replace("echo {{ kind }}",
                                                                              "echo {{ kind }}; [ {{ kind }} = a ]")
    _, specs, script = packed(tmp_path, text, workdir=str(tmp_path / "work"))
    (tmp_path / "packed.sh").write_text(script)
    done = subprocess.run(["bash", str(tmp_path / "packed.sh")], capture_output=True, env=_fake_srun(tmp_path),
                          timeout=60)
    assert done.returncode == 1 and done.stderr == b""
    out = pack.StreamDemux([0, 1]).feed(done.stdout.decode())
    assert out.text == {0: f"a\n{JOB_END_LINE}0\n", 1: f"b\n{JOB_END_LINE}1\n"}  # srun's "Exited ..." left out
    assert sorted((end.step, end.status, end.how) for end in out.ends) == [(0, 0, "exited"), (1, 1, "exited")]
    assert out.job_text == f"{JOB_END_LINE}1\n"


def test_a_step_script_that_cannot_be_written_ends_its_entry_at_once(tmp_path: Path) -> None:
    _, specs, script = packed(tmp_path, BASE.format(include="    - {kind: b, sbatch: {time: 2m}}"),
                              workdir=str(tmp_path / "work"))
    Path(specs[0].layout.root).parent.mkdir(parents=True)
    Path(specs[0].layout.root).write_text("a file where the entry's directory should be")
    (tmp_path / "packed.sh").write_text(script)
    done = subprocess.run(["bash", str(tmp_path / "packed.sh")], capture_output=True, env=_fake_srun(tmp_path),
                          timeout=60)
    out = pack.StreamDemux([0, 1]).feed(done.stdout.decode())
    assert done.returncode == 1
    assert f"cannot write the step script {specs[0].layout.step_script}\n" in out.text[0]
    assert sorted((end.step, end.status, end.how) for end in out.ends) == [(0, 1, "not-started"), (1, 0, "exited")]


# -- the run's packed jobs (job_spec.submissions, pack.submitted_script, sbatch_header.pack_notes)

SYSTEMS = """\
version: 1
system: alps
checkout: none
pack: true
sbatch: {ntasks: 2, time: 10m}
matrix:
  cc: [gcc, clang]
  system: [alps, eiger]
  include:
    - {cc: clang, system: eiger, sbatch: {cpus-per-task: 4}}
script: echo {{ cc }}
"""


def test_entries_on_different_systems_are_packed_per_system_each_with_its_own_script(tmp_path: Path) -> None:
    (tmp_path / "ci.yml").write_text(SYSTEMS)
    config = load(tmp_path / "ci.yml")
    specs = job_scripts(config, expand(config), CI, "/scratch/ci", {}, pack=config.pack)
    submits = submissions(specs)
    assert [(s.is_pack, [spec.entry.name for spec in s.specs]) for s in submits] == [
        (True, ["gcc-alps", "clang-alps"]), (True, ["gcc-eiger", "clang-eiger"])]
    for number, submission in enumerate(submits):
        script = pack.submitted_script(submission)
        assert f"#SBATCH --output=/scratch/ci/run-7/output/pack+{number}.%j.out" in script
        assert script.count("ci_runner_step ") == 2 and "#SBATCH --ntasks=2" in script
    assert "--cpus-per-task=4" in pack.submitted_script(submits[1])
    assert "--cpus-per-task=4" not in pack.submitted_script(submits[0])
    with pytest.raises(ValueError):
        submits[0].script  # noqa: B018  (a packed job's script is pack.submitted_script's)


def test_the_log_says_when_steps_wait_inside_the_allocation_and_when_one_cannot_start(tmp_path: Path) -> None:
    (tmp_path / "ci.yml").write_text(SYSTEMS)
    config = load(tmp_path / "ci.yml")
    specs = job_scripts(config, expand(config), CI, "/scratch/ci", {}, pack=True)
    notes = sbatch_header.pack_notes(config, specs)
    assert notes[0] == "packed job 0 (system alps): 2 entries as the steps of one allocation"  # 2 CPUs, 2 steps
    assert notes[1].startswith("packed job 1 (system eiger): 2 entries as the steps of one allocation; ")
    assert "clang-eiger ask(s) for more CPUs than its 2: their steps cannot start" in notes[1]
    (tmp_path / "ci.yml").write_text(SYSTEMS.replace("cpus-per-task: 4", "cpus-per-task: 2"))
    config = load(tmp_path / "ci.yml")
    notes = sbatch_header.pack_notes(config, job_scripts(config, expand(config), CI, "/scratch/ci", {}, pack=True))
    assert notes[1].endswith("of 2 CPUs; together they need 3: steps that do not fit wait inside it for the others")
    assert sbatch_header.pack_notes(config, job_scripts(config, expand(config), CI, "/scratch/ci", {})) == []
