"""The bad-input corpus in tests/data/bad/: every case through a real `ci-runner` process.

A case is a directory: `.ci-runner.yml`, `expect.txt` (one line that must appear in the output) and an
optional `case.json`:

    command   validate (default) | render | render-exec | run
    exit      expected exit code (default 2: configuration error)
    env       extra environment (GITHUB_REF for hostile branch names, ...)
    ci        the CI (or list of CIs) the case runs under: github (default), gitlab, jenkins; a case with
              several runs once per CI, named `<case>:<ci>`
    absent    strings that must not appear in stdout (JSON escapes: "\u001b[2K" is ESC [ 2 K)
    outside   the test puts a secret file next to (outside) the case directory; its text must never show
    xfail     a known bug, named: the case is `xfail(strict=True)` so the fix flips it
    canary_expected   the case creates the canary on purpose (proves the script was not cut short)
    note      why the case exists

`@CANARY@` in the config and the env is replaced by the path of a file that no case may create (an
injected command would); `@OUTSIDE@` by the outside secret file. `render-exec` renders the scripts
and runs each with bash (checkout: none), so quoting is tested by a shell, not by reading text.
`run` cases run `ci-runner run` against an in-process sandbox (Slurm backend when Slurm works).

Every case: the expected exit code, no Python traceback, the fragment in the output, no canary,
and the fake FirecREST secret of the environment never printed. Every `run` case: the CI log's
structure is ci-runner's alone (GitLab: the only section markers are the entry's own start and end;
GitHub: the only workflow commands a runner would execute are ci-runner's, one group opened and closed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad"
CLI = str(Path(sys.executable).parent / "ci-runner")
FAKE_SECRET = "corpus-client-secret-6f1d2a"
OUTSIDE_SECRET = "outside-file-secret-93be07"
GITHUB_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "example/project",
    "GITHUB_RUN_ID": "4242",
    "GITHUB_RUN_ATTEMPT": "1",
    "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_SERVER_URL": "https://github.com",
}
GITLAB_ENV = {
    "GITLAB_CI": "true",
    "CI_PROJECT_URL": "https://gitlab.example/group/project",
    "CI_PIPELINE_ID": "77",
    "CI_JOB_ID": "4242",
    "CI_COMMIT_SHA": GITHUB_ENV["GITHUB_SHA"],
    "CI_COMMIT_REF_NAME": "main",
}
JENKINS_ENV = {
    "BUILD_TAG": "jenkins-project-4242",
    "GIT_COMMIT": GITHUB_ENV["GITHUB_SHA"],
    "GIT_BRANCH": "main",
    "GIT_URL": "https://git.example/project.git",
}
CI_ENV = {"github": GITHUB_ENV, "gitlab": GITLAB_ENV, "jenkins": JENKINS_ENV}
RUN_ID_VARIABLE = {"github": "GITHUB_RUN_ID", "gitlab": "CI_JOB_ID", "jenkins": "BUILD_TAG"}
PYTHONPATH = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}  # the code under test
TIMEOUT = {"validate": 30, "render": 30, "render-exec": 30, "run": 90}


@dataclass(frozen=True)
class Case:
    name: str
    directory: Path
    expect: str
    command: str = "validate"
    exit: int = 2
    env: dict[str, str] = field(default_factory=dict)
    outside: bool = False
    xfail: str | None = None
    canary_expected: bool = False
    ci: str = "github"
    absent: tuple[str, ...] = ()

    @classmethod
    def read(cls, directory: Path) -> list[Case]:
        """The case of `directory`, once per CI it names."""
        meta: dict[str, Any] = {}
        if (directory / "case.json").exists():
            meta = json.loads((directory / "case.json").read_text(encoding="utf-8"))
        meta.pop("note", None)
        cis = meta.pop("ci", ["github"])
        cis = [cis] if isinstance(cis, str) else cis
        assert set(cis) <= set(CI_ENV), f"{directory.name}: unknown ci in {cis}"
        meta["absent"] = tuple(meta.get("absent", ()))
        expect = (directory / "expect.txt").read_text(encoding="utf-8").rstrip("\n")
        assert "\n" not in expect, f"{directory.name}/expect.txt must be one line"
        return [cls(name=directory.name if cis == ["github"] else f"{directory.name}:{ci}", directory=directory,
                    expect=expect, ci=ci, **meta) for ci in cis]


def corpus() -> list[Case]:
    return [case for d in sorted(CORPUS.iterdir()) if d.is_dir() for case in Case.read(d)]


def params(kind: set[str]) -> list[Any]:
    chosen = []
    for case in corpus():
        if case.command not in kind:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        chosen.append(pytest.param(case, id=case.name, marks=marks))
    return chosen


def test_corpus_size_and_shape() -> None:
    cases = corpus()
    assert len(cases) >= 30
    assert {c.command for c in cases} == {"validate", "render", "render-exec", "run"}
    for case in cases:
        assert case.expect.strip(), case.name


@dataclass(frozen=True)
class Workspace:
    repo: Path
    canary: Path
    outside: Path

    def substitute(self, text: str) -> str:
        return text.replace("@CANARY@", str(self.canary)).replace("@OUTSIDE@", str(self.outside))


def prepare(case: Case, tmp_path: Path) -> Workspace:
    """Copy the case into tmp_path/repo with placeholders filled; the outside secret next to it."""
    space = Workspace(repo=tmp_path / "repo", canary=tmp_path / "CANARY-injected-command-ran",
                      outside=tmp_path / "outside-secret.txt")
    shutil.copytree(case.directory, space.repo)
    for path in space.repo.iterdir():
        data = path.read_bytes()
        try:
            path.write_text(space.substitute(data.decode("utf-8")), encoding="utf-8")
        except UnicodeDecodeError:
            pass  # the non-UTF-8 config stays as it is
    if case.outside:
        space.outside.write_text(f"{OUTSIDE_SECRET}\n", encoding="utf-8")
    return space


def environment(case: Case, space: Workspace, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(space.repo.parent), "LC_ALL": "C.UTF-8",
           "FIRECREST_CLIENT_SECRET": FAKE_SECRET, **CI_ENV[case.ci], **PYTHONPATH}
    env.update(extra or {})
    env.update({k: space.substitute(v) for k, v in case.env.items()})
    return env


def ci_runner(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the CLI; stdout and stderr decoded as they are, without newline translation (a CR stays a CR)."""
    done = subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, timeout=timeout, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode("utf-8", "replace"),
                                       done.stderr.decode("utf-8", "replace"))


def check_common(case: Case, space: Workspace, done: subprocess.CompletedProcess[str]) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == case.exit, f"exit {done.returncode}, expected {case.exit}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert FAKE_SECRET not in output
    assert OUTSIDE_SECRET not in output, "a file outside the repository reached the output"
    if case.exit == 2:
        first = done.stderr.splitlines()[0] if done.stderr else ""
        assert first.startswith("ci-runner: error: "), done.stderr
        assert case.expect in done.stderr, f"expected {case.expect!r} in:\n{done.stderr}"
    else:
        expect = space.substitute(case.expect)
        assert expect in output, f"expected {expect!r} in:\n{output[-3000:]}"
    if not case.canary_expected:
        assert not space.canary.exists(), "an injected command ran"
    for text in case.absent:
        assert text not in done.stdout, f"{text!r} reached the CI log:\n{done.stdout[-3000:]}"


@pytest.mark.parametrize("case", params({"validate", "render"}))
def test_config_and_template_case(case: Case, tmp_path: Path) -> None:
    space = prepare(case, tmp_path)
    done = ci_runner([case.command], space.repo, environment(case, space), TIMEOUT[case.command])
    check_common(case, space, done)
    if case.command == "validate" and case.exit == 2:
        # the same configuration must be refused by render too (no path around validation)
        again = ci_runner(["render"], space.repo, environment(case, space), TIMEOUT["render"])
        assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
        assert not space.canary.exists()


@pytest.mark.parametrize("case", params({"render-exec"}))
def test_hostile_values_stay_inert_in_executed_scripts(case: Case, tmp_path: Path) -> None:
    space = prepare(case, tmp_path)
    scripts, workdir = tmp_path / "scripts", tmp_path / "remote"
    env = environment(case, space)
    done = ci_runner(["render", "--out", str(scripts), "--workdir", str(workdir)], space.repo, env, TIMEOUT["render"])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    rendered = sorted(scripts.glob("*.sh"))
    assert rendered, done.stdout
    outputs = []
    for script in rendered:
        text = script.read_text(encoding="utf-8")
        assert FAKE_SECRET not in text
        ran = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=TIMEOUT["render-exec"], check=False)
        assert ran.returncode == 0, f"{script.name}: {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
        outputs.append(ran.stdout)
    expect = space.substitute(case.expect)
    assert any(expect in out for out in outputs), outputs
    if case.canary_expected:
        assert space.canary.exists(), "the user's own last line should have run (the body is not cut short)"
    else:
        assert not space.canary.exists(), "an injected command ran"


# -- run-time cases ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from ci_runner.sandbox.server import SandboxOptions, start_sandbox

    root = tmp_path_factory.mktemp("bad-inputs-cluster")
    handle = start_sandbox(SandboxOptions(root=root, backend="auto", port=0))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.mark.slow  # whole `ci-runner run`s, on real Slurm when it works: 2-7 s each, minutes together
@pytest.mark.shares_slurm
@pytest.mark.parametrize("case", params({"run"}))
def test_run_time_case(case: Case, tmp_path: Path, corpus_sandbox: Any) -> None:
    space = prepare(case, tmp_path)
    run_id = str(abs(hash(case.name)) % 10**8)
    env = environment(case, space, {**corpus_sandbox.env(), RUN_ID_VARIABLE[case.ci]: run_id})
    done = ci_runner(["run", "--requests-per-minute", "600"], space.repo, env, TIMEOUT["run"])
    unmasked = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                          if not line.startswith("::add-mask::"))  # GitHub hides what follows ::add-mask::
    assert corpus_sandbox.client_secret not in unmasked
    check_common(case, space, done)
    check_log_structure(case, done.stdout)
    if case.name == "run-artifact-symlink-outside":
        fetched = space.repo / "ci-runner-artifacts"
        files = {p.relative_to(fetched).as_posix() for p in fetched.rglob("*")} if fetched.exists() else set()
        assert any(f.endswith("ok.txt") for f in files), files
        assert not any("leak" in f or "/up" in f for f in files), files
        for path in fetched.rglob("*"):
            assert not path.is_symlink(), path
            if path.is_file():
                assert "root:" not in path.read_text(errors="replace")
    if case.name == "run-output-over-1gib":
        assert len(done.stdout) < 20 * 1024 * 1024, "the runner copied the sparse gigabyte into the CI log"


# GitLab's own pattern (Gitlab::Regex.build_trace_section_regex): the `\r\e[0K` suffix is required.
GITLAB_SECTION = re.compile(r"section_(start|end):\d+:([a-zA-Z0-9_.-]+)(?:\[\w+=\w+(?:, ?\w+=\w+)*\])?\r\x1b\[0K")
GITHUB_COMMAND = re.compile(r"::([a-zA-Z0-9_-]+)(?: [^:]*)?::(.*)")


def github_commands(log: str) -> list[str]:
    """The workflow commands a runner would execute in `log`, honouring `::stop-commands::`.

    Lines end at LF, CRLF or a bare CR, like .NET's ReadLine (the stricter reading for us).
    """
    executed, stopped = [], None
    for line in re.split(r"\r\n|\r|\n", log):
        match = GITHUB_COMMAND.fullmatch(line)
        if match is None:
            continue
        name, data = match.groups()
        if stopped is not None:
            if name == stopped:
                stopped = None
            continue
        if name == "stop-commands":
            stopped = data
        executed.append(name)
    return executed


def check_log_structure(case: Case, log: str) -> None:
    """A single-entry run's log has the structure ci-runner wrote, whatever the job printed."""
    if case.ci == "gitlab":
        sections = [(m.group(1), m.group(2)) for m in GITLAB_SECTION.finditer(log)]
        assert len(sections) == 2 and [kind for kind, _ in sections] == ["start", "end"], sections
        assert sections[0][1] == sections[1][1] and sections[0][1].startswith("ci_runner_"), sections
    if case.ci == "github":
        structure = [name for name in github_commands(log) if name in ("group", "endgroup")]
        assert structure == ["group", "endgroup"], structure
