"""Shared fixtures: Slurm detection, the `slurm` marker policy, and the sandbox server.

Policy: a test marked `slurm` runs on real Slurm. Without Slurm it is skipped on a user's machine,
but fails in CI (env CI set), where .ci/run starts Slurm: a silent skip there would hide the very
tests that matter. Which tests are also `slow` without saying so: `pytest_collection_modifyitems`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


def _slurm_works() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and any(s in probe.stdout for s in ("idle", "mix", "alloc"))


SLURM_AVAILABLE = _slurm_works()


@pytest.fixture(scope="session")
def slurm_available() -> bool:
    return SLURM_AVAILABLE


@pytest.fixture(autouse=True)
def _slurm_policy(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("slurm") is None or SLURM_AVAILABLE:
        return
    if IN_CI:
        pytest.fail("this test needs Slurm and CI is set: .ci/run must start Slurm (start-local-slurm.sh)")
    pytest.skip("Slurm is not available on this machine")


TESTS = Path(__file__).resolve().parent
SLOW_KINDS = ("e2e", "reliability")  # whole `ci-runner run`s as processes: seconds each, minutes together
ON_SLURM = ("slurm", "real_firecrest", "shares_slurm")  # markers of the tests whose jobs run on this machine's Slurm
# Modules whose tests share what a module fixture made (the image; the action's venv, which a later
# test reuses) run in one process; the action's has Slurm variants, so it joins the slurm group.
ONE_PROCESS_MODULES = {"test_container.py": "image", "test_action_steps.py": "slurm"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow` also for every test of tests/e2e and tests/reliability and every `slurm` test (real Slurm
    jobs on a shared Slurm: 5-15 s each), so that `-m "not slow"` runs in under 2 minutes.

    With `-n 2` the suite runs in two processes (pytest-xdist, `--dist loadgroup`): every test whose jobs run on
    this machine's Slurm is in the group `slurm`, so they run one after another as they did in one
    process (2 Slurm CPUs: two at once would queue each other's jobs and miss their time limits),
    while the rest (the local backend, pure tests, linters, builds) runs in the other process."""
    slow_dirs = {TESTS / kind for kind in SLOW_KINDS}
    for item in items:
        if slow_dirs & set(item.path.resolve().parents) or item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.slow)
        if item.path.name in ONE_PROCESS_MODULES:
            item.add_marker(pytest.mark.xdist_group(ONE_PROCESS_MODULES[item.path.name]))
        elif any(item.get_closest_marker(name) is not None for name in ON_SLURM):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(autouse=True)
def _xdist_group_took(request: pytest.FixtureRequest) -> None:
    """Under `-n 2`, fail a grouped test whose group did not take: pytest-xdist 3.8 marks a test's
    group in its node id, which pytest 9.2 ignores (pytest-xdist#1386); the Slurm tests would then
    run two at a time and fail on each other's jobs, for reasons that are hard to see."""
    node = request.node
    if getattr(request.config.option, "loadgroup", False) and node.get_closest_marker("xdist_group") is not None \
            and "@" not in node.nodeid:
        pytest.fail("pytest-xdist did not keep this test's group (pytest-xdist#1386: this pytest and "
                    "pytest-xdist do not work together): install the test extra's versions "
                    "(pip install '.[test]'), or run in one process (-n 0)", pytrace=False)


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Both sandbox backends; the `slurm` one follows the marker policy above (and is `slow`)."""
    return request.param


@pytest.fixture
def sandbox(backend_name: str, tmp_path: Path) -> Iterator[object]:
    """A running in-process sandbox (FirecREST v2 + token endpoint) on 127.0.0.1 with a fresh root."""
    from ci_runner.sandbox.server import SandboxOptions, start_sandbox

    root = tmp_path / "cluster"
    root.mkdir()
    handle = start_sandbox(SandboxOptions(root=root, backend=backend_name, port=0))
    try:
        yield handle
    finally:
        handle.stop()


def _cancel_leftover_slurm_jobs(base: Path) -> None:
    """Cancel Slurm jobs whose working directory lies under this session's temp dir (a safety net)."""
    listing = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, timeout=15)
    ids = [line.split()[0] for line in listing.stdout.splitlines()
           if len(line.split()) == 2 and line.split()[1].startswith(str(base))]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=15)


@pytest.fixture(scope="session", autouse=True)
def _slurm_session_cleanup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if SLURM_AVAILABLE:
        _cancel_leftover_slurm_jobs(tmp_path_factory.getbasetemp())
