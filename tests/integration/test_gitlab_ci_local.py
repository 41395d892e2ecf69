"""GitLab pipelines run by gitlab-ci-local (shell executor) against the sandbox.

- The example .gitlab-ci.yml includes the component as a user would, `include: component:` of a
  release of the component project. gitlab-ci-local fetches it like GitLab resolves it: the file
  `templates/ci-runner.yml` of that project at that tag, here from a small GitLab stand-in on
  127.0.0.1 that serves the component project (a git repository of gitlab-templates/ tagged with the
  release) over git's smart HTTP and `/-/raw/`. One GitLab job per entry, JUnit and dotenv reports.
- The component project's own .gitlab-ci.yml (gitlab-templates/) tests the component of its commit
  against a sandbox it starts itself, and releases only on a MAJOR.MINOR.PATCH tag.

Needs node/npm, rsync and gitlab-ci-local@4.62.0 in ~/.cache/ci-runner-npm (installed here when npm is
available). Skipped only when node, npm or rsync is missing and CI is not set; in CI it fails instead.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Iterator

import pytest
from helpers.checkouts import git_checkout

ROOT = Path(__file__).resolve().parents[2]
VERSION = "4.62.0"
NPM_CACHE = Path(os.environ.get("CI_RUNNER_NPM_DIR", Path.home() / ".cache" / "ci-runner-npm"))
GITLAB_CI_LOCAL = NPM_CACHE / "node_modules" / ".bin" / "gitlab-ci-local"


def gitlab_ci_local() -> Path:
    missing = [tool for tool in ("node", "npm", "rsync") if shutil.which(tool) is None]
    if missing:  # gitlab-ci-local runs on node and copies the project with rsync
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} needed in CI (see .ci/run)")
        pytest.skip(f"{', '.join(missing)} missing")
    if not GITLAB_CI_LOCAL.exists():
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "i", "--no-audit", "--no-fund", f"gitlab-ci-local@{VERSION}"], cwd=NPM_CACHE,
                       check=True, capture_output=True, timeout=300)
    return GITLAB_CI_LOCAL


VERSION_OF_CI_RUNNER = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
class GitLabStandIn(http.server.BaseHTTPRequestHandler):
    """The two things gitlab-ci-local asks a GitLab for when it resolves `include: component:`:
    `/<project>/-/raw/<ref>/<file>` (does the file exist?) and the project's git repository over smart
    HTTP (`git http-backend` as CGI), to clone the file at that ref."""

    projects: Path  # <projects>/<group>/<name>.git are bare repositories

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        raw = re.fullmatch(r"/(.+)/-/raw/([^/]+)/(.+)", self.path)
        if raw:
            project, ref, file = raw.groups()
            shown = subprocess.run(["git", "-C", str(self.projects / f"{project}.git"), "show", f"{ref}:{file}"],
                                   capture_output=True)
            self._answer(200 if shown.returncode == 0 else 404, shown.stdout if shown.returncode == 0 else b"")
            return
        self._git()

    def do_POST(self) -> None:  # noqa: N802
        self._git()

    def _git(self) -> None:
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.projects), "GIT_HTTP_EXPORT_ALL": "1",
               "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "REMOTE_ADDR": "127.0.0.1"}
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        headers = [line.split(":", 1) for line in head.decode("latin-1").split("\r\n") if ":" in line]
        status = next((int(value.split()[0]) for name, value in headers if name.lower() == "status"), 200)
        self.send_response(status)
        for name, value in headers:
            if name.lower() != "status":
                self.send_header(name, value.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _answer(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@pytest.fixture
def gitlab(tmp_path: Path) -> Iterator[str]:
    """A GitLab stand-in on 127.0.0.1 serving the component project hpc/ci-runner: gitlab-templates/ as
    it is in this checkout, released as the current version. Yields its base URL."""
    component = tmp_path / "component-project"
    shutil.copytree(ROOT / "gitlab-templates", component)
    git_checkout(component, tag=VERSION_OF_CI_RUNNER)
    projects = tmp_path / "gitlab"
    (projects / "hpc").mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(component), str(projects / "hpc" / "ci-runner.git")],
                   check=True)
    handler = type("Handler", (GitLabStandIn,), {"projects": projects})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def run_gitlab_ci_local(repo: Path, variables: dict[str, str], *extra: str) -> str:
    """gitlab-ci-local in `repo` (shell executor, one job at a time); its log. Fails the test on a
    non-zero exit or after 240 s (then SIGTERM to its process group)."""
    command = [str(gitlab_ci_local()), "--force-shell-executor", "--concurrency", "1", "--no-color", *extra]
    for key, value in variables.items():
        command += ["--variable", f"{key}={value}"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("GITHUB_ACTIONS", None)
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        log = process.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        log = process.communicate(timeout=60)[0]
        pytest.fail(f"gitlab-ci-local did not finish:\n{log}")
    assert process.returncode == 0, log
    return log


@pytest.mark.slow  # a whole pipeline through gitlab-ci-local: 8 s and more
def test_example_pipeline_includes_the_released_component(tmp_path: Path, sandbox: object, gitlab: str) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    for name in (".gitlab-ci.yml", ".ci-runner.yml"):
        shutil.copy(ROOT / "examples" / "gitlab" / name, repo / name)
    assert f"/hpc/ci-runner/ci-runner@{VERSION_OF_CI_RUNNER}" in (repo / ".gitlab-ci.yml").read_text()
    git_checkout(repo, origin=f"{gitlab}/example/project.git")  # CI_SERVER_FQDN: the stand-in's host:port
    log = run_gitlab_ci_local(repo, {
        "GITLAB_CI": "true",  # gitlab-ci-local says "false"; ci-runner detects GitLab by "true"
        "FIRECREST_URL": sandbox.url,                      # type: ignore[attr-defined]
        "AUTH_TOKEN_URL": sandbox.token_url,               # type: ignore[attr-defined]
        "FIRECREST_CLIENT_ID": sandbox.client_id,          # type: ignore[attr-defined]
        "FIRECREST_CLIENT_SECRET": sandbox.client_secret,  # type: ignore[attr-defined]
        "CI_RUNNER_REQUESTS_PER_MINUTE": "600",
        "CI_RUNNER_WORKDIR": f"{sandbox.root}/ci",         # type: ignore[attr-defined]
    })
    fetched = repo / ".gitlab-ci-local" / "includes" / "127.0.0.1" / "hpc" / "ci-runner" / VERSION_OF_CI_RUNNER
    assert (fetched / "templates" / "ci-runner.yml").read_text() == \
        (ROOT / "gitlab-templates" / "templates" / "ci-runner.yml").read_text()
    assert " PASS  cluster-tests: [unit]" in log and " PASS  cluster-tests: [integration]" in log, log
    # What the jobs exported (artifacts:paths and artifacts:reports), per job. The shell executor runs
    # the jobs one after another in the project directory (--concurrency 1; --shell-isolation does not
    # export these reports in 4.62.0), so each export holds that job's own report files.
    artifacts = repo / ".gitlab-ci-local" / "artifacts"
    for entry in ("unit", "integration"):
        (job_dir,) = [d for d in artifacts.iterdir() if entry in d.name]
        dotenv = (job_dir / ".gitlab-ci-reports" / "dotenv" / "ci-runner.env").read_text()
        assert dotenv.startswith("CI_RUNNER_EXIT_CODE=0\n")
        assert f"CI_RUNNER_STATE_{entry.upper()}=COMPLETED\n" in dotenv
        junit = (job_dir / "ci-runner-junit.xml").read_text()
        assert f'name="{entry}"' in junit and junit.count("<testcase") == 1 + 2
        job_log = next((repo / ".gitlab-ci-local" / "output").glob(f"*{entry}*.log")).read_text()
        # gitlab-ci-local's log file keeps the markers (its log file turns the carriage return into a newline).
        assert re.search(rf"\x1b\[0Ksection_start:\d+:ci_runner_{entry}[\r\n]?\x1b\[0Kci-runner: {entry} \(Slurm job \d+\)",
                         job_log), job_log
        assert re.search(rf"\x1b\[0Ksection_end:\d+:ci_runner_{entry}[\r\n]?\x1b\[0K", job_log), job_log


def jobs_listed(log: str) -> set[str]:
    """Job names of `gitlab-ci-local --list` (rules evaluated): the first column below the header."""
    lines = log.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name "))
    return {line.split()[0] for line in lines[header + 1:] if line.strip()}


@pytest.mark.slow  # a whole pipeline through gitlab-ci-local: 8 s and more
def test_the_component_project_tests_its_component_and_releases_on_a_version_tag(tmp_path: Path) -> None:
    repo = tmp_path / "ci-runner-component"
    shutil.copytree(ROOT / "gitlab-templates", repo)
    # The local component (`@$CI_COMMIT_SHA` of this project): gitlab-ci-local reads templates/ here.
    git_checkout(repo, origin="http://127.0.0.1:9/hpc/ci-runner.git")
    try:
        log = run_gitlab_ci_local(repo, {"GITLAB_CI": "true"}, "component-test")
    finally:
        pid_file = repo / "sandbox.pid"  # the job's sandbox outlives it under the shell executor
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    assert " PASS  component-test" in log, log
    dotenv = next((repo / ".gitlab-ci-local" / "artifacts").glob("*component-test*/.gitlab-ci-reports/dotenv/ci-runner.env"))
    assert dotenv.read_text().startswith("CI_RUNNER_EXIT_CODE=0\n")
    listed = {tag: jobs_listed(run_gitlab_ci_local(repo, {"CI_COMMIT_TAG": tag} if tag else {}, "--list"))
              for tag in ("", "1.2.3", "v1.2.3")}
    assert listed[""] == listed["v1.2.3"] == {"component-test"}
    assert listed["1.2.3"] == {"component-test", "release"}
