"""The linters of what we ship, run for real: hadolint (Dockerfile), shellcheck (every shell snippet:
the action's steps, the GitLab component and pipeline, the Jenkinsfile's `sh` steps, the README's
shell blocks, .ci/run), zizmor offline (action.yml and the example workflows), actionlint (the
example workflows, with shellcheck on their `run:` steps). The tools are pinned wheels of the
`test` extra, found next to this Python."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKFLOWS = sorted(p for p in (ROOT / "examples" / "github").glob("*.yml") if not p.name.startswith("."))


def tool(name: str, *args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    path = BIN / name
    assert path.is_file(), f"{name} is missing: pip install '.[test]'"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", NO_COLOR="1")
    return subprocess.run([str(path), *args], input=stdin, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def gitlab_scripts(path: Path) -> list[tuple[str, str]]:
    """(where, script) per job section of a GitLab file: its lines joined, as the runner runs them."""
    found = []
    for document in yaml.safe_load_all(path.read_text()):
        for job, body in (document or {}).items():
            if not isinstance(body, dict):
                continue
            for section in ("before_script", "script", "after_script"):
                if section in body:
                    found.append((f"{path.name}:{job}:{section}", "\n".join(body[section]) + "\n"))
    return found


def shell_snippets() -> list[tuple[str, str, str]]:
    """(where, shell dialect, text) of every shell snippet we ship."""
    snippets = [(".ci/run", "bash", (ROOT / ".ci" / "run").read_text())]
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    snippets += [(f"action.yml:{step.get('id', step['name'])}", "bash", step["run"])
                 for step in action["runs"]["steps"] if "run" in step]
    for path in (ROOT / "gitlab-templates" / "templates" / "ci-runner.yml", ROOT / "gitlab-templates" / ".gitlab-ci.yml"):
        snippets += [(where, "sh", text) for where, text in gitlab_scripts(path)]
    jenkinsfile = (ROOT / "examples" / "jenkins" / "Jenkinsfile").read_text()
    for index, body in enumerate(re.findall(r"script: '''\n(.*?)'''|sh '([^']*)'", jenkinsfile, re.S)):
        text = (body[0] or body[1]).replace("\\\\", "\\")  # Groovy ''' strings: only \\ escapes
        snippets.append((f"Jenkinsfile:sh#{index}", "sh", text + "\n"))
    readme = (ROOT / "README.md").read_text()
    snippets += [(f"README.md:sh#{index}", "bash", text + "\n")
                 for index, text in enumerate(re.findall(r"```sh\n(.*?)\n```", readme, re.S))]
    return snippets


def test_dockerfile_passes_hadolint() -> None:
    done = tool("hadolint", "--no-color", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("where,dialect,text", [pytest.param(*s, id=s[0]) for s in shell_snippets()])
def test_shell_snippets_pass_shellcheck(where: str, dialect: str, text: str) -> None:
    # SC1091: a sourced file (a venv's activate, the sandbox's env file) exists only when the snippet runs.
    done = tool("shellcheck", "--shell", dialect, "--severity", "style", "--exclude", "SC1091", "-", stdin=text)
    assert done.returncode == 0, f"{where}:\n{done.stdout}{done.stderr}"


def test_every_kind_of_shell_snippet_is_checked() -> None:
    kinds = {where.split(":")[0].split("#")[0] for where, _, _ in shell_snippets()}
    assert kinds >= {".ci/run", "action.yml", "ci-runner.yml", ".gitlab-ci.yml", "Jenkinsfile", "README.md"}
    assert sum(where.startswith("Jenkinsfile") for where, _, _ in shell_snippets()) == 3


def test_action_and_example_workflows_pass_zizmor() -> None:
    done = tool("zizmor", "--offline", "--no-progress", "--config", "zizmor.yml", "action.yml",
                *[str(p.relative_to(ROOT)) for p in WORKFLOWS])
    assert done.returncode == 0, done.stdout + done.stderr


def test_example_workflows_pass_actionlint() -> None:
    done = tool("actionlint", "-shellcheck", str(BIN / "shellcheck"), *[str(p) for p in WORKFLOWS])
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_linters_do_fail(tmp_path: Path) -> None:
    """Each check above can fail: a broken input of each kind is refused."""
    assert tool("shellcheck", "--shell", "sh", "-", stdin="rm -rf $1/*\n").returncode != 0
    (tmp_path / "Dockerfile").write_text("FROM debian\nRUN cd /tmp && echo hi\n")
    assert tool("hadolint", "--no-color", str(tmp_path / "Dockerfile")).returncode != 0
    workflow = tmp_path / "bad.yml"
    workflow.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                        "      - uses: actions/checkout@v4\n      - run: echo ${{ github.event.head_commit.message }}\n")
    assert tool("zizmor", "--offline", "--no-progress", str(workflow)).returncode != 0
    assert tool("actionlint", str(workflow)).returncode != 0
