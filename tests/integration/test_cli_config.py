"""`ci-runner validate|matrix|render` as a user runs them: a real process, real git repo, exit codes, stderr."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILD_NUMBER", "JENKINS_HOME")


def clean_env() -> dict[str, str]:
    """The caller's environment without CI markers, so `ci.detect` reads the local git checkout."""
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES and not k.startswith(("GITHUB_", "CI_"))}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    return env


def ci_runner(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`ci-runner ARGS` in `cwd` with `clean_env()` plus `env`."""
    return subprocess.run([sys.executable, "-c", "from ci_runner.cli import main; main()", *args], cwd=cwd,
                          env={**clean_env(), **(env or {})}, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit, as a project using ci-runner would have."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "README.md").write_text("project\n")
    for command in (["init", "-q", "-b", "main"], ["add", "README.md"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *command], cwd=root, env=clean_env(), check=True, capture_output=True)
    return root


def write_config(root: Path, text: str, name: str = ".ci-runner.yml") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


MATRIX = """\
    version: 1
    system: daint
    sbatch: {partition: normal, time: 10m}
    matrix:
      cc: [gcc, cray]
      n: [1, 4]
      exclude: [{cc: cray, n: 4}]
      include: [{cc: nvhpc, n: 2, sbatch: {partition: gpu}}]
    script: echo {{ cc }} {{ n }}
    """


def assert_user_error(done: subprocess.CompletedProcess[str], first_line_start: str) -> None:
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(first_line_start), done.stderr
    assert done.stdout == ""


# ----------------------------------------------------------------------------------------- validate


def test_validate_ok_with_default_path(repo: Path) -> None:
    write_config(repo, MATRIX)
    done = ci_runner("validate", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ".ci-runner.yml: OK, 4 entries: gcc-1, gcc-4, cray-1, nvhpc-2\n"


def test_validate_reports_config_errors_with_exit_2(repo: Path) -> None:
    write_config(repo, "version: 1\nsytem: daint\nscript: x\nsbatch: {output: o}\n", "bad.yml")
    done = ci_runner("validate", "--config", "bad.yml", cwd=repo)
    assert_user_error(done, "ci-runner: error: bad.yml:1:1: missing required key 'system'")
    assert "bad.yml:2:1: sytem: unknown key; did you mean 'system'?" in done.stderr
    assert "bad.yml:4:10: sbatch.output: set by ci-runner" in done.stderr


@pytest.mark.parametrize(("text", "start"), [
    ("version: 1\nsystem: [\n", "ci-runner: error: c.yml:3:1: invalid YAML"),
    ("version: 1\nsystem: d\nscript: x\nmatrix: {a: [1], exclude: [{a: 1}]}\n",
     "ci-runner: error: c.yml:4:1: matrix: expands to zero entries"),
])
def test_validate_malformed_and_empty_matrix(repo: Path, text: str, start: str) -> None:
    write_config(repo, text, "c.yml")
    assert_user_error(ci_runner("validate", "--config", "c.yml", cwd=repo), start)


def test_validate_missing_file(repo: Path) -> None:
    assert_user_error(ci_runner("validate", cwd=repo),
                      "ci-runner: error: .ci-runner.yml: no such file (create it, or pass --config PATH)")


@pytest.mark.parametrize("example", ["minimal.yml", "realistic.yml", "reframe/.ci-runner.yml"])
def test_examples_validate(repo: Path, example: str) -> None:
    done = ci_runner("validate", "--config", str(EXAMPLES / example), cwd=repo)
    assert done.returncode == 0, done.stderr
    assert " OK, " in done.stdout


# ------------------------------------------------------------------------------------------- matrix


def test_matrix_json(repo: Path) -> None:
    write_config(repo, MATRIX)
    done = ci_runner("matrix", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"name": "gcc-1", "values": {"cc": "gcc", "n": 1}, "sbatch": {"partition": "normal", "time": "00:10:00"}, "system": "daint"},
        {"name": "gcc-4", "values": {"cc": "gcc", "n": 4}, "sbatch": {"partition": "normal", "time": "00:10:00"}, "system": "daint"},
        {"name": "cray-1", "values": {"cc": "cray", "n": 1}, "sbatch": {"partition": "normal", "time": "00:10:00"}, "system": "daint"},
        {"name": "nvhpc-2", "values": {"cc": "nvhpc", "n": 2}, "sbatch": {"partition": "gpu", "time": "00:10:00"}, "system": "daint"},
    ]


def test_matrix_github_is_one_line_for_strategy_matrix(repo: Path) -> None:
    write_config(repo, MATRIX)
    done = ci_runner("matrix", "--format", "github", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1  # fits `echo "matrix=$(...)" >> "$GITHUB_OUTPUT"`
    document = json.loads(done.stdout)
    assert list(document) == ["include"]
    assert document["include"][0] == {"entry": "gcc-1", "cc": "gcc", "n": 1}
    assert [item["entry"] for item in document["include"]] == ["gcc-1", "gcc-4", "cray-1", "nvhpc-2"]


def test_matrix_gitlab_parallel_matrix(repo: Path) -> None:
    write_config(repo, MATRIX)
    done = ci_runner("matrix", "--format", "gitlab", cwd=repo)
    assert done.returncode == 0, done.stderr
    parsed = yaml.safe_load(f"job:\n  parallel:\n    matrix: {done.stdout}")  # JSON is YAML flow syntax
    assert parsed["job"]["parallel"]["matrix"] == [{"ENTRY": ["gcc-1", "gcc-4", "cray-1", "nvhpc-2"]}]


def test_matrix_gitlab_refuses_more_than_200_jobs(repo: Path) -> None:
    write_config(repo, "version: 1\nsystem: d\nscript: x\nmatrix: {a: [%s], max_entries: 300}\n"
                 % ", ".join(str(i) for i in range(201)))
    assert_user_error(ci_runner("matrix", "--format", "gitlab", cwd=repo), "ci-runner: error: .ci-runner.yml: 201 entries")


def test_matrix_unknown_format_is_usage_error(repo: Path) -> None:
    write_config(repo, MATRIX)
    done = ci_runner("matrix", "--format", "xml", cwd=repo)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "'xml' is not one of" in done.stderr


# ------------------------------------------------------------------------------------------- render


def test_render_prints_every_entry_with_a_header(repo: Path) -> None:
    write_config(repo, MATRIX)
    done = ci_runner("render", cwd=repo)
    assert done.returncode == 0, done.stderr
    headers = [line for line in done.stdout.splitlines() if line.startswith("# ====")]
    assert [h.split()[3] for h in headers] == ["gcc-1", "gcc-4", "cray-1", "nvhpc-2"]
    assert done.stdout.count("#!/bin/bash") == 4
    assert "#SBATCH --partition=gpu" in done.stdout


@pytest.mark.slow  # several ci-runner processes (2-4 s)
def test_render_arrays_shows_the_scripts_as_submitted(repo: Path, tmp_path: Path) -> None:
    """Entries with the same sbatch options are one job array: --arrays prints (or writes) its script."""
    write_config(repo, MATRIX)
    done = ci_runner("render", "--arrays", cwd=repo)
    assert done.returncode == 0, done.stderr
    headers = [line for line in done.stdout.splitlines() if line.startswith("# ====")]
    assert headers[0].startswith("# ==================== job array array+0: entries gcc-1, gcc-4, cray-1 "), headers
    assert [h.split()[3] for h in headers[1:]] == ["nvhpc-2"]
    assert done.stdout.count("#SBATCH --array=0-2\n") == 1 and done.stdout.count("#!/bin/bash") == 2
    written = ci_runner("render", "--arrays", "--out", str(tmp_path / "out"), cwd=repo)
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["array+0.sh", "nvhpc-2.sh"]
    write_config(repo, MATRIX + "job_arrays: false\n")  # a site that refuses job arrays: one job each
    single = ci_runner("render", "--arrays", cwd=repo)
    assert single.returncode == 0, single.stderr
    assert single.stdout.count("#!/bin/bash") == 4 and "--array" not in single.stdout


@pytest.mark.slow  # several ci-runner processes (2-4 s)
def test_render_arrays_shows_a_packed_job_and_validate_says_it_is_packed(repo: Path, tmp_path: Path) -> None:
    """`pack: true`: --arrays prints the one packed job (its steps), validate names it; an include
    that sets a non-step option is refused at its line, by validate and render alike."""
    packed = MATRIX.replace("include: [{cc: nvhpc, n: 2, sbatch: {partition: gpu}}]",
                            "include: [{cc: nvhpc, n: 2, sbatch: {cpus-per-task: 2}}]").rstrip(" ") + "    pack: true\n"
    write_config(repo, packed)
    done = ci_runner("render", "--arrays", cwd=repo)
    assert done.returncode == 0, done.stderr
    headers = [line for line in done.stdout.splitlines() if line.startswith("# ====")]
    assert headers == ["# ==================== packed job pack+0: entries gcc-1, gcc-4, cray-1, nvhpc-2 as its steps "
                       "(system daint) ===================="], headers
    assert done.stdout.count("ci_runner_step ") == 4 and "/nvhpc-2/ci-runner-step.sh --cpus-per-task=2 &" in done.stdout
    plain = ci_runner("render", cwd=repo)
    assert "step 3 of packed job pack+0 (--arrays)" in plain.stdout
    valid = ci_runner("validate", cwd=repo)
    assert valid.returncode == 0 and valid.stdout.rstrip().endswith("; packed: the steps of 1 job (one per system)")
    write_config(repo, MATRIX.rstrip(" ") + "    pack: true\n")  # partition in an include: no step option
    for command in ("validate", "render"):
        assert_user_error(ci_runner(command, cwd=repo), "ci-runner: error: .ci-runner.yml:8:40: matrix.include[0].sbatch.partition: not a job step option")


def test_render_selected_entries_to_files(repo: Path, tmp_path: Path) -> None:
    write_config(repo, MATRIX)
    out = tmp_path / "scripts"
    done = ci_runner("render", "--entry", "nvhpc-2", "--entry", "gcc-1", "--out", str(out), "--workdir", "/w", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gcc-1.sh", "nvhpc-2.sh"]
    assert "#SBATCH --output=/w/" in (out / "gcc-1.sh").read_text()


def test_render_unknown_entry_lists_the_valid_ones(repo: Path) -> None:
    write_config(repo, MATRIX)
    assert_user_error(ci_runner("render", "--entry", "gcc-2", cwd=repo),
                      "ci-runner: error: unknown entry 'gcc-2'; valid entries: gcc-1, gcc-4, cray-1, nvhpc-2\n")


def test_render_config_error_exit_2(repo: Path) -> None:
    write_config(repo, "version: 1\nsystem: d\nscript: x\ncheckout: git\n")
    assert_user_error(ci_runner("render", cwd=repo), "ci-runner: error: .ci-runner.yml:4:11: checkout: expected one of")


def _run_rendered(script: Path, repo: Path, env: dict[str, str] | None = None) -> Path:
    """Run a rendered job script with bash as Slurm would (after the run's set-up: its output
    directory and the uploaded archive), with `clean_env()` plus `env`; returns the entry root."""
    text = script.read_text()
    root = Path(shlex.split(next(line for line in text.splitlines() if line.startswith("ci_runner_root=")))[0]
                .split("=", 1)[1])
    (root.parent / "output").mkdir(parents=True, exist_ok=True)
    if not (root.parent / "source.tar.gz").exists():
        subprocess.run(["git", "archive", "--format=tar.gz", "-o", str(root.parent / "source.tar.gz"), "HEAD"],
                       cwd=repo, check=True)
    done = subprocess.run(["bash", str(script)], cwd=root.parent / "output", env={**clean_env(), **(env or {})},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def test_realistic_example_runs_with_bash_and_writes_junit(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "scripts"
    done = ci_runner("render", "--config", str(EXAMPLES / "realistic.yml"), "--out", str(out),
                     "--workdir", str(tmp_path / "remote"), cwd=repo)
    assert done.returncode == 0, done.stderr
    assert sorted(p.stem for p in out.iterdir()) == ["integration-1", "smoke-1", "unit-1", "unit-2"]
    expected_cases = {"unit-1": 5, "unit-2": 5, "integration-1": 3, "smoke-1": 1}
    for entry, cases in expected_cases.items():
        root = _run_rendered(out / f"{entry}.sh", repo)
        suite = ET.parse(root / "src" / "results" / f"junit-{entry}.xml").getroot().find("testsuite")
        assert suite is not None
        assert (suite.get("tests"), suite.get("failures")) == (str(cases), "0")
        assert len(suite.findall("testcase")) == cases
    # packed: one allocation of 5 minutes, smoke-1's own step limit of 1 minute
    assert "#SBATCH --time=00:05:00" in (out / "unit-1.sh").read_text()
    packed = ci_runner("render", "--config", str(EXAMPLES / "realistic.yml"), "--arrays",
                       "--workdir", str(tmp_path / "remote"), cwd=repo)
    assert packed.returncode == 0, packed.stderr
    assert packed.stdout.count("#SBATCH --time=") == 1 and "#SBATCH --time=00:05:00" in packed.stdout
    assert "smoke-1/ci-runner-step.sh --time=00:01:00 &" in packed.stdout


def test_cli_module_imports_stay_light() -> None:
    code = ("import sys, ci_runner.cli; heavy = ('ci_runner.config', 'ci_runner.matrix', 'ci_runner.render', "
            "'jsonschema', 'yaml', 'jinja2'); print([m for m in heavy if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_minimal_example_clones_the_commit_and_runs(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "scripts"
    done = ci_runner("render", "--config", str(EXAMPLES / "minimal.yml"), "--out", str(out),
                     "--workdir", str(tmp_path / "remote"), cwd=repo)
    assert done.returncode == 0, done.stderr
    root = _run_rendered(out / "default.sh", repo)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=root / "src", capture_output=True, text=True,
                          check=True).stdout.strip() == sha


# -------------------------------------------------------------------------------------- ReFrame example

REFRAME = EXAMPLES / "reframe"


@pytest.mark.parametrize("show_failure", ["", "1"], ids=["default", "show-failure"])
def test_reframe_example_renders_one_job_per_environment(repo: Path, tmp_path: Path, show_failure: str) -> None:
    """One job per programming environment, each running the suite with `reframe -p ^ENV$` and writing
    both reports; REFRAME_SHOW_FAILURE (through pass_env) alone decides whether ProductCheck must fail."""
    out = tmp_path / "scripts"
    done = ci_runner("render", "--config", str(REFRAME / ".ci-runner.yml"), "--out", str(out),
                     "--workdir", "/scratch/me/ci", cwd=repo, env={"REFRAME_SHOW_FAILURE": show_failure})
    assert done.returncode == 0, done.stderr
    assert sorted(p.stem for p in out.iterdir()) == ["builtin", "gnu"]
    for environ in ("builtin", "gnu"):
        script = (out / f"{environ}.sh").read_text()
        assert "#SBATCH --ntasks=1" in script
        assert f"\"$reframe\" --run -p '^{environ}$' \"${{options[@]}}\" \\\n" in script
        assert "--report-junit=reframe-report/junit.xml --report-file=reframe-report/report.json\n" in script
        assert ("options+=(-S ProductCheck.fail=true)" in script) == bool(show_failure)
        assert "export RFM_CONFIG_FILES=examples/reframe/settings.py\n" in script
        assert subprocess.run(["bash", "-n", str(out / f"{environ}.sh")], capture_output=True).returncode == 0


def test_reframe_example_uses_the_site_module_when_one_is_named(repo: Path, tmp_path: Path) -> None:
    """With `REFRAME_MODULE` set the job loads that module and runs its `reframe`; nothing is installed.
    (The rendered job runs with bash; `module` and `reframe` are stand-ins that record their arguments.)"""
    example = repo / "examples" / "reframe"
    shutil.copytree(REFRAME, example, ignore=shutil.ignore_patterns("__pycache__"))
    config = example / ".ci-runner.yml"
    config.write_text(config.read_text().replace('REFRAME_MODULE: ""', "REFRAME_MODULE: reframe/4.10"))
    subprocess.run(["git", "add", "examples"], cwd=repo, env=clean_env(), check=True)
    subprocess.run(["git", "commit", "-q", "-m", "reframe"], cwd=repo, env=clean_env(), check=True)
    site = tmp_path / "site-reframe"
    site.mkdir()
    fake = site / "reframe"
    fake.write_text('#!/bin/bash\necho "site reframe $*" >> "$RECORD"\n')
    fake.chmod(0o755)
    out = tmp_path / "scripts"
    workdir = tmp_path / "remote"
    done = ci_runner("render", "--config", str(config), "--out", str(out), "--entry", "gnu",
                     "--workdir", str(workdir), cwd=repo)
    assert done.returncode == 0, done.stderr
    record = tmp_path / "record"
    module = f'() {{ echo "module $*" >> "$RECORD"; PATH={shlex.quote(str(site))}:$PATH; }}'  # as Lmod exports it
    _run_rendered(out / "gnu.sh", repo, env={"RECORD": str(record), "BASH_FUNC_module%%": module})
    assert record.read_text().splitlines() == [
        "module load reframe/4.10",
        "site reframe --run -p ^gnu$ --report-junit=reframe-report/junit.xml --report-file=reframe-report/report.json",
    ]
    assert not (workdir / ".cache").exists()
