"""Slurm state → outcome table, terminal/pending sets, pending reasons."""

from __future__ import annotations

import pytest

from ci_runner.slurm_states import (
    Outcome, classify, describe_pending, hopeless_pending, is_infrastructure, is_pending, is_terminal, worst,
)

O = Outcome


@pytest.mark.parametrize(
    ("state", "exit_code", "signal", "expected"),
    [
        ("COMPLETED", 0, 0, O.PASSED),
        ("COMPLETED", None, None, O.PASSED),
        ("COMPLETED", 3, 0, O.FAILED),
        ("COMPLETED", 0, 9, O.FAILED),
        ("FAILED", 3, 0, O.FAILED),
        ("FAILED", 0, 0, O.FAILED),
        ("OUT_OF_MEMORY", 0, 0, O.FAILED),
        ("SPECIAL_EXIT", 5, 0, O.FAILED),
        ("TIMEOUT", 0, 15, O.TIMEOUT),
        ("TIMEOUT", 0, 0, O.TIMEOUT),
        ("CANCELLED by 1001", 0, 0, O.INFRA),
        ("CANCELLED", 0, 15, O.INFRA),
        ("NODE_FAIL", 0, 0, O.INFRA),
        ("BOOT_FAIL", None, None, O.INFRA),
        ("PREEMPTED", 0, 0, O.INFRA),
        ("DEADLINE", 0, 0, O.INFRA),
        ("REVOKED", 0, 0, O.INFRA),
        ("RUNNING", 0, 0, O.INFRA),
        ("WEIRD_NEW_STATE", 0, 0, O.INFRA),
        ("", None, None, O.INFRA),
        ("completed", 0, 0, O.PASSED),
    ],
)
def test_outcome_table(state: str, exit_code: int | None, signal: int | None, expected: Outcome) -> None:
    assert classify(state, exit_code, signal).outcome is expected


def test_cancelled_by_the_ci_is_cancelled() -> None:
    assert classify("CANCELLED by 1001", 0, 15, ci_cancelled=True).outcome is O.CANCELLED
    assert classify("CANCELLED", None, None, ci_cancelled=True).outcome is O.CANCELLED
    # ci_cancelled only matters for CANCELLED: a job that finished before the cancel keeps its result
    assert classify("COMPLETED", 0, 0, ci_cancelled=True).outcome is O.PASSED


def test_unknown_state_names_the_text() -> None:
    verdict = classify("WEIRD_NEW_STATE", 0, 0)
    assert verdict.outcome is O.INFRA and "WEIRD_NEW_STATE" in verdict.summary
    assert "exit code 3" in classify("FAILED", 3, 0).summary


def test_exit_codes_and_severity() -> None:
    assert [o.exit_code for o in (O.PASSED, O.FAILED, O.CONFIG, O.INFRA, O.TIMEOUT, O.CANCELLED)] == [
        0, 1, 2, 3, 4, 130]
    order = [O.PASSED, O.FAILED, O.TIMEOUT, O.INFRA, O.CONFIG, O.CANCELLED]
    assert sorted(reversed(order), key=lambda o: o.severity) == order
    assert worst([]) is O.PASSED
    assert worst([O.PASSED, O.TIMEOUT, O.FAILED]) is O.TIMEOUT
    assert worst([O.INFRA, O.TIMEOUT]) is O.INFRA
    assert worst(iter([O.CANCELLED, O.INFRA, O.PASSED])) is O.CANCELLED
    assert worst([O.INFRA, O.CONFIG, O.FAILED]) is O.CONFIG  # sbatch refused one entry: fix the config


TERMINAL = ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "CANCELLED by 1001", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"]
NOT_TERMINAL = ["PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                "RESIZING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SOMETHING_NEW", ""]


@pytest.mark.parametrize("state", TERMINAL)
def test_terminal(state: str) -> None:
    assert is_terminal(state)
    assert not is_pending(state)


@pytest.mark.parametrize("state", NOT_TERMINAL)
def test_not_terminal(state: str) -> None:
    assert not is_terminal(state)


def test_pending_and_infrastructure() -> None:
    assert all(is_pending(s) for s in ["PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"])
    assert not any(is_pending(s) for s in ["RUNNING", "CONFIGURING", "COMPLETED"])
    assert all(is_infrastructure(s) for s in ["NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "DEADLINE", "REVOKED"])
    assert not any(is_infrastructure(s) for s in ["FAILED", "TIMEOUT", "CANCELLED by 1", "COMPLETED", "PENDING"])


@pytest.mark.parametrize("reason", ["InvalidAccount", "InvalidQOS", "PartitionTimeLimit", "BadConstraints",
                                    "DependencyNeverSatisfied", "QOSMaxWallDurationPerJobLimit", "(InvalidAccount)"])
def test_hopeless(reason: str) -> None:
    assert hopeless_pending(reason)


@pytest.mark.parametrize("reason", ["None", "Priority", "Resources", "JobHeldUser", "JobHeldAdmin",
                                    "ReqNodeNotAvail, UnavailableNodes:nid[1-3]", "AssocMaxJobsLimit",
                                    "PartitionDown", "", None, "SomethingElse"])
def test_not_hopeless(reason: str | None) -> None:
    assert not hopeless_pending(reason)


def test_describe_pending() -> None:
    assert describe_pending("Priority") == "Priority: other jobs have higher priority"
    assert describe_pending("ReqNodeNotAvail, UnavailableNodes:nid1").startswith("ReqNodeNotAvail, UnavailableNodes")
    assert "unavailable" in describe_pending("ReqNodeNotAvail, UnavailableNodes:nid1")
    assert describe_pending("SomethingElse") == "SomethingElse"
    assert describe_pending(None) == "None: waiting to be scheduled"
