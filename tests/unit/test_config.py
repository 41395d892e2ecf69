"""config.load: valid files become typed Config; every kind of mistake is reported at file:line:col."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from ci_runner import config, config_defaults
from ci_runner.config import Config, ConfigError, load
from ci_runner.units import InvalidDuration, InvalidSize, format_size, parse_duration, parse_size, slurm_time

BODY = "script: echo hi\n"


def write(tmp_path: Path, text: str, name: str = ".ci-runner.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    return str(caught.value).splitlines()


# ---------------------------------------------------------------------------------- valid files


def test_full_config_loads_into_typed_fields(tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "job.sh.j2").write_text("echo {{ compiler }}\n")
    path = write(tmp_path, """\
        version: 1
        system: daint
        account: g123
        workdir: /scratch/me/ci
        checkout: upload
        queue_timeout: 1h30m
        sbatch: {partition: normal, time: "90m", nodes: 1, exclusive: true}
        matrix:
          compiler: [gcc, nvhpc]
          ranks: [1, 4]
          exclude: [{compiler: nvhpc, ranks: 4}]
          include: [{compiler: cray, ranks: 2, sbatch: {partition: debug, time: 2d}}]
          max_entries: 10
        env: {OMP_NUM_THREADS: 2, NAME: x}
        pass_env: [GITHUB_ACTOR]
        template: ci/job.sh.j2
        artifacts: ["results/*.xml", "logs/**"]
        junit: "results/*.xml"
        requests_per_minute: 30
        api_retry_limit: 5m
        resubmit: 2
        cleanup: true
        """)
    loaded = load(path)
    assert isinstance(loaded, Config)
    assert loaded.path == path
    assert (loaded.system, loaded.account, loaded.workdir, loaded.checkout) == ("daint", "g123", "/scratch/me/ci", "upload")
    assert loaded.queue_timeout == 5400.0
    assert loaded.sbatch == {"partition": "normal", "time": "01:30:00", "nodes": 1, "exclusive": True}
    assert loaded.matrix.axes == (("compiler", ("gcc", "nvhpc")), ("ranks", (1, 4)))
    assert loaded.matrix.exclude == ({"compiler": "nvhpc", "ranks": 4},)
    assert loaded.matrix.include == ({"compiler": "cray", "ranks": 2, "sbatch": {"partition": "debug", "time": "2-00:00:00"}},)
    assert loaded.matrix.max_entries == 10
    assert loaded.env == {"OMP_NUM_THREADS": "2", "NAME": "x"}
    assert loaded.pass_env == ("GITHUB_ACTOR",)
    assert loaded.script is None
    assert loaded.template == (tmp_path / "ci" / "job.sh.j2").resolve() and loaded.template.is_absolute()
    assert loaded.artifacts == ("results/*.xml", "logs/**")
    assert loaded.junit == ("results/*.xml",)
    assert (loaded.requests_per_minute, loaded.resubmit, loaded.cleanup) == (30, 2, True)
    assert loaded.api_retry_limit == 300.0


def test_defaults(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, "version: 1\nsystem: daint\n" + BODY))
    assert loaded.script == "echo hi"
    assert loaded.checkout == "clone" and loaded.queue_timeout is None and loaded.sbatch == {}
    assert loaded.matrix == config.MatrixSpec()
    assert loaded.requests_per_minute == config_defaults.DEFAULT_REQUESTS_PER_MINUTE
    assert loaded.junit == () and loaded.artifacts == () and loaded.env == {}
    assert loaded.max_output == config_defaults.DEFAULT_MAX_OUTPUT == 256 * 1024 * 1024
    assert loaded.api_retry_limit == config_defaults.DEFAULT_API_RETRY_LIMIT == 120.0


def test_system_may_come_from_the_matrix(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, "version: 1\nmatrix: {system: [daint, eiger]}\n" + BODY))
    assert loaded.system == ""
    assert loaded.matrix.axes == (("system", ("daint", "eiger")),)


def test_yaml_11_surprises_are_kept_as_written(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, """\
        version: 1
        system: daint
        queue_timeout: 1:30
        sbatch: {time: 1:30:00}
        matrix: {clock: [1:30, 2024-01-01]}
        """ + BODY))
    assert loaded.queue_timeout == 90.0            # MM:SS, not YAML's base-60 integer surprise
    assert loaded.sbatch["time"] == "01:30:00"
    assert loaded.matrix.axes == (("clock", ("1:30", "2024-01-01")),)


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, """\
        version: 1
        system: daint
        sbatch: &base {partition: normal, nodes: 1}
        matrix:
          mode: [a]
          include: [{mode: a, sbatch: {<<: *base, nodes: 2}}]
        """ + BODY))
    assert loaded.matrix.include == ({"mode": "a", "sbatch": {"partition": "normal", "nodes": 2}},)


# ------------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2h", 7200), ("1d", 86400), ("1h1m1s", 3661),
    ("01:30:00", 5400), ("00:15:00", 900), ("15:00", 900), ("90:00", 5400), ("1-00:00:00", 86400),
    ("2-12", 216000), ("120", 120), (45, 45), (" 2H ", 7200), ("0", 0),
])
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == float(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1.5h", "1h 30m", "m", "-5", "00:60:00", "00:00:61", "1-24:00:00",
                                  "1:2:3:4", "30x", True, None, 1.5, -3])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(InvalidDuration) as caught:
        parse_duration(text)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ConfigError)
    assert "expected a duration" in str(caught.value)


@pytest.mark.parametrize(("seconds", "text"), [
    (60, "00:01:00"), (5400, "01:30:00"), (86399, "23:59:59"), (86400, "1-00:00:00"),
    (90061, "1-01:01:01"), (0.2, "00:00:01"),
])
def test_slurm_time(seconds: float, text: str) -> None:
    assert slurm_time(seconds) == text


# ---------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(("text", "size"), [
    ("64MiB", 64 << 20), ("512KiB", 512 << 10), ("1GiB", 1 << 30), ("100MB", 100_000_000), ("1024", 1024),
    (4096, 4096), ("2kb", 2000), (" 3 MiB ", 3 << 20), ("10B", 10), ("1TiB", 1 << 40),
])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "1.5GiB", "-1", "10 parsecs", "1Mi", "1 M B", True, None, 1.5, -3])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(InvalidSize) as caught:
        parse_size(text)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError) and "expected a size like 64MiB" in str(caught.value)


def test_format_size() -> None:
    assert [format_size(n) for n in (256 << 20, 1 << 30, 1536, 1000, 0)] == [
        "256 MiB", "1 GiB", "1536 bytes", "1000 bytes", "0 bytes"]


@pytest.mark.parametrize(("value", "size"), [("64MiB", 64 << 20), ("1KiB", 1024), (2048, 2048), ("1GiB", 1 << 30)])
def test_max_output_loads_as_bytes(tmp_path: Path, value: object, size: int) -> None:
    assert load(write(tmp_path, f"version: 1\nsystem: daint\nmax_output: {value}\n" + BODY)).max_output == size


# ------------------------------------------------------------------------- errors at file:line:col

HEAD = "version: 1\nsystem: daint\n"

# (config text, expected "line:col", expected part of the message). Each mistake is alone in its file.
BAD = [
    pytest.param("system: daint\n" + BODY, "1:1", "missing required key 'version'", id="missing-version"),
    pytest.param("version: 2\nsystem: daint\n" + BODY, "1:10", "version: expected 1", id="version-2"),
    pytest.param("version: 1\n" + BODY, "1:1", "missing required key 'system'", id="missing-system"),
    pytest.param(HEAD, "1:1", "missing the job body", id="missing-body"),
    pytest.param(HEAD + BODY + "template: job.j2\n", "4:1", "either `script` or `template`", id="script-and-template"),
    pytest.param(HEAD + "template: nope.j2\n", "3:11", "template file 'nope.j2' not found", id="template-missing"),
    pytest.param(HEAD + BODY + "sytem: x\n", "4:1", "sytem: unknown key; did you mean 'system'?", id="unknown-key"),
    pytest.param(HEAD + BODY + "colour: x\n", "4:1", "unknown key (expected one of: version", id="unknown-key-list"),
    pytest.param(HEAD + BODY + "checkout: cloen\n", "4:11", "did you mean 'clone'?", id="enum"),
    pytest.param(HEAD + BODY + "checkout: no\n", "4:11", "got a boolean (false)", id="enum-yaml-bool"),
    pytest.param(HEAD + BODY + "account: [a]\n", "4:10", "account: expected a string, got a list", id="type"),
    pytest.param(HEAD + BODY + "system2: x\n", "4:1", "did you mean 'system'?", id="unknown-similar"),
    pytest.param(HEAD + BODY + "workdir: scratch/ci\n", "4:10", "expected an absolute path", id="workdir-relative"),
    pytest.param(HEAD + BODY + "queue_timeout: soon\n", "4:16", "queue_timeout: expected a duration", id="duration"),
    pytest.param(HEAD + BODY + "queue_timeout: 0s\n", "4:16", "greater than zero", id="duration-zero"),
    pytest.param(HEAD + BODY + "api_retry_limit: 0\n", "4:18", "greater than zero", id="retry-limit-zero"),
    pytest.param(HEAD + BODY + "api_retry_limit: forever\n", "4:18", "api_retry_limit: expected a duration",
                 id="retry-limit-word"),
    pytest.param(HEAD + BODY + "queue_timeout: 1.5\n", "4:16", "expected a string or an integer", id="duration-float"),
    pytest.param(HEAD + BODY + "sbatch: {output: x}\n", "4:10", "sbatch.output: set by ci-runner", id="sbatch-reserved"),
    pytest.param(HEAD + BODY + "sbatch:\n  job-name: x\n", "5:3", "sbatch.job-name: set by ci-runner", id="sbatch-job-name"),
    pytest.param(HEAD + BODY + "sbatch:\n  --partition: x\n", "5:3", "long sbatch option name", id="sbatch-dashes"),
    pytest.param(HEAD + BODY + "sbatch:\n  cpus_per_task: 2\n", "5:3", "long sbatch option name", id="sbatch-underscore"),
    pytest.param(HEAD + BODY + "sbatch:\n  p: debug\n", "5:3", "long sbatch option name", id="sbatch-short"),
    pytest.param(HEAD + BODY + "sbatch:\n  comment: \"a b\"\n", "5:12", "without spaces", id="sbatch-space"),
    pytest.param(HEAD + BODY + "sbatch:\n  comment: \"a\\nb\"\n", "5:12", "without spaces", id="sbatch-newline"),
    pytest.param(HEAD + BODY + "sbatch:\n  comment: \"a\\0b\"\n", "5:12", "without spaces", id="sbatch-nul"),
    pytest.param(HEAD + BODY + "sbatch:\n  comment: \"it's\"\n", "5:12", "without spaces, quotes", id="sbatch-quote"),
    pytest.param(HEAD + BODY + "sbatch:\n  partition: [a]\n", "5:14", "expected a single value", id="sbatch-list"),
    pytest.param(HEAD + BODY + "sbatch:\n  time: 15\n", "5:9", "ambiguous bare number", id="sbatch-time-bare"),
    pytest.param(HEAD + BODY + "sbatch:\n  time: \"15\"\n", "5:9", "ambiguous bare number", id="sbatch-time-bare-str"),
    pytest.param(HEAD + BODY + "sbatch:\n  time: forever\n", "5:9", "sbatch.time: expected a duration", id="sbatch-time"),
    pytest.param(HEAD + BODY + "env:\n  1BAD: x\n", "5:3", "env.1BAD: invalid name", id="env-name"),
    pytest.param(HEAD + BODY + "env:\n  CI_RUNNER_SHA: x\n", "5:3", "not starting with a digit or CI_RUNNER_", id="env-ours"),
    pytest.param(HEAD + BODY + "env:\n  FLAG: yes\n", "5:9", "got a boolean (true)", id="env-bool"),
    pytest.param(HEAD + BODY + "env:\n  V: \"a\\0b\"\n", "5:6", "without NUL", id="env-nul"),
    pytest.param(HEAD + BODY + "pass_env: [GOOD, bad-name]\n", "4:18", "pass_env[1]: expected an environment", id="pass-env"),
    pytest.param(HEAD + BODY + "pass_env: [A, A]\n", "4:15", "pass_env[1]: duplicate value 'A'", id="pass-env-dup"),
    pytest.param(HEAD + BODY + "artifacts: [/etc/passwd]\n", "4:13", "relative to the checkout", id="artifact-abs"),
    pytest.param(HEAD + BODY + "artifacts:\n  - ok/*.xml\n  - a/../../b\n", "6:5", "'..' is not allowed", id="artifact-dotdot"),
    pytest.param(HEAD + BODY + "junit: ../x.xml\n", "4:8", "junit: '..' is not allowed", id="junit-dotdot"),
    pytest.param(HEAD + BODY + "junit: [~/x.xml]\n", "4:9", "junit[0]: expected a path relative", id="junit-home"),
    pytest.param(HEAD + BODY + "junit: 3\n", "4:8", "expected a string or a list", id="junit-type"),
    pytest.param(HEAD + BODY + "requests_per_minute: 0\n", "4:22", "expected at least 1", id="rpm-zero"),
    pytest.param(HEAD + BODY + "resubmit: 6\n", "4:11", "expected at most 5", id="resubmit"),
    pytest.param(HEAD + BODY + "cleanup: \"yes\"\n", "4:10", "expected true or false", id="cleanup"),
    pytest.param(HEAD + BODY + "matrix:\n  cc: gcc\n", "5:7", "matrix.cc: expected a list", id="axis-not-list"),
    pytest.param(HEAD + BODY + "matrix:\n  cc: []\n", "5:7", "must not be empty", id="axis-empty"),
    pytest.param(HEAD + BODY + "matrix:\n  cc: [gcc, gcc]\n", "5:13", "duplicate value 'gcc'", id="axis-dup"),
    pytest.param(HEAD + BODY + "matrix:\n  cc: [[gcc]]\n", "5:8", "matrix.cc[0]: expected a single value", id="axis-nested"),
    pytest.param(HEAD + BODY + "matrix:\n  entry: [a]\n", "5:3", "reserved in templates", id="axis-reserved"),
    pytest.param(HEAD + BODY + "matrix:\n  my-axis: [a]\n", "5:3", "invalid name", id="axis-name"),
    pytest.param(HEAD + BODY + "matrix:\n  system: [\"a b\"]\n", "5:12", "expected a system name", id="axis-system"),
    pytest.param(HEAD + BODY + "matrix:\n  cc: [a]\n  exlude: [{cc: a}]\n", "6:3", "did you mean 'exclude'?", id="keyword-typo"),
    pytest.param(HEAD + BODY + "matrix:\n  cc: [a]\n  max_entries: 0\n", "6:16", "expected at least 1", id="max-entries"),
    pytest.param(HEAD + BODY + "matrix:\n  cc: [a, b]\n  exclude: [{c: a}]\n", "6:14", "exclude[0].c: not a matrix axis; did you mean 'cc'?",
                 id="exclude-unknown-axis"),
    pytest.param(HEAD + BODY + "matrix:\n  n: [1, 4]\n  exclude: [{n: \"4\"}]\n", "6:17", "check quoting", id="exclude-quoting"),
    pytest.param(HEAD + BODY + "matrix:\n  n: [1, 4]\n  exclude: [{n: 5}]\n", "6:17", "matches nothing", id="exclude-nothing"),
    pytest.param(HEAD + BODY + "matrix:\n  n: [1]\n  exclude: [{}]\n", "6:13", "must not be empty", id="exclude-empty"),
    pytest.param(HEAD + BODY + "matrix:\n  n: [1]\n  include: [{n: [2]}]\n", "6:17", "include[0].n: expected a single value", id="include-list"),
    pytest.param(HEAD + BODY + "matrix:\n  n: [1]\n  include: [{n: 2, sbatch: {output: x}}]\n", "6:29", "include[0].sbatch.output: set by",
                 id="include-sbatch-reserved"),
    pytest.param(HEAD + BODY + "matrix:\n  n: [1]\n  include: [{n: 2, sbatch: {time: 7}}]\n", "6:35", "ambiguous bare number",
                 id="include-sbatch-time"),
    pytest.param(HEAD + BODY + "matrix:\n  n: [1]\n  include: [{ci: 2}]\n", "6:14", "reserved in templates", id="include-reserved"),
    pytest.param(HEAD + BODY + "matrix:\n  n: [1]\n  include: [{system: \"x y\"}]\n", "6:22", "expected a system name",
                 id="include-system"),
    pytest.param(HEAD + BODY + "system: eiger\n", "4:1", "duplicate key (first defined on line 2)", id="duplicate-key"),
    pytest.param(HEAD + BODY + "1: x\n", "4:1", "key '1' is read as an integer (1); quote it", id="int-key"),
    pytest.param(HEAD + BODY + "? [a]\n: x\n", "4:3", "keys must be plain text", id="list-key"),
    pytest.param(HEAD + "script: [echo\n", "4:1", "invalid YAML", id="unclosed-flow"),
    pytest.param(HEAD + BODY + "env:\n\tA: b\n", "5:1", "invalid YAML", id="tab"),
    pytest.param(HEAD + BODY + "system: *nothing\n", "4:9", "invalid YAML", id="unknown-alias"),
    pytest.param(HEAD + BODY + "workdir: !!python/object:os.system x\n", "4:10", "invalid YAML", id="python-tag"),
    pytest.param(HEAD + BODY + "---\nversion: 1\n", "4:1", "invalid YAML", id="two-documents"),
    pytest.param("- version: 1\n", "1:1", "expected a mapping of keys", id="top-level-list"),
    pytest.param("", "1:1", "the file is empty", id="empty"),
    pytest.param("# only a comment\n", "1:1", "the file is empty", id="only-comment"),
    pytest.param(HEAD + "max_output: lots\n" + BODY, "3:13",
                 "max_output: expected a size like 64MiB, 512KiB, 1GiB, 100MB or an integer number of bytes, "
                 "got 'lots'", id="max-output-word"),
    pytest.param(HEAD + "max_output: 1.5GiB\n" + BODY, "3:13", "max_output: expected a size like", id="max-output-fraction"),
    pytest.param(HEAD + "max_output: 512\n" + BODY, "3:13",
                 "max_output: expected at least 1 KiB (1024 bytes), got 512 bytes", id="max-output-too-small"),
    pytest.param(HEAD + "max_output: 100B\n" + BODY, "3:13", "expected at least 1 KiB", id="max-output-too-small-unit"),
    pytest.param(HEAD + "max_output: 1.5\n" + BODY, "3:13", "max_output: expected a string or an integer, got a number",
                 id="max-output-float"),
    pytest.param(HEAD + "max_output: true\n" + BODY, "3:13", "max_output: expected a string or an integer",
                 id="max-output-bool"),
]


@pytest.mark.parametrize(("text", "position", "message"), BAD)
def test_every_mistake_names_file_line_and_column(tmp_path: Path, text: str, position: str, message: str) -> None:
    (tmp_path / "job.j2").write_text("echo\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    first = str(caught.value).splitlines()[0]
    assert first.startswith(f"{path}:{position}: "), first
    assert message in first, first


def test_recursive_alias_is_an_error_not_a_hang(tmp_path: Path) -> None:
    lines = problems(tmp_path, HEAD + BODY + "env: &a {A: *a}\n")
    assert re.match(rf"{re.escape(str(tmp_path))}/\.ci-runner\.yml:\d+:\d+: ", lines[0]), lines


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for level in range(1, 8):
        bomb += f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]\n"
    lines = problems(tmp_path, "version: 1\nsystem: daint\n" + BODY + "matrix:\n" + textwrap.indent(bomb, "  "))
    assert "too many YAML nodes" in lines[0]


def test_not_utf8_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_bytes(b"version: 1\nsystem: d\xffaint\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:2:10: not valid UTF-8$"):
        load(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yml: no such file \(create it, or pass --config PATH\)"):
        load(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="is a directory"):
        load(tmp_path)


def test_all_problems_are_reported_sorted_one_per_line(tmp_path: Path) -> None:
    text = "version: 1\nsystem: daint\n" + BODY + "resubmit: 9\ncheckout: x\nsbatch: {output: o}\nfoo: 1\n"
    first = problems(tmp_path, text)
    assert [line.split(": ", 1)[0].rsplit(":", 2)[1:] for line in first] == [["4", "11"], ["5", "11"], ["6", "10"], ["7", "1"]]
    assert problems(tmp_path, text) == first  # deterministic


def test_problem_list_is_capped(tmp_path: Path) -> None:
    text = "version: 1\nsystem: daint\n" + BODY + "".join(f"unknown{i}: 1\n" for i in range(25))
    lines = problems(tmp_path, text)
    assert len(lines) == config.MAX_REPORTED + 1
    assert lines[-1].endswith(f"... and {25 - config.MAX_REPORTED} more problems")


# ---------------------------------------------------------------------------------- pack mode

PACKED = """\
    version: 1
    system: daint
    pack: true
    sbatch: {partition: normal, ntasks: 4, time: 30m}
    matrix:
      cc: [gcc, clang]
      include:
        - cc: gcc
          sbatch: {%s}
    script: echo hi
    """


@pytest.mark.parametrize("options", ["cpus-per-task: 2", "mem: 4G", "gpus: 1", "time: 5m", "constraint: gpu",
                                      "partition: normal", "ntasks: 4"])  # the last two repeat the allocation's
def test_pack_lets_an_include_set_what_a_job_step_can(tmp_path: Path, options: str) -> None:
    assert load(write(tmp_path, PACKED % options)).pack is True


@pytest.mark.parametrize("options, name, why", [
    ("partition: debug", "partition", "a step runs in the allocation's partition; set it in the top-level sbatch"),
    ("nodes: 2", "nodes", "a packed entry runs on one node of the allocation"),
    ("ntasks: 2", "ntasks", "run once, as the one task of its job step"),
    ("qos: high", "qos", "under the allocation's QOS"),
    ("mail-type: END", "mail-type", "srun applies it to job allocations only"),
])
def test_pack_refuses_an_include_option_no_job_step_can_set_at_its_line(tmp_path: Path, options: str, name: str,
                                                                        why: str) -> None:
    found = problems(tmp_path, PACKED % options)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / '.ci-runner.yml'}:9:"), found  # the include's sbatch line
    assert f"matrix.include[0].sbatch.{name}: not a job step option (pack: true): " in found[0] and why in found[0]


def test_without_pack_an_include_may_set_any_option(tmp_path: Path) -> None:
    assert load(write(tmp_path, PACKED.replace("pack: true", "pack: false") % "partition: debug")).pack is False
