"""The container image, built from the real Dockerfile and run, and what the image build relies on.

There is no registry here: ../shared/image/make-base.sh builds a stand-in for the Dockerfile's base
(Debian with Python, by buildah and mmdebstrap from Debian's packages; its header says what it is and
is not), then `buildah bud` builds the Dockerfile as it is, and the test runs `ci-runner --help` and a
`ci-runner run --sandbox` in a git checkout inside the container, as the image's user, on a checkout
owned by another uid (as a CI's clone is). Skipped without ../shared (a user's machine), never in CI.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Iterator

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from helpers.checkouts import git_checkout

ROOT = Path(__file__).resolve().parents[2]
MAKE_BASE = ROOT.parent / "shared" / "image" / "make-base.sh"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE_USER = "10001:10001"
OTHER_UID = 54321


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def closure(extras: set[str]) -> dict[str, list[Requirement]]:
    """Every distribution that ci-runner with `extras` needs (as installed here), with the
    requirements on it; markers are evaluated for this interpreter and the extras asked for."""
    needed: dict[str, list[Requirement]] = {}
    visited: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements were followed
    todo = [("ci-runner", extra) for extra in {"", *extras}]
    while todo:
        owner, extra = todo.pop()
        if (owner, extra) in visited:
            continue
        visited.add((owner, extra))
        for text in metadata.requires(owner) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            name = canonicalize_name(requirement.name)
            if name == "ci-runner":
                continue
            needed.setdefault(name, []).append(requirement)
            todo += [(name, e) for e in {"", *requirement.extras}]
    return needed


def test_constraints_pin_exactly_what_the_image_installs() -> None:
    """constraints.txt is current: the dependencies of ci-runner[sandbox], each at a version that
    every requirement on it accepts, and nothing else."""
    pins = constraints()
    needed = closure({"sandbox"})
    assert set(needed) == set(pins), (f"missing: {sorted(set(needed) - set(pins))}; "
                                      f"not needed: {sorted(set(pins) - set(needed))}")
    for name, requirements in needed.items():
        for requirement in requirements:
            assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]}: {requirement}"


def test_dockerfile_facts() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG VERSION={VERSION}\n" in dockerfile
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile
    assert "org.opencontainers.image.source=" in dockerfile
    assert f"\nUSER {IMAGE_USER}\n" in dockerfile
    assert "git config --system --add safe.directory '*'" in dockerfile
    assert "--constraint constraints.txt" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text()
    for copied in re.findall(r"^COPY (.*) \S+$", dockerfile, re.M):
        for name in copied.split():
            assert f"!{name}" in ignored or f"!{name}/" in ignored, f"{name} is not in the build context"


def buildah(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The Dockerfile built on the stand-in base; removed afterwards (the base is kept)."""
    if not MAKE_BASE.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{MAKE_BASE} is missing in CI: the container test must run there")
        pytest.skip("no ../shared/image/make-base.sh (the project's development setup) on this machine")
    base = subprocess.run(["bash", str(MAKE_BASE)], capture_output=True, text=True, timeout=1800)
    assert base.returncode == 0, base.stdout + base.stderr
    name = f"localhost/ci-runner-test:{secrets.token_hex(4)}"
    built = buildah("bud", "--isolation", "chroot", "--pull=never", "--build-arg", f"VERSION={VERSION}",
                    "-t", name, str(ROOT), timeout=1800)
    assert built.returncode == 0, built.stdout[-5000:] + built.stderr[-5000:]
    try:
        yield name
    finally:
        buildah("rmi", "-f", name)


@pytest.fixture
def container(image: str) -> Iterator[str]:
    started = buildah("from", "--pull=never", image)
    assert started.returncode == 0, started.stderr
    name = started.stdout.strip()
    try:
        yield name
    finally:
        buildah("rm", name)


@pytest.mark.slow
def test_image_metadata(image: str) -> None:
    inspected = json.loads(buildah("inspect", "--type", "image", image).stdout)
    config = inspected["OCIv1"]["config"]
    assert config["User"] == IMAGE_USER
    assert config["Entrypoint"] == ["ci-runner"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.licenses"] == "BSD-3-Clause"


@pytest.mark.slow
def test_image_runs_ci_runner_as_its_user_on_a_checkout_of_another_uid(container: str, tmp_path: Path) -> None:
    helped = buildah("run", "--isolation", "chroot", container, "--", "ci-runner", "--help", timeout=120)
    assert helped.returncode == 0 and "Run CI tests as Slurm jobs" in helped.stdout, helped.stderr
    who = buildah("run", "--isolation", "chroot", container, "--", "id", "-u", timeout=60)
    assert who.stdout.strip() == "10001"
    # A checkout like a CI's: another uid owns it (writable, as the CI's job directory is).
    project = tmp_path / "project"
    shutil.copytree(ROOT / "examples", project / "examples")
    git_checkout(project)
    copied = buildah("copy", "--chown", f"{OTHER_UID}:{OTHER_UID}", container, str(project), "/work/project")
    assert copied.returncode == 0, copied.stderr
    opened = buildah("run", "--isolation", "chroot", "--user", "0:0", container, "--",
                     "chmod", "-R", "a+rwX", "/work/project")
    assert opened.returncode == 0, opened.stderr
    # 600 requests a minute: the embedded sandbox enforces the run's budget as its quota, and at the
    # default 10/min this run takes 2 minutes that say nothing about the image (the README quick-start
    # test runs the default).
    ran = buildah("run", "--isolation", "chroot", "--workingdir", "/work/project", container, "--",
                  "ci-runner", "run", "--sandbox", "--config", "examples/realistic.yml",
                  "--requests-per-minute", "600", timeout=600)
    assert ran.returncode == 0, ran.stdout[-8000:] + ran.stderr[-4000:]
    assert "ci-runner: all 4 entries passed; exit code 0" in ran.stdout, ran.stdout[-8000:]
