"""The run state file: round trip, atomic replace, no secrets, helpful errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ci_runner import statefile
from ci_runner.errors import UsageError
from ci_runner.statefile import EntryState, RunState, StateFile


def _state() -> RunState:
    return RunState(
        run_id="gh-123-1", system="local", workdir="/scratch/ci", created=1700000000.0,
        entries={
            "gcc-1": EntryState(job_name="ci-gh-123-1-gcc-1", remote_dir="/scratch/ci/gh-123-1/gcc-1", system="local"),
            "gcc-2": EntryState(job_name="ci-gh-123-1-gcc-2", remote_dir="/scratch/ci/gh-123-1/gcc-2", system="local",
                                job_id="42", output_path="/scratch/ci/gh-123-1/gcc-2/slurm-42.out", offset=17,
                                state="RUNNING"),
        },
    )


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s" / "run.json"
    statefile.save(path, _state())
    assert statefile.load(path) == _state()


def test_update_saves_at_once_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = statefile.default_path("gh-123-1", tmp_path)
    handle = StateFile.create(path, _state())
    handle.update("gcc-2", offset=99, state="COMPLETED", finished=True, exit_code=0, outcome=0)
    again = statefile.load(path)
    assert again.entries["gcc-2"].offset == 99
    assert again.entries["gcc-2"].finished
    assert list(again.unfinished()) == ["gcc-1"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["gh-123-1.json"]


def test_replace_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    """The inode changes on every save: a reader holding the old file never sees a partial write."""
    path = tmp_path / "run.json"
    handle = StateFile.create(path, _state())
    before = os.stat(path).st_ino
    with open(path, encoding="utf-8") as reader:
        handle.update("gcc-1", job_id="7", state="PENDING")
        assert json.loads(reader.read())["entries"]["gcc-1"]["job_id"] is None
    assert os.stat(path).st_ino != before
    assert statefile.load(path).entries["gcc-1"].job_id == "7"


def test_contains_only_known_keys(tmp_path: Path) -> None:
    """Nothing but ids, names, paths, offsets and states: no place for a token or an env value."""
    path = tmp_path / "run.json"
    statefile.save(path, _state())
    document = json.loads(path.read_text())
    assert set(document) == {"version", "run_id", "system", "workdir", "created", "entries"}
    assert set(document["entries"]["gcc-1"]) == {
        "job_name", "remote_dir", "system", "job_id", "output_path", "offset", "state", "finished",
        "exit_code", "outcome", "submitted_at"}


def test_missing_and_invalid_files_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="state file not found"):
        statefile.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1}')
    with pytest.raises(UsageError, match="not a ci-runner state file"):
        statefile.load(bad)


def test_newest_picks_the_latest_file(tmp_path: Path) -> None:
    assert statefile.newest(tmp_path) is None
    first = statefile.default_path("a", tmp_path)
    second = statefile.default_path("b", tmp_path)
    statefile.save(first, _state())
    statefile.save(second, _state())
    os.utime(first, (1, 1))
    assert statefile.newest(tmp_path) == second
