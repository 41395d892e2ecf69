"""How the slurm backend reads `scontrol show job -o` lines (recorded on this machine's Slurm 22.05)."""

from __future__ import annotations

from ci_runner.sandbox.backends.base import job_dict
from ci_runner.sandbox.backends.slurm import duration_seconds, job_record, parse_scontrol_line

PENDING = (
    "JobId=1 JobName=sbatch UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 "
    "Account=(null) QOS=(null) JobState=PENDING Reason=BeginTime Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:01:00 TimeMin=N/A SubmitTime=1795562751 "
    "EligibleTime=1795562756 AccrueTime=Unknown StartTime=1795562756 EndTime=1795562816 Deadline=N/A "
    "SuspendTime=None SecsPreSuspend=0 LastSchedEval=1795562751 Scheduler=Main Partition=debug "
    "AllocNode:Sid=localhost:3311 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1 NumCPUs=1 "
    "NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=23081M,node=1,billing=1 Socks/Node=* "
    "NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) "
    "DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) "
    "WorkDir=/tmp/my work StdErr=/tmp/my work/o-1.out StdIn=/dev/null StdOut=/tmp/my work/o-1.out Power= "
)


def test_values_with_spaces_and_keys_with_colons_and_slashes() -> None:
    fields = parse_scontrol_line(PENDING)

    assert fields["WorkDir"] == "/tmp/my work"
    assert fields["StdOut"] == "/tmp/my work/o-1.out"
    assert fields["AllocNode:Sid"] == "localhost:3311"
    assert fields["CPUs/Task"] == "1"
    assert fields["TRES"] == "cpu=1,mem=23081M,node=1,billing=1"
    assert fields["NodeList"] == "" and fields["Power"] == ""


def test_pending_job_has_null_exit_code_and_slurms_estimated_start_and_end_like_the_real_server() -> None:
    """Measured on the real server: a job held by --begin shows squeue's estimate (start = begin time,
    end = begin + limit); one waiting for resources or priority (StartTime=Unknown) shows nulls."""
    record = job_record(parse_scontrol_line(PENDING), None, "local")
    body = job_dict(record)

    assert body["status"] == {"state": "PENDING", "stateReason": "BeginTime", "exitCode": None, "interruptSignal": None}
    assert body["time"] == {"elapsed": 0, "start": 1795562756, "end": 1795562816, "suspended": None, "limit": 60}
    waiting = PENDING.replace("Reason=BeginTime", "Reason=Priority").replace(
        "StartTime=1795562756 EndTime=1795562816", "StartTime=Unknown EndTime=Unknown")
    assert job_dict(job_record(parse_scontrol_line(waiting), None, "local"))["time"] == {
        "elapsed": 0, "start": None, "end": None, "suspended": None, "limit": 60}
    running = PENDING.replace("JobState=PENDING Reason=BeginTime", "JobState=RUNNING Reason=None").replace(
        "RunTime=00:00:00", "RunTime=00:00:02")
    assert job_dict(job_record(parse_scontrol_line(running), None, "local"))["time"] == {
        "elapsed": 2, "start": 1795562756, "end": None, "suspended": 0, "limit": 60}
    assert (body["account"], body["nodes"], body["user"], body["group"]) == ("(null)", "", "root", "root")
    assert body["priority"] == 4294901759


def test_cancelled_job_reads_cancelled_by_the_uid_that_cancelled_it() -> None:
    line = (
        PENDING.replace("JobState=PENDING Reason=BeginTime", "JobState=CANCELLED Reason=None")
        .replace("ExitCode=0:0", "ExitCode=0:15")
        .replace("RunTime=00:00:00", "RunTime=00:00:04")
        .replace("TimeLimit=00:01:00", "TimeLimit=365-00:00:00")
        .replace("NodeList= ", "NodeList=vm ")
    )
    body = job_dict(job_record(parse_scontrol_line(line), 1001, "local"))

    assert body["status"] == {"state": "CANCELLED by 1001", "stateReason": "None", "exitCode": 0, "interruptSignal": 15}
    assert body["time"] == {"elapsed": 4, "start": 1795562756, "end": 1795562816, "suspended": 0, "limit": None}
    assert (body["account"], body["nodes"]) == ("", "vm")


def test_durations() -> None:
    assert duration_seconds("00:01:00") == 60
    assert duration_seconds("1-02:03:04") == 93784
    assert duration_seconds("05:06") == 306
    assert duration_seconds("UNLIMITED") is None
    assert duration_seconds("Partition_Limit") is None
