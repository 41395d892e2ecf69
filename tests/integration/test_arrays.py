"""Job arrays: which entries share one submit, the array's script, and how a task is found in the
run's job list whichever way the Slurm behind FirecREST names it (pure code, a fake cluster)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from helpers.listing_cluster import OUT, Clock, ListingCluster, status

from ci_runner import arrays, layout
from ci_runner.ci import CIContext
from ci_runner.config import load
from ci_runner.matrix import expand
from ci_runner.observer import RunObserver
from ci_runner.job_spec import submissions
from ci_runner.render import job_scripts


def test_entries_with_equal_keys_become_tasks_in_order_and_a_lone_entry_stays_a_job() -> None:
    keys = ["a", "b", "a", "c", "a", "b"]
    assert arrays.group_tasks(keys) == [(0, 0), (1, 0), (0, 1), None, (0, 2), (1, 1)]


def test_a_group_over_max_tasks_is_split_and_a_remainder_of_one_is_a_job() -> None:
    assert arrays.group_tasks(["x"] * 5, max_tasks=2) == [(0, 0), (0, 1), (1, 0), (1, 1), None]


@pytest.mark.parametrize("tasks, expected", [([0, 1, 2, 3], "0-3"), ([3], "3"), ([1, 4, 5, 6], "1,4-6"),
                                             ([6, 5, 4, 1, 1], "1,4-6")])
def test_task_range(tasks: list[int], expected: str) -> None:
    assert arrays.task_range(tasks) == expected


def test_the_array_script_runs_the_task_s_own_entry_and_refuses_an_unknown_task(tmp_path: Path) -> None:
    script = arrays.array_script("#SBATCH --job-name=x\n", [("a", "echo entry a\nexit 0\n"),
                                                           ("b", "echo entry b\nexit 5")], [0, 1], "test", 199)
    assert "#SBATCH --array=0-1\n" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    for task, out, code in (("0", "entry a\n", 0), ("1", "entry b\n", 5), ("7", "", 199)):
        done = subprocess.run(["bash", str(path)], env={**os.environ, "SLURM_ARRAY_TASK_ID": task},
                              capture_output=True, text=True, timeout=10)
        assert (done.stdout, done.returncode) == (out, code), task
    assert "no task 7" in done.stderr


def test_a_resubmit_array_holds_only_its_task() -> None:
    script = arrays.array_script("", [("a", "echo a\n"), ("b", "echo b\n")], [1], "test", 199)
    assert "#SBATCH --array=1\n" in script and "echo a" not in script and "echo b" in script


def test_task_ids_and_the_task_id_files() -> None:
    assert layout.task_id("870", 3) == "870_3"
    assert layout.split_task_id("870_3") == ("870", 3)
    assert layout.split_task_id("870") is None and layout.split_task_id("870_[2-3]") is None
    names = ["array+0.870_1.872.id", "unit.5.out", "array+0.870_1.out", "array+12.9_0.10.id", "unit.5.6.id"]
    assert layout.task_job_ids(names) == {"870_1": "872", "9_0": "10"}
    task = layout.array_layout(layout.entry_layout("/w", "r", "unit"), 0, 2)
    assert task.slurm_output == "/w/r/output/array+0.%A_%a.out"
    assert task.output_path("870_2") == "/w/r/output/array+0.870_2.out"
    assert task.output_prefix == "/w/r/output/array+0."
    assert layout.array_id_in(task.output_prefix, "/w/r/output/array+0.870_2.out") == "870"
    assert layout.array_id_in(task.output_prefix, "/w/r/output/array+1.870_2.out") is None
    plain = layout.entry_layout("/w", "r", "unit").output_prefix
    assert layout.array_id_in(plain, "/w/r/output/array+0.870_2.out") is None
    assert layout.is_array_output(task.output) and not layout.is_array_output(layout.entry_layout("/w", "r", "a").output)


CONFIG = """\
version: 1
system: cluster
checkout: none
sbatch: {{time: 5m}}
matrix:
  py: ["3.10", "3.11", "3.12"]
  include:
    - py: "3.13"
      sbatch: {{partition: big}}
script: echo {{{{ py }}}}
"""


def _specs(tmp_path: Path, arrays_on: bool = True) -> list:
    path = tmp_path / "ci.yml"
    path.write_text(CONFIG.format())
    config = load(path)
    ci = CIContext(provider="local", sha="a" * 40, ref="refs/heads/main", repo_url="file:///r", run_id="run1")
    return job_scripts(config, expand(config), ci, "/w", {}, arrays=arrays_on)


def test_entries_with_the_same_options_share_one_array_and_others_keep_their_job(tmp_path: Path) -> None:
    specs = _specs(tmp_path)
    assert [s.layout.array for s in specs] == [(0, 0), (0, 1), (0, 2), None]
    subs = submissions(specs)
    assert [len(s.specs) for s in subs] == [3, 1] and subs[0].is_array and not subs[1].is_array
    script = subs[0].script
    assert script.count("#SBATCH --array=0-2\n") == 1
    assert "#SBATCH --output=/w/run1/output/array+0.%A_%a.out\n" in script
    assert "#SBATCH --time=00:05:00\n" in script
    # Each task exports its own output file and leaves the file that maps A_i to its own job id.
    assert 'CI_RUNNER_OUTPUT=/w/run1/output/array+0."${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-}".out' in script
    assert '"${SLURM_JOB_ID:-}".id' in script
    assert "CI_RUNNER_ENTRY" not in subs[0].env  # the submit's environment is what all tasks share
    assert subs[1].script == specs[3].script and "--array" not in subs[1].script


def test_arrays_can_be_turned_off(tmp_path: Path) -> None:
    specs = _specs(tmp_path, arrays_on=False)
    assert all(s.layout.array is None for s in specs) and len(submissions(specs)) == 4


# -- finding a task in the job list ----------------------------------------------------------------

def _observer(jobs: list, files: dict[str, int]) -> tuple[RunObserver, ListingCluster]:
    cluster, clock = ListingCluster(), Clock()
    cluster.jobs = jobs
    cluster.files = files
    return RunObserver(cluster, "ci-runner-run", OUT, clock), cluster


def test_without_accounting_a_task_is_found_by_its_own_job_id_from_its_id_file() -> None:
    """Slurm without accounting (the real server's harness, the sandbox): the tasks are listed by
    their own ids, the array's id stands for the pending rest, then for the last task."""
    observer, cluster = _observer([status("871"), status("870", "PENDING")],
                                  {"array+0.870_0.out": 5, "array+0.870_0.871.id": 0})

    async def ask() -> list:
        return [await observer.job(layout.task_id("870", i), 0.0) for i in range(3)]

    first, second, third = asyncio.run(ask())
    assert first is not None and first.job_id == "871" and first.state == "RUNNING"
    assert second is not None and second.state == "PENDING" and third is not None and third.state == "PENDING"
    assert observer.addressable("870_0") == "871" and observer.addressable("870_1") == "870"
    assert observer.array_started("870_1") and not observer.array_started("871")
    assert cluster.calls.count("ls") == 1  # the tasks not known to have started share one listing


def test_the_last_task_takes_the_array_id_and_a_task_not_listed_is_not_taken_for_another() -> None:
    files = {"array+0.870_0.871.id": 0, "array+0.870_2.870.id": 0}
    observer, _ = _observer([status("871", "COMPLETED"), status("870")], files)
    found = asyncio.run(observer.job("870_2", 0.0))
    assert found is not None and found.job_id == "870" and found.state == "RUNNING"
    # Task 1 has no id file and the array's record is a running task, not the pending rest.
    assert asyncio.run(observer.job("870_1", 0.0)) is None


def test_with_accounting_tasks_are_listed_as_a_i_and_the_pending_rest_as_a_range() -> None:
    observer, _ = _observer([status("870_0", "COMPLETED"), status("870_[1-3]", "PENDING")], {})
    done = asyncio.run(observer.job("870_0", 0.0))
    waiting = asyncio.run(observer.job("870_2", 0.0))
    assert done is not None and done.state == "COMPLETED"
    assert waiting is not None and waiting.state == "PENDING"
    assert asyncio.run(observer.job("871_0", 0.0)) is None  # another array's task


def test_a_plain_job_is_looked_up_as_before() -> None:
    observer, cluster = _observer([status("5")], {})
    assert asyncio.run(observer.job("5", 0.0)) is not None and asyncio.run(observer.job("6", 0.0)) is None
    assert "ls" not in cluster.calls and observer.addressable("5") == "5"


def test_a_task_in_neither_list_for_a_cycle_keeps_its_last_state_never_another_task_s() -> None:
    """Slurm without accounting: task 1 was pending under the array's record; then the last task took
    the array's id (RUNNING) before task 1's id file was listed. Task 1 is not given the array's state."""
    observer, cluster = _observer([status("870", "PENDING")], {})
    assert asyncio.run(observer.job("870_1", 0.0)).state == "PENDING"
    # 870 is now the last task, RUNNING but not yet at its first command (no id file yet)
    cluster.jobs = [status("872"), status("870", "RUNNING")]
    observer.clock.now += 5  # type: ignore[attr-defined]
    again = asyncio.run(observer.job("870_1", observer.clock()))
    assert again is not None and again.state == "PENDING"
    observer.clock.now += 61  # type: ignore[attr-defined]
    assert asyncio.run(observer.job("870_1", observer.clock())) is None  # then it is really not there


def test_an_array_cancelled_before_a_task_started_gives_that_task_the_final_state() -> None:
    observer, _ = _observer([status("871", "COMPLETED"), status("870", "CANCELLED by 0")],
                            {"array+0.870_0.871.id": 0})
    found = asyncio.run(observer.job("870_1", 0.0))
    assert found is not None and found.state == "CANCELLED by 0"


def test_a_task_that_started_after_the_job_list_was_sent_is_still_pending_in_it() -> None:
    """The listing (sent after the job list) has the task's id file, the job list does not have its
    job yet: in that list the task was one of the array's pending ones."""
    observer, _ = _observer([status("871"), status("870", "PENDING")],
                            {"array+0.870_0.871.id": 0, "array+0.870_1.872.id": 0})
    found = asyncio.run(observer.job("870_1", 0.0))
    assert found is not None and found.state == "PENDING"
