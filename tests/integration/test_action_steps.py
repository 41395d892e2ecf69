"""action.yml's steps executed as scripts with a simulated GitHub Actions environment, against the
sandbox: install into a venv under $RUNNER_TEMP, then `exec ci-runner run`, outputs read back from
the step's $GITHUB_OUTPUT and mapped through the action's `outputs:`.

Expressions are evaluated by a tiny interpreter for the forms action.yml uses (`inputs.x`,
`github.action_path`, `github.action_ref`, `steps.<id>.outputs.<name>`, `inputs.x != ''`); anything
else fails the test. `uses:` steps: actions/setup-python is skipped by its `if:` (python-version ''),
actions/cache behaves as on a cache miss (nothing restored; the venv of an earlier test of this module
in the same RUNNER_TEMP plays the restored one); any other action fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
OUTPUT_BLOCK = re.compile(r"^([A-Za-z0-9_-]+)<<(\S+)\n(.*?)\n\2$", re.M | re.S)

pytestmark = pytest.mark.slow  # the first test installs the action's venv (about 20 s)


@pytest.fixture(scope="module")
def runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the tests of this module, so the venv is installed once (the step reuses it)."""
    return tmp_path_factory.mktemp("runner-temp")


def read_outputs(path: Path) -> dict[str, str]:
    text = path.read_text()
    outputs = {m.group(1): m.group(3) for m in OUTPUT_BLOCK.finditer(text)}
    for line in text.splitlines():
        if "=" in line and "<<" not in line and not line.startswith("ghadelimiter_"):
            key, value = line.split("=", 1)
            outputs.setdefault(key, value)
    return outputs


def run_script(script: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """bash -c script; on timeout SIGTERM first (as a cancelling runner does, so ci-runner cancels its
    Slurm jobs), then SIGKILL. Returns the exit code (-1 after a timeout) and the merged output."""
    process = subprocess.Popen(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = process.communicate(timeout=timeout)[0]
        return process.returncode, out
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            out = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            out = process.communicate()[0]
        return -1, f"(timed out after {timeout} s)\n{out}"


class ActionRun:
    """Runs the composite action's steps one by one, like the GitHub runner does."""

    def __init__(self, workspace: Path, runner_temp: Path, inputs: dict[str, str], env: dict[str, str]) -> None:
        self.action = yaml.safe_load((ROOT / "action.yml").read_text())
        self.workspace = workspace
        self.runner_temp = runner_temp
        self.inputs = {name: spec.get("default", "") for name, spec in self.action["inputs"].items()}
        unknown = set(inputs) - set(self.inputs)
        assert not unknown, f"not inputs of action.yml: {unknown}"
        self.inputs.update(inputs)
        self.env = env
        self.step_outputs: dict[str, dict[str, str]] = {}
        self.path_additions: list[str] = []
        self.logs: dict[str, str] = {}
        self.exit_codes: dict[str, int] = {}

    def evaluate(self, expression: str) -> str:
        if match := re.fullmatch(r"inputs\.([A-Za-z0-9_-]+)", expression):
            return self.inputs[match.group(1)]
        if expression == "github.action_path":
            return str(ROOT)
        if expression == "github.action_ref":
            return ""  # as for a local action (`uses: ./`)
        if match := re.fullmatch(r"steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)", expression):
            return self.step_outputs.get(match.group(1), {}).get(match.group(2), "")
        if match := re.fullmatch(r"inputs\.([A-Za-z0-9_-]+) != ''", expression):
            return "true" if self.inputs[match.group(1)] != "" else ""
        raise AssertionError(f"expression not supported by this test: {expression!r}")

    def substitute(self, text: str) -> str:
        return EXPRESSION.sub(lambda m: self.evaluate(m.group(1)), text)

    def run(self, timeout: float = 120, *, until: str | None = None) -> None:
        """Every step in order (stopping at a failed one); `until`: the last step to run (its id)."""
        for index, step in enumerate(self.action["runs"]["steps"]):
            step_id = step.get("id", f"step{index}")
            if "if" in step and not self.evaluate(step["if"]):
                continue
            if "uses" in step:
                assert step["uses"].split("@")[0] == "actions/cache", f"step {step_id}: {step['uses']} not emulated"
                assert all(self.substitute(str(value)) for value in step["with"].values()), step["with"]
                self.step_outputs[step_id] = {"cache-hit": "false"}
                continue
            assert step["shell"] == "bash"
            output_file = self.runner_temp / f"output-{step_id}"
            output_file.write_text("")
            path_file = self.runner_temp / f"path-{step_id}"
            path_file.write_text("")
            env = dict(self.env)
            env["PATH"] = os.pathsep.join([*reversed(self.path_additions), env["PATH"]])
            env.update({"GITHUB_OUTPUT": str(output_file), "GITHUB_PATH": str(path_file),
                        "RUNNER_TEMP": str(self.runner_temp)})
            env.update({key: self.substitute(str(value)) for key, value in step.get("env", {}).items()})
            assert "${{" not in step["run"]
            returncode, log = run_script(step["run"], self.workspace, env, timeout)
            self.logs[step_id] = log
            self.exit_codes[step_id] = returncode
            self.step_outputs[step_id] = read_outputs(output_file)
            self.path_additions += [line for line in path_file.read_text().splitlines() if line]
            if returncode != 0 or step_id == until:
                return

    def outputs(self) -> dict[str, str]:
        return {name: self.substitute(spec["value"]) for name, spec in self.action["outputs"].items()}


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    repo = tmp_path / "workspace"
    repo.mkdir()
    shutil.copy(ROOT / "examples" / "github" / ".ci-runner.yml", repo / ".ci-runner.yml")
    git = ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "-m", "example"], check=True)
    yield repo


def github_env(repo: Path, tmp_path: Path, sandbox: object) -> dict[str, str]:
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    summary = tmp_path / "step-summary.md"
    summary.write_text("")
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "GITHUB_ACTIONS": "true",
        "CI": "true",
        "GITHUB_REPOSITORY": "example/project",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_RUN_ID": "4242",
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_JOB": "cluster",
        "GITHUB_SHA": sha,
        "GITHUB_REF": "refs/heads/main",
        "GITHUB_WORKSPACE": str(repo),
        "GITHUB_STEP_SUMMARY": str(summary),
        "FIRECREST_CLIENT_ID": sandbox.client_id,          # type: ignore[attr-defined]
        "FIRECREST_CLIENT_SECRET": sandbox.client_secret,  # type: ignore[attr-defined]
    }


def test_action_steps_run_the_example_end_to_end(workspace: Path, runner_temp: Path, tmp_path: Path,
                                                 sandbox: object) -> None:
    env = github_env(workspace, tmp_path, sandbox)
    action = ActionRun(workspace, runner_temp, {
        "python-version": "",  # actions/setup-python is not available here: the runner's python3
        "firecrest-url": sandbox.url,  # type: ignore[attr-defined]
        "token-url": sandbox.token_url,  # type: ignore[attr-defined]
        "system": "local",
        "requests-per-minute": "600",
        "workdir": f"{sandbox.root}/ci",  # type: ignore[attr-defined]
    }, env)
    action.run()
    assert action.exit_codes.get("install") == 0, action.logs.get("install")
    assert action.exit_codes.get("run") == 0, action.logs.get("run")
    log = action.logs["run"]
    outputs = action.outputs()
    assert outputs["exit-code"] == "0"
    assert json.loads(outputs["states"]) == {"integration": "COMPLETED", "unit": "COMPLETED"}
    assert json.loads(outputs["outcomes"]) == {"integration": "PASSED", "unit": "PASSED"}
    assert set(json.loads(outputs["job-ids"])) == {"integration", "unit"}
    assert outputs["junit"] == str(workspace / "ci-runner-junit.xml")
    assert json.loads(Path(outputs["summary"]).read_text())["exit_code"] == 0
    junit = Path(outputs["junit"]).read_text()
    assert junit.count("<testcase") == 2 + 4  # one per entry, plus the 2 x 2 testcases the jobs wrote
    # Two entries side by side: whole prefixed lines, job output framed by stop-commands.
    for entry in ("unit", "integration"):
        assert re.search(rf"^\[{entry}\] suite {entry} of {entry} on .*, commit {env['GITHUB_SHA']}$", log, re.M)
        assert f"[{entry}] 2 tests passed\n" in log
    assert "::stop-commands::" in log and "::group::" not in log
    assert log.rstrip().splitlines()[-2:] == [
        "ci-runner: all 2 entries passed; exit code 0",
        f"ci-runner: JUnit report: {workspace / 'ci-runner-junit.xml'}",
    ]
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert summary.startswith("### ci-runner: all 2 entries passed; exit code 0\n")
    assert "| unit | ✅ COMPLETED | 0 |" in summary and "| integration | ✅ COMPLETED | 0 |" in summary
    # Only `ci-runner` goes on PATH: the venv's python, pip, uvicorn... do not shadow the user's.
    assert action.path_additions == [str(runner_temp / "ci-runner-bin")]
    assert [p.name for p in (runner_temp / "ci-runner-bin").iterdir()] == ["ci-runner"]


def test_action_runs_one_entry_in_a_group_and_fails_with_the_job(workspace: Path, runner_temp: Path,
                                                                  tmp_path: Path, sandbox: object) -> None:
    config = workspace / ".ci-runner.yml"
    config.write_text(config.read_text().replace('test $(( 6 * 7 )) -eq 42', 'test $(( 6 * 7 )) -eq 41'))
    subprocess.run(["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci", "-C", str(workspace),
                    "commit", "-q", "-am", "break it"], check=True)
    env = github_env(workspace, tmp_path, sandbox)
    inputs = {
        "python-version": "", "entry": "unit", "firecrest-url": sandbox.url,  # type: ignore[attr-defined]
        "token-url": sandbox.token_url, "requests-per-minute": "600",  # type: ignore[attr-defined]
        "workdir": f"{sandbox.root}/ci",  # type: ignore[attr-defined]
    }
    ActionRun(workspace, runner_temp, inputs, env).run(until="install")  # an earlier job's venv (or reused)
    action = ActionRun(workspace, runner_temp, inputs, env)
    action.run()
    assert "ci-runner: reusing the venv in " in action.logs["install"]  # as after a cache hit
    assert action.exit_codes.get("run") == 1, action.logs.get("run")
    log = action.logs["run"]
    assert "::group::unit (Slurm job " in log and "::endgroup::" in log and "[unit]" not in log
    assert "::error title=ci-runner%3A unit FAILED::" in log
    outputs = action.outputs()
    assert outputs["exit-code"] == "1" and json.loads(outputs["outcomes"]) == {"unit": "FAILED"}
    assert "<details><summary>unit: FAILED" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()


def test_a_config_error_gives_annotations_outputs_and_a_summary(workspace: Path, runner_temp: Path,
                                                                 tmp_path: Path) -> None:
    """Exit 2 before anything runs: one `::error file=,line=,col=` annotation per problem, the
    `exit-code` output, and a short step summary."""
    config = workspace / ".ci-runner.yml"
    config.write_text(config.read_text().replace("version: 1", "version: 1\nsystm: local\nrequests_per_minute: many"))
    fake = type("NoSandbox", (), {"client_id": "id", "client_secret": "secret"})()
    env = github_env(workspace, tmp_path, fake)
    action = ActionRun(workspace, runner_temp, {"python-version": "", "firecrest-url": "http://127.0.0.1:9",
                                               "token-url": "http://127.0.0.1:9/token"}, env)
    action.run()
    assert action.exit_codes.get("run") == 2, action.logs.get("run")
    log = action.logs["run"]
    annotations = re.findall(r"^::error file=\.ci-runner\.yml,line=(\d+),col=(\d+),title=ci-runner::(.*)$", log, re.M)
    assert len(annotations) == 2, log
    assert {text.split(":")[0] for _, _, text in annotations} == {"systm", "requests_per_minute"}
    assert all(int(line) > 1 and int(col) >= 1 for line, col, _ in annotations)
    outputs = action.outputs()
    assert outputs["exit-code"] == "2" and json.loads(outputs["outcomes"]) == {}
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert summary.startswith("### ci-runner: configuration or usage error; exit code 2\n")
    assert "systm" in summary and len(summary) < 2000


def test_the_venv_stamp_is_the_sources_not_the_bytecode(tmp_path: Path) -> None:
    """Python's bytecode, and the temporary file it writes first, come and go under ci_runner/ while
    anything imports it from the checkout: the venv's stamp (and cache key) must not change with them."""
    def stamp() -> str:
        action = ActionRun(tmp_path, tmp_path, {"python-version": ""}, {"PATH": os.environ["PATH"]})
        action.run(until="prepare")
        assert action.exit_codes["prepare"] == 0, action.logs["prepare"]
        return action.step_outputs["prepare"]["stamp"]

    before = stamp()
    cache = ROOT / "ci_runner" / "__pycache__"
    cache.mkdir(exist_ok=True)
    stray = cache / f"zz_stamp_test.cpython-311.pyc.{os.getpid()}"
    stray.write_bytes(b"being written")
    try:
        assert stamp() == before
    finally:
        stray.unlink()
