"""Before anything is submitted, a wrong setting fails fast and says what to check; after the first
submit the configured `api_retry_limit` is in force again (a FirecREST restart mid-run costs nothing).

The policy in force is read from the Cluster at the moment of each call (a wrapper around
`Cluster.system_info` / `Cluster.submit`), not from a wall clock.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from helpers.checkouts import git_checkout

from ci_runner.commands import connect, run
from ci_runner.cluster import Cluster, RetryPolicy
from ci_runner.errors import InfraError, UsageError

CONFIG = """\
version: 1
system: local
checkout: none
api_retry_limit: 90s
sbatch: {partition: debug, time: 1m}
script: echo hello from the job
"""
CI_VARIABLES = ("GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILD_TAG")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local git checkout with the config, as the current directory; no CI variables."""
    repo = tmp_path / "project"
    repo.mkdir()
    (repo / ".ci-runner.yml").write_text(CONFIG)
    git_checkout(repo)
    monkeypatch.chdir(repo)
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return repo


@pytest.fixture
def policies(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[RetryPolicy]]:
    """The retry policy in force at each system_info / submit call."""
    seen: dict[str, list[RetryPolicy]] = {"system_info": [], "submit": []}
    for name in seen:
        original = getattr(Cluster, name)

        async def spy(self: Cluster, *args: object, _name: str = name, _original: object = original,
                      **kwargs: object) -> object:
            seen[_name].append(self.retry)
            return await _original(self, *args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(Cluster, name, spy)
    return seen


def use(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in ("FIRECREST_API_KEY", "FIRECREST_SYSTEM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.slow  # a run's retries against a closed port: 6-8 s each
@pytest.mark.parametrize("broken", ["FIRECREST_URL", "AUTH_TOKEN_URL"])
@pytest.mark.parametrize("backend_name", ["local"])
def test_a_closed_port_before_the_first_submit_fails_fast_and_names_what_to_check(
        broken: str, project: Path, sandbox: object, policies: dict[str, list[RetryPolicy]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(sandbox.env())  # type: ignore[attr-defined]
    tried = f"http://127.0.0.1:{closed_port()}" + ("/auth/token" if broken == "AUTH_TOKEN_URL" else "")
    env[broken] = tried
    use(monkeypatch, env)
    with pytest.raises(InfraError) as raised:
        run.run(run.RunRequest(config_path=".ci-runner.yml"))
    (policy,) = policies["system_info"]
    assert policy.max_total == connect.PRE_SUBMIT_RETRY_LIMIT == 15
    assert policies["submit"] == []
    message = str(raised.value)
    assert tried in message  # what was tried
    for setting in ("FIRECREST_URL", "AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET",
                    "system name", "'local'", "Nothing was submitted"):
        assert setting in message, message
    assert env["FIRECREST_CLIENT_SECRET"] not in message


@pytest.mark.parametrize("backend_name", ["local"])
def test_a_wrong_secret_or_system_is_a_usage_error_with_the_same_advice(
        project: Path, sandbox: object, monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(sandbox.env(), FIRECREST_CLIENT_SECRET="wrong")  # type: ignore[attr-defined]
    use(monkeypatch, env)
    with pytest.raises(UsageError) as raised:
        run.run(run.RunRequest(config_path=".ci-runner.yml"))
    assert "HTTP 401" in str(raised.value) and "FIRECREST_CLIENT_SECRET" in str(raised.value)
    use(monkeypatch, dict(sandbox.env()))  # type: ignore[attr-defined]
    with pytest.raises(UsageError) as raised:
        run.run(run.RunRequest(config_path=".ci-runner.yml", system="nope"))
    assert "no system named 'nope'" in str(raised.value) and "`ci-runner systems` lists them" in str(raised.value)


def test_after_the_first_contact_the_configured_limit_is_back(
        project: Path, policies: dict[str, list[RetryPolicy]], monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, {})
    assert run.run(run.RunRequest(config_path=".ci-runner.yml", sandbox=True,
                                                sandbox_backend="local")) == 0
    assert [p.max_total for p in policies["system_info"]] == [15]
    assert [p.max_total for p in policies["submit"]] == [90]  # the config's api_retry_limit
    assert os.getcwd() == str(project)
