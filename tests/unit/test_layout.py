"""Remote layout of a run and its entries (`<workdir>/<run_id>/...`), and the path safety rules."""

from __future__ import annotations

import pytest

from ci_runner.errors import ConfigError, UsageError
from ci_runner.layout import EntryLayout, RunLayout, check_remote_dir, entry_layout, output_prefix


def test_layout_paths() -> None:
    layout = entry_layout("/scratch/me/ci-runner/", "gh-123-1-test", "gcc-4")
    run = RunLayout(root="/scratch/me/ci-runner/gh-123-1-test",
                    output_dir="/scratch/me/ci-runner/gh-123-1-test/output",
                    archive="/scratch/me/ci-runner/gh-123-1-test/source.tar.gz")
    assert layout == EntryLayout(
        run=run,
        root="/scratch/me/ci-runner/gh-123-1-test/gcc-4",
        src="/scratch/me/ci-runner/gh-123-1-test/gcc-4/src",
        output="/scratch/me/ci-runner/gh-123-1-test/output/gcc-4.%j.out",
    )
    assert layout.body == "/scratch/me/ci-runner/gh-123-1-test/gcc-4/ci-runner-job.sh"
    assert layout.archive == run.archive and layout.working_dir == run.output_dir  # shared by every entry
    assert entry_layout("/scratch/me/ci-runner", "gh-123-1-test", "clang-4").run == run
    assert output_prefix(layout.root) == "/scratch/me/ci-runner/gh-123-1-test/output/gcc-4."
    assert layout.output_path(7).startswith(output_prefix(layout.root))


def test_output_path_expands_job_id() -> None:
    layout = entry_layout("/w", "r", "e")
    assert layout.output_path("4711") == "/w/r/output/e.4711.out"
    assert layout.output_path(12) == "/w/r/output/e.12.out"
    with pytest.raises(UsageError, match="job id"):
        layout.output_path("1;rm")


def test_an_entry_cannot_take_the_output_directory_s_name() -> None:
    with pytest.raises(ConfigError, match="reserved"):
        entry_layout("/w", "r", "output")


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
