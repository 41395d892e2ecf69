"""The CI front-ends validate against the CIs' own schemas (check-jsonschema, run as a subprocess),
and keep the script-injection rules: inputs reach scripts through env/variables, never as text."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
GITHUB_WORKFLOWS = [*sorted(p for p in (ROOT / "examples" / "github").glob("*.yml") if not p.name.startswith(".")),
                    ROOT / "examples" / "reframe" / "github-workflow.yml"]
COMPONENT = ROOT / "gitlab-templates" / "templates" / "ci-runner.yml"
GITLAB_FILES = [ROOT / "examples" / "gitlab" / ".gitlab-ci.yml", ROOT / "examples" / "reframe" / ".gitlab-ci.yml",
                ROOT / "gitlab-templates" / ".gitlab-ci.yml", COMPONENT]
SNIPPET_SOURCES = [ROOT / "README.md"]
MARKED_BLOCK = re.compile(r"<!-- check: ([a-z-]+) -->\n```[a-z]*\n(.*?)\n```", re.S)


def check(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    assert CHECK_JSONSCHEMA.is_file(), "check-jsonschema is missing: pip install '.[test]'"
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema, *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def assert_valid(schema: str, *files: Path) -> None:
    done = check(schema, *files)
    assert done.returncode == 0, done.stdout + done.stderr


def documents_as_json(path: Path, tmp_path: Path) -> list[Path]:
    """Each YAML document of `path` as its own JSON file (a spec header and the job are validated apart)."""
    out = []
    for index, document in enumerate(yaml.safe_load_all(path.read_text())):
        target = tmp_path / f"{path.name}.{index}.json"
        target.write_text(json.dumps(document))
        out.append(target)
    return out


def test_action_yml_is_a_valid_action() -> None:
    assert_valid("vendor.github-actions", ROOT / "action.yml")


def test_example_workflows_are_valid() -> None:
    assert {p.name for p in GITHUB_WORKFLOWS} >= {"workflow.yml", "fanout.yml"}
    assert_valid("vendor.github-workflows", *GITHUB_WORKFLOWS)


@pytest.mark.parametrize("path", GITLAB_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_gitlab_files_are_valid_per_document(path: Path, tmp_path: Path) -> None:
    documents = documents_as_json(path, tmp_path)
    if path.parent.name == "templates":
        assert len(documents) == 2, "a component is a spec header document, then the job document"
        assert set(json.loads(documents[0].read_text())) == {"spec"}
    assert_valid("vendor.gitlab-ci", *documents)


def test_the_schemas_reject_broken_files(tmp_path: Path) -> None:
    """The checks above can fail: a run step without `shell` and a job with an unknown key are rejected."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    del action["runs"]["steps"][1]["shell"]
    broken_action = tmp_path / "action.json"
    broken_action.write_text(json.dumps(action))
    assert check("vendor.github-actions", broken_action).returncode == 1
    job = yaml.safe_load((ROOT / "examples" / "gitlab" / ".gitlab-ci.yml").read_text())
    job["cluster-tests"]["scrip"] = ["x"]
    broken_job = tmp_path / "gitlab.json"
    broken_job.write_text(json.dumps(job))
    assert check("vendor.gitlab-ci", broken_job).returncode == 1


def test_action_inputs_reach_scripts_only_through_env() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    steps = action["runs"]["steps"]
    scripts = [step["run"] for step in steps if "run" in step]
    assert scripts and all("${{" not in script for script in scripts)
    env_text = json.dumps([step.get("env", {}) for step in steps])
    for name in action["inputs"]:
        if name != "python-version":  # used by `with:` of actions/setup-python
            assert f"inputs.{name} }}" in env_text, f"input {name} is not passed to a step"
    assert all("secret" not in name and "client" not in name for name in action["inputs"])
    assert scripts[-1].rstrip().splitlines()[-1].startswith('exec "$CI_RUNNER_BIN/ci-runner"')


def test_gitlab_template_inputs_reach_the_script_only_as_variables() -> None:
    header, job_doc = yaml.safe_load_all(COMPONENT.read_text())
    (name, job), = job_doc.items()
    assert name == "$[[ inputs.name ]]"
    assert all("$[[" not in line for line in job["script"] + job["after_script"])
    variables = json.dumps(job["variables"])
    for input_name in header["spec"]["inputs"]:
        if input_name not in ("name", "stage", "image"):
            assert f"inputs.{input_name} ]]" in variables, f"input {input_name} is not a variable"
    assert job["artifacts"]["reports"] == {"junit": "ci-runner-junit.xml", "dotenv": "ci-runner.env"}
    assert 'if [ "$CI_JOB_STATUS" = "canceled" ]' in job["after_script"][0]


def snippets() -> list[tuple[str, str, str]]:
    found = []
    for source in SNIPPET_SOURCES:
        for index, (kind, body) in enumerate(MARKED_BLOCK.findall(source.read_text())):
            found.append((f"{source.name}#{index}", kind, body))
    return found


def test_docs_have_snippets_for_every_ci() -> None:
    kinds = {kind for _, kind, _ in snippets()}
    assert kinds >= {"github-workflow", "gitlab-ci", "shell"}


@pytest.mark.parametrize("kind,body", [pytest.param(k, b, id=f"{w}-{k}") for w, k, b in snippets()])
def test_doc_snippets_are_valid(kind: str, body: str, tmp_path: Path) -> None:
    if kind == "shell":
        done = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return
    target = tmp_path / "snippet.yml"  # YAML as written: PyYAML would turn the key `on` into True
    target.write_text(body + "\n")
    schema = {"github-workflow": "vendor.github-workflows", "gitlab-ci": "vendor.gitlab-ci"}[kind]
    assert_valid(schema, target)


USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(?:\s+#\s*(\S+))?", re.M)


def test_third_party_actions_are_pinned_by_commit_sha_with_the_release_in_a_comment() -> None:
    found = 0
    for path in [ROOT / "action.yml", *GITHUB_WORKFLOWS]:
        for reference, comment in USES.findall(path.read_text()):
            if reference.startswith("ci-runner/ci-runner@"):
                continue  # our own action, by release tag (zizmor.yml)
            found += 1
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", reference), f"{path.name}: {reference}"
            assert re.fullmatch(r"v\d+\.\d+\.\d+", comment or ""), f"{path.name}: {reference} needs '# vX.Y.Z'"
    assert found >= 5


def test_the_image_is_not_offered_as_a_github_container_action() -> None:
    """GitHub runs container actions as root; the image's user (10001) cannot write the workspace."""
    for path in (ROOT / "README.md", ROOT / "Dockerfile", ROOT / "action.yml", *GITHUB_WORKFLOWS):
        assert "uses: docker://" not in path.read_text() and "`uses: docker://" not in path.read_text(), path


def test_the_component_project_is_complete() -> None:
    """gitlab-templates/ can be published as it is: GitLab resolves `include: component:` only from a
    top-level templates/ directory, and the catalog wants a README (with `## Components`) and a LICENSE."""
    project = ROOT / "gitlab-templates"
    assert sorted(p.name for p in (project / "templates").iterdir()) == ["ci-runner.yml"]
    assert "\n## Components\n" in (project / "README.md").read_text()
    assert (project / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    pipeline = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
    assert pipeline["include"][0]["component"] == "$CI_SERVER_FQDN/$CI_PROJECT_PATH/ci-runner@$CI_COMMIT_SHA"
    assert pipeline["release"]["release"]["tag_name"] == "$CI_COMMIT_TAG"
    assert pipeline["release"]["rules"] == [{"if": "$CI_COMMIT_TAG =~ /^\\d+\\.\\d+\\.\\d+$/"}]
    for input_name in yaml.safe_load_all(COMPONENT.read_text()).__next__()["spec"]["inputs"]:
        assert f"| `{input_name}` |" in (project / "README.md").read_text(), f"{input_name} missing in its README"


def test_component_inputs_are_typed_like_the_cli_options() -> None:
    from ci_runner.units import parse_duration

    inputs = next(yaml.safe_load_all(COMPONENT.read_text()))["spec"]["inputs"]
    assert inputs["requests-per-minute"]["type"] == "number" and inputs["requests-per-minute"]["default"] == 0
    assert inputs["checkout"]["options"] == ["", "clone", "upload", "none"]
    regex = re.compile(inputs["queue-timeout"]["regex"])
    for accepted in ("", "90", "90s", "30m", "1h30m", "2h", "01:30:00", "30:00"):
        assert regex.fullmatch(accepted), accepted
        if accepted:
            parse_duration(accepted)  # ci-runner takes it too
    for refused in ("30 m", "soon", "1.5h", "-5m", "30m; rm -rf ~"):
        assert not regex.fullmatch(refused), refused
