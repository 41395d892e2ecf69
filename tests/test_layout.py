"""Remote layout of an entry: `<workdir>/<run_id>/<entry>/...`, and the path safety rules."""

from __future__ import annotations

import pytest

from ci_runner.errors import ConfigError, UsageError
from ci_runner.layout import EntryLayout, check_remote_dir, entry_layout


def test_layout_paths() -> None:
    layout = entry_layout("/scratch/me/ci-runner/", "gh-123-1-test", "gcc-4")
    assert layout == EntryLayout(
        root="/scratch/me/ci-runner/gh-123-1-test/gcc-4",
        src="/scratch/me/ci-runner/gh-123-1-test/gcc-4/src",
        archive="/scratch/me/ci-runner/gh-123-1-test/gcc-4/source.tar.gz",
        output="/scratch/me/ci-runner/gh-123-1-test/gcc-4/slurm-%j.out",
    )
    assert layout.body == "/scratch/me/ci-runner/gh-123-1-test/gcc-4/ci-runner-job.sh"


def test_output_path_expands_job_id() -> None:
    layout = entry_layout("/w", "r", "e")
    assert layout.output_path("4711") == "/w/r/e/slurm-4711.out"
    assert layout.output_path(12) == "/w/r/e/slurm-12.out"
    with pytest.raises(UsageError, match="job id"):
        layout.output_path("1;rm")


def test_workdir_is_normalised() -> None:
    assert check_remote_dir("//scratch//me/") == "/scratch/me"
    assert check_remote_dir("/") == "/"
    assert entry_layout("/", "r", "e").root == "/r/e"


@pytest.mark.parametrize(
    "workdir, message",
    [
        ("scratch/me", "absolute"),
        ("~/ci", "absolute"),
        ("/scratch/../etc", r"'\.\.'"),
        ("/scratch/./x", r"'\.'"),
        ("/scratch/my dir", "not allowed"),
        ("/scratch/$(touch x)", "not allowed"),
        ("/scratch/`id`", "not allowed"),
        ("/scratch/a'b", "not allowed"),
        ('/scratch/a"b', "not allowed"),
        ("/scratch/a;b", "not allowed"),
        ("/scratch/a|b", "not allowed"),
        ("/scratch/a\nb", "not allowed"),
        ("/scratch/%u", "not allowed"),  # sbatch would expand it in --output
        ("/scratch/a*b", "not allowed"),
    ],
)
def test_unsafe_workdir_is_a_config_error(workdir: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        entry_layout(workdir, "run", "entry")


@pytest.mark.parametrize("run_id", ["", ".", "..", "a/b", "a b", "a$b", "x\n"])
def test_unsafe_run_id_is_a_usage_error(run_id: str) -> None:
    with pytest.raises(UsageError, match="run id"):
        entry_layout("/w", run_id, "entry")


@pytest.mark.parametrize("name", ["", "..", "a/b", "gcc 4", "gcc;4", "é"])
def test_unsafe_entry_name_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="entry name"):
        entry_layout("/w", "run", name)
