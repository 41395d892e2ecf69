"""The Jenkinsfile's shell steps, run as Jenkins runs them (`sh -xe` with the step's text), and its
exit-code mapping: 1 -> UNSTABLE, 3 -> one more try then FAILURE, 2 and 4 -> FAILURE, 130 -> ABORTED.

`ci-runner` is a stub in these runs (it exits with the codes a test lists, one per call), so only the
step's own logic is under test; the install step installs this checkout for real, twice, and the
second build reuses the venv.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JENKINSFILE = (ROOT / "examples" / "jenkins" / "Jenkinsfile").read_text()
STEP = re.compile(r"sh\((?:[^)]*?)label: '([^']+)', script: '''\n(.*?)'''|sh label: '([^']+)', script: '''\n(.*?)'''",
                  re.S)


def shell_steps() -> dict[str, str]:
    """label -> the shell text of each `sh` step with a label, as Groovy hands it to sh: in a '''
    string only `\\` escapes are processed (no interpolation)."""
    steps = {}
    for match in STEP.finditer(JENKINSFILE):
        label = match.group(1) or match.group(3)
        body = match.group(2) if match.group(1) else match.group(4)
        steps[label] = body.replace("\\\\", "\\")
    return steps


def results_map() -> dict[int, str]:
    block = re.search(r"^CI_RUNNER_RESULTS = \[(.*?)^\]", JENKINSFILE, re.S | re.M)
    assert block, "CI_RUNNER_RESULTS map not found"
    return {int(code): result for code, result in re.findall(r"^\s*(\d+)\s*:\s*'(\w+)'", block.group(1), re.M)}


def jenkins_sh(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """What Jenkins' `sh` step does: the text as a script file, run with `sh -xe`."""
    path = cwd / "step.sh"
    path.write_text(script)
    return subprocess.run(["sh", "-xe", str(path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def stub_ci_runner(tmp_path: Path, codes: list[int]) -> tuple[Path, Path]:
    """An executable that exits with codes[n] on its n-th call and logs its arguments."""
    (tmp_path / "codes").write_text("".join(f"{c}\n" for c in codes))
    calls = tmp_path / "calls"
    stub = tmp_path / "ci-runner"
    stub.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
code=$(head -n 1 {tmp_path}/codes)
sed -i 1d {tmp_path}/codes
exit "$code"
""")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return stub, calls


@pytest.mark.parametrize("codes,final,calls", [
    ([0], 0, 1), ([1], 1, 1), ([2], 2, 1), ([4], 4, 1), ([130], 130, 1),
    ([3, 0], 0, 2), ([3, 1], 1, 2), ([3, 3], 3, 2),
])
def test_run_step_retries_an_infrastructure_failure_once(codes: list[int], final: int, calls: int,
                                                         tmp_path: Path) -> None:
    stub, log = stub_ci_runner(tmp_path, codes)
    done = jenkins_sh(shell_steps()["ci-runner run"], {"PATH": os.environ["PATH"], "CI_RUNNER": str(stub)}, tmp_path)
    assert done.returncode == final, done.stderr
    assert log.read_text().splitlines() == ["run --config .ci-runner.yml"] * calls
    assert ("trying once more" in done.stdout) == (codes[0] == 3)


def test_exit_codes_map_to_build_results() -> None:
    assert results_map() == {0: "SUCCESS", 1: "UNSTABLE", 2: "FAILURE", 3: "FAILURE", 4: "FAILURE", 130: "ABORTED"}
    assert "CI_RUNNER_RESULTS.get(code, 'FAILURE')" in JENKINSFILE  # an unknown code fails the build
    assert "sh(returnStatus: true, label: 'ci-runner run'" in JENKINSFILE


@pytest.mark.slow
def test_install_step_reuses_the_venv_of_the_previous_build(tmp_path: Path) -> None:
    venv = tmp_path / "workspace@tmp" / "ci-runner-venv"
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
           "CI_RUNNER_PACKAGE": str(ROOT), "CI_RUNNER_VENV": str(venv), "CI_RUNNER": str(venv / "bin" / "ci-runner")}
    first = jenkins_sh(shell_steps()["install ci-runner"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "reusing" not in first.stdout and first.stdout.startswith("ci-runner, version ")
    second = jenkins_sh(shell_steps()["install ci-runner"], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"ci-runner: reusing the venv in {venv}\nci-runner, version ")
