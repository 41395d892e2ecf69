"""Orchestration of `ci-runner run`: prepare, submit, follow, decide, fetch back, report.

The run is prepared once (one `mkdir` of its output directory, the source archive unless cached),
then one asyncio task per entry submits and follows its job; all of them share the Cluster's single
request budget, and the job states and output sizes come from the run's `RunObserver` (one job list
and one directory listing per cycle for every entry), so an idle cycle costs two requests whatever
the number of entries; only an output that grew costs a read of its own. What to ask next, and
when, is decided by each job's `poller.Follower`; this module does what it says (the I/O). The state
file records every job id (and every submit in flight) before the job is followed, and the printed
output offset after every print, so `ci-runner cancel` and `ci-runner run --attach` work after the
runner died.

Cancellation (`stop` set by the CLI's SIGINT/SIGTERM handler): every follower is stopped, every
unfinished entry's job is cancelled at once (`cancel.cancel_unfinished`), and the run ends with 130.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from ci_runner import pack as packed
from ci_runner import statefile, states, transfer, workspace
from ci_runner.api import SERVER_OUTPUT_CAP, JobStatus
from ci_runner.cancel import cancel_unfinished, find_job
from ci_runner.config import DEFAULT_MAX_ARTIFACT_SIZE, DEFAULT_MAX_OUTPUT, format_size
from ci_runner.errors import CIRunnerError, InfraError, SubmitRejected, UsageError
from ci_runner.layout import PACK_PREFIX, job_found, split_task_id, task_id
from ci_runner.matrix import Entry
from ci_runner.observer import RunObserver
from ci_runner.poller import (Ask, Clock, Decision, Ending, Finish, FollowLimits, Follower, Next, RunPace, Started,
                              Step, Waiting, queue_seconds)
from ci_runner.render import CHECKOUT_FAILED, JOB_END_LINE, JobSpec, Submission, submissions
from ci_runner.reporters.base import EntryResult
from ci_runner.reporters.text import format_duration
from ci_runner.states import Outcome
from ci_runner.statefile import EntryState, RunState, StateFile
from ci_runner.stream import DEFAULT_TAIL_BYTES, OutputReader
from ci_runner.utf8_offsets import utf8_len

if TYPE_CHECKING:
    from ci_runner.cluster import Cluster
    from ci_runner.config import Config
    from ci_runner.reporters.base import Reporter
    from ci_runner.transfer import SourcePlan

TAIL_LINES = 20
TAIL_LINE_CHARS = 4096        # a summary shows at most this much of one (very long) line


@dataclass(frozen=True)
class RunOptions:
    """Everything `run` needs besides the specs. Durations in seconds."""

    run_id: str
    workdir: str
    state_file: Path
    system: str = ""
    source: SourcePlan | None = None  # checkout: upload
    queue_timeout: float | None = None
    max_concurrent_submits: int = 4
    resubmit: int = 0                # automatic resubmits on infrastructure states
    attach: bool = False             # resume following the jobs of the state file
    artifacts: tuple[str, ...] = ()
    junit: tuple[str, ...] = ()
    artifacts_dir: Path = Path("ci-runner-artifacts")
    cleanup: bool = False
    not_found_grace: float = 60.0    # "job not found" right after submit is normal this long
    cancel_deadline: float = 2.0     # SIGINT/SIGTERM: every cancel request must be sent within this
    max_output: int = DEFAULT_MAX_OUTPUT  # bytes printed per job before skipping to the tail of its output
    max_artifact_size: int = DEFAULT_MAX_ARTIFACT_SIZE  # larger artifacts are skipped with a warning
    tail_bytes: int = DEFAULT_TAIL_BYTES  # most bytes of the tail printed after a job went over max_output
    output_cap: int = SERVER_OUTPUT_CAP  # the system's max_ops_file_size: reads stay under it

    @classmethod
    def from_config(cls, config: Config, **overrides: object) -> RunOptions:
        """Options taken from the configuration; keyword arguments (run_id, workdir, ...) complete/override."""
        values: dict[str, object] = {
            "system": config.system,
            "queue_timeout": config.queue_timeout,
            "resubmit": config.resubmit,
            "artifacts": tuple(config.artifacts) + tuple(g for g in config.junit if g not in config.artifacts),
            "junit": tuple(config.junit),
            "cleanup": config.cleanup,
            "max_output": config.max_output,
            "max_artifact_size": config.max_artifact_size,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class _Attempt:
    """What following one job produced."""

    status: JobStatus | None
    outcome: Outcome
    message: str
    queue_seconds: float | None = None
    run_seconds: float | None = None


@dataclass
class _Entry:
    """Mutable per-entry bookkeeping of the run."""

    spec: JobSpec
    job_id: str | None = None
    output_bytes: int = 0
    submitted_wall: float | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    partial: str = ""  # the end (≤ TAIL_LINE_CHARS) of the printed text after the last newline
    partial_bytes: int = 0  # UTF-8 length of the whole unfinished line (the reporter still holds it)
    limit_warned: bool = False  # the max_output warning was printed for the current job
    status: JobStatus | None = None  # the current job's last known state
    reader: OutputReader | None = None  # the current job's output reader
    pack: _Pack | None = None  # set for a packed job followed like an entry: its output is the stream

    @property
    def name(self) -> str:
        return self.spec.entry.name


@dataclass
class _Pack:
    """A packed job (pack.py) while the run follows it: its entries by step, the stream's
    demultiplexer, and each entry's attempt once its end record (or the job's end) decided it."""

    submission: Submission
    job: _Entry                     # the packed job, followed like an entry: its reader reads the stream
    members: tuple[_Entry, ...]     # by step
    demux: packed.StreamDemux
    decided: dict[str, asyncio.Future[_Attempt]]
    job_text: str = ""              # the job's own lines in the last chunk read (the follower judges them)
    held: dict[int, packed.StepEnd] = field(default_factory=dict)  # ends decided by how the job ends
    task: asyncio.Task[None] | None = None

    def undecided(self) -> list[_Entry]:
        return [self.members[step] for step in self.undecided_steps()]

    def undecided_steps(self) -> list[int]:
        return [step for step, member in enumerate(self.members) if not self.decided[member.name].done()]


class _Run:
    def __init__(self, specs: Sequence[JobSpec], cluster: Cluster, reporter: Reporter,
                 options: RunOptions, stop: asyncio.Event, clock: Clock) -> None:
        self.cluster = cluster
        self.reporter = reporter
        self.options = options
        self.stop = stop
        self.clock = clock
        self.entries = {spec.entry.name: _Entry(spec) for spec in specs}
        self.submit_slots = asyncio.Semaphore(max(1, options.max_concurrent_submits))
        self.pace = RunPace(lambda: cluster.budget.requests_per_minute, cluster.budget.available,
                            self.clock.monotonic)  # the followers' share of the budget
        self.limits = FollowLimits(not_found_grace=options.not_found_grace, queue_timeout=options.queue_timeout)
        first = specs[0]
        self.run_layout = first.layout.run
        self.observer = RunObserver(cluster, first.job_name, self.run_layout.output_dir, clock.monotonic)
        # Job arrays (arrays.py): the entries of array k share one submit, made by the first of them
        self.arrays = {s.specs[0].layout.array[0]: s for s in submissions(specs) if s.is_array}  # type: ignore[index]
        self.array_submits: dict[int, asyncio.Task[str]] = {}
        # Packed jobs (pack.py): the entries of packed job k are its steps, followed by one task
        self.pack_submissions = {s.specs[0].layout.pack[0]: s for s in submissions(specs) if s.is_pack}  # type: ignore[index]
        self.packs: dict[int, _Pack] = {}
        self.state: StateFile

    # -- the whole run -------------------------------------------------------------------------

    async def execute(self) -> int:
        self.state = self._open_state()
        self.reporter.info(f"state file: {self.state.path} (for `ci-runner cancel` and `ci-runner run --attach`)")
        if self.options.source is not None and self.options.source.dirty:
            self.reporter.warning(
                f"the working tree has uncommitted changes; uploading commit {self.options.source.sha[:12]} without them")
        if not self.options.attach:
            await workspace.prepare_run(self.cluster, self.run_layout, self.options.source, self.reporter.info)
        tasks = {name: asyncio.create_task(self._entry(entry), name=f"entry {name}")
                 for name, entry in self.entries.items()}
        stopper = asyncio.create_task(self.stop.wait())
        try:
            pending = set(tasks.values())
            while pending and not self.stop.is_set():
                _, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stopper)
            if self.stop.is_set():
                return await self._cancel_run(tasks)
        except BaseException:
            # A bug or an interrupt must not leak jobs: cancel what was submitted, then re-raise.
            await self._cancel_run(tasks, report=False)
            raise
        finally:
            stopper.cancel()
        results = [task.result() for task in tasks.values()]
        code = states.worst(r.outcome for r in results).exit_code
        self.reporter.run_finished(results, code)
        return code

    def _open_state(self) -> StateFile:
        path = self.options.state_file
        if self.options.attach:
            handle = StateFile.open(path)
            for name, entry in self.entries.items():
                recorded = handle.state.entries.get(name)
                if recorded is not None:
                    entry.job_id = recorded.job_id
                    entry.submitted_wall = recorded.submitted_at
            return handle
        entries = {
            name: EntryState(job_name=entry.spec.job_name, remote_dir=entry.spec.layout.root,
                             system=entry.spec.entry.system)
            for name, entry in self.entries.items()
        }
        state = RunState(run_id=self.options.run_id, system=self.options.system, workdir=self.options.workdir,
                         entries=entries)
        return StateFile.create(path, state)

    async def _cancel_run(self, tasks: dict[str, asyncio.Task[EntryResult]], report: bool = True) -> int:
        """Stop every follower, cancel every job (urgently, in parallel), report CANCELLED entries; 130."""
        pack_tasks = [pack.task for pack in self.packs.values() if pack.task is not None]
        for task in (*tasks.values(), *self.array_submits.values(), *pack_tasks):
            task.cancel()
        await asyncio.gather(*tasks.values(), *self.array_submits.values(), *pack_tasks, return_exceptions=True)
        # an array task is cancelled by its own id once it started, else with its array
        failures = await cancel_unfinished(self.cluster, self.state, self.options.cancel_deadline,
                                           target=self.observer.addressable)
        for name, failure in failures.items():
            self.reporter.error(f"could not cancel the job: {failure}; run `ci-runner cancel "
                                f"--state-file {self.state.path}`", name)
        if not report:
            return Outcome.CANCELLED.exit_code
        results = []
        for name, entry in self.entries.items():
            task = tasks[name]
            if task.done() and not task.cancelled() and task.exception() is None:
                results.append(task.result())  # finished before the signal
                continue
            result = self._result(entry, None, _Attempt(None, Outcome.CANCELLED, "cancelled because the CI cancelled the run"))
            self.reporter.entry_finished(result)
            results.append(result)
        self.reporter.run_finished(results, Outcome.CANCELLED.exit_code)
        return Outcome.CANCELLED.exit_code

    # -- one entry -----------------------------------------------------------------------------

    async def _entry(self, entry: _Entry) -> EntryResult:
        try:
            result = await self._entry_attempts(entry)
        except SubmitRejected as error:
            result = self._result(entry, None, _Attempt(None, Outcome.CONFIG, str(error)))
        except CIRunnerError as error:
            result = await self._lost_track(entry, error)
        if result.outcome is Outcome.PASSED and self.options.cleanup:
            try:
                await workspace.cleanup(self.cluster, entry.spec.layout)
            except CIRunnerError as error:
                self.reporter.warning(f"could not remove {entry.spec.layout.root}: {error}", entry.name)
        self.state.update(entry.name, finished=True, state=result.state, exit_code=result.exit_code,
                          outcome=result.outcome.value)
        self.reporter.entry_finished(result)
        return result

    async def _lost_track(self, entry: _Entry, error: CIRunnerError) -> EntryResult:
        """Following failed (API errors after retries). A job that has ended (as last seen, or as one
        more look at its state says) keeps the verdict of its final state, with a warning that its
        output is incomplete; any other job is cancelled rather than left unobserved, and the entry is
        an infrastructure failure."""
        status = entry.status
        addressable = self.observer.own_job_id(entry.job_id) if entry.job_id is not None else None
        if addressable is not None and (status is None or not states.is_terminal(status.state)):
            try:
                status = await self.cluster.job(addressable) or status
            except CIRunnerError:
                pass  # the API is still failing: the cancel below will say whether it got through
        if entry.job_id is not None and status is not None and states.is_terminal(status.state):
            self._output_incomplete(entry, f"reading it failed: {error}")
            return self._result(entry, status, self._decide(entry, status))
        if entry.job_id is not None:
            await self._abandon(entry.name, entry.job_id)
        return self._result(entry, None, _Attempt(None, Outcome.INFRA, str(error)))

    def _cancel_target(self, job_id: str) -> str | None:
        """What to cancel for the entry's job: the job itself, or for an array task not started yet the
        array, but only while none of its tasks has started (it must not take the others with it)."""
        own = self.observer.own_job_id(job_id)
        if own is not None:
            return own
        return None if self.observer.array_started(job_id) else self.observer.addressable(job_id)

    async def _find_entry_job(self, cluster: Cluster, entry: _Entry) -> str | None:
        """The entry's job after a lost submit answer (`cancel.find_job`; for a task of a job array,
        its task id A_i in the array found)."""
        layout = entry.spec.layout
        found = await find_job(cluster, entry.spec.job_name, layout.root, layout.output)
        return found if found is None or layout.array is None else task_id(found, layout.array[1])

    async def _abandon(self, name: str, job_id: str) -> None:
        """Cancel a job that ci-runner can no longer follow rather than leave it unobserved."""
        target = self._cancel_target(job_id)
        if target is None:
            self.reporter.warning(f"job {job_id} is left in the queue: it is a task of a job array whose other "
                                  f"tasks run, and cannot be cancelled alone before it starts", name)
            return
        try:
            cancelled = await self.cluster.cancel(target)
        except CIRunnerError as error:
            self.reporter.warning(f"could not cancel job {job_id} after losing track of it: {error}", name)
            return
        if cancelled:
            self.reporter.warning(f"cancelled job {job_id}: ci-runner could not follow it any more", name)

    def _output_incomplete(self, entry: _Entry, why: str) -> None:
        """Warn that the job's output was not printed to its end: how much is missing, where it all is."""
        reader = entry.reader
        if reader is None:
            return
        self._flush_partial(entry)
        size = reader.known_size
        missing = f"{size - reader.offset} of its {size} bytes" if size is not None and size > reader.offset else (
            f"everything after byte {reader.offset}")
        self.reporter.warning(f"the job's output is incomplete: {missing} not printed ({why}); "
                              f"the full output is in {reader.path}", entry.name)

    async def _entry_attempts(self, entry: _Entry) -> EntryResult:
        recorded = self.state.state.entries.get(entry.name)
        if entry.spec.layout.pack is not None:
            if self.options.attach and recorded is not None and recorded.finished:
                return self._recorded_result(entry, recorded)
            return await self._packed_entry(entry)
        offset = 0
        if self.options.attach and recorded is not None:
            if recorded.finished:
                return self._recorded_result(entry, recorded)
            if entry.job_id is None and recorded.state == statefile.SUBMITTING:
                entry.job_id = await self._find_entry_job(self.cluster, entry)
                if entry.job_id is not None:
                    self.state.update(entry.name, job_id=entry.job_id,
                                      output_path=entry.spec.layout.output_path(entry.job_id))
            offset = recorded.offset if entry.job_id is not None else 0
            if entry.job_id is not None:
                self.reporter.info(f"{entry.name}: attaching to Slurm job {entry.job_id} at output byte {offset}")
        if entry.job_id is None:
            async with self.submit_slots:
                await self._submit(entry)
        resubmits = self.options.resubmit
        while True:
            assert entry.job_id is not None
            attempt = await self._follow(entry, entry.job_id, offset)
            state = attempt.status.state if attempt.status else ""
            if resubmits > 0 and attempt.outcome is Outcome.INFRA and states.is_infrastructure(state):
                resubmits -= 1
                self._flush_partial(entry)  # the attempt's cut last line ends before we speak
                self.reporter.warning(f"job {entry.job_id} ended {state} (cluster failure): resubmitting "
                                      f"({resubmits} resubmit(s) left)", entry.name)
                async with self.submit_slots:
                    await self._submit(entry, resubmit=True)
                offset = 0
                continue
            break
        artifacts_dir, junit_files = await self._fetch_artifacts(entry, attempt)
        return self._result(entry, attempt.status, attempt, artifacts_dir, junit_files)

    async def _submit(self, entry: _Entry, resubmit: bool = False) -> None:
        """Submit the entry's job: its own, or its task of the job array (the array submitted once for
        all its entries; a resubmit submits the array with this task alone)."""
        name = entry.name
        spec = entry.spec
        entry.submitted_wall = time.time()
        earlier = (entry.job_id,) if entry.job_id else ()  # a resubmit: the failed attempt is not the new job
        entry.status = None
        # the output file's pattern (`%j` not known yet) tells `ci-runner cancel` how to find the job
        self.state.update(name, state=statefile.SUBMITTING, job_id=None, output_path=spec.layout.output, offset=0,
                          submitted_at=entry.submitted_wall)
        if spec.layout.array is None:
            job_id = await self.cluster.submit(spec.script, spec.layout.working_dir, dict(spec.env),
                                               output_prefix=spec.layout.output_prefix, exclude=earlier)
        else:
            array, task = spec.layout.array
            submission = self.arrays[array]
            if resubmit:
                shared = asyncio.create_task(self._submit_array(Submission(submission.specs, (task,)), earlier))
            else:
                shared = self.array_submits.get(array) or asyncio.create_task(self._submit_array(submission, ()))
                self.array_submits[array] = shared
            job_id = task_id(await asyncio.shield(shared), task)
        entry.job_id = job_id
        self.state.update(name, job_id=job_id, output_path=spec.layout.output_path(job_id), state="SUBMITTED")
        self.reporter.entry_submitted(name, job_id, spec.layout.root)

    async def _submit_array(self, submission: Submission, earlier: tuple[str, ...]) -> str:
        """Submit a job array; its id A (task i is `A_i`)."""
        layout = submission.specs[0].layout
        exclude = tuple((split_task_id(job_id) or (job_id,))[0] for job_id in earlier)
        return await self.cluster.submit(submission.script, submission.working_dir, submission.env,
                                         output_prefix=layout.output_prefix, exclude=exclude,
                                         job_of=job_found(layout.output_prefix))

    # -- packed jobs (pack.py) -------------------------------------------------------------------

    async def _packed_entry(self, entry: _Entry) -> EntryResult:
        """A packed entry: its attempt comes from its packed job's one follower (`_follow_pack`)."""
        assert entry.spec.layout.pack is not None
        pack = self._pack(entry.spec.layout.pack[0])
        attempt = await asyncio.shield(pack.decided[entry.name])
        artifacts_dir, junit_files = await self._fetch_artifacts(entry, attempt)
        return self._result(entry, attempt.status, attempt, artifacts_dir, junit_files)

    def _pack(self, number: int) -> _Pack:
        """Packed job `number` of the run, its follower started by the first of its entries to ask."""
        pack = self.packs.get(number)
        if pack is None:
            submission = self.pack_submissions[number]
            first = submission.specs[0]
            job = _Entry(JobSpec(Entry(f"{PACK_PREFIX}{number}", -1, {}, {}, first.entry.system), first.header, "",
                                 first.layout, first.env))
            members = tuple(self.entries[spec.entry.name] for spec in submission.specs)
            loop = asyncio.get_running_loop()
            pack = _Pack(submission, job, members, packed.StreamDemux(range(len(members))),
                         {member.name: loop.create_future() for member in members})
            job.pack = pack
            self.packs[number] = pack
            pack.task = asyncio.create_task(self._run_pack(pack), name=f"packed job {number}")
        return pack

    async def _run_pack(self, pack: _Pack) -> None:
        """`_follow_pack`; a failure to follow (API errors after retries) is every undecided entry's."""
        try:
            await self._follow_pack(pack)
        except CIRunnerError as error:
            for member in pack.undecided():
                pack.decided[member.name].set_exception(error)
        except asyncio.CancelledError:
            for member in pack.undecided():
                pack.decided[member.name].cancel()
            raise

    async def _follow_pack(self, pack: _Pack) -> None:
        """Submit the packed job (or attach to it), follow it, and decide each entry: by its end record
        as it comes, else by how the job ended; resubmit the entries that did not finish when the job
        ended in an infrastructure state (`resubmit`)."""
        job, offset = pack.job, 0
        left = pack.undecided()
        recorded = [self.state.state.entries[member.name] for member in left]
        if self.options.attach and recorded[0].job_id is not None:
            job.job_id, job.submitted_wall = recorded[0].job_id, recorded[0].submitted_at
            offset = min(entry.offset for entry in recorded if entry.job_id == job.job_id)
            self.reporter.info(f"packed job {job.job_id} ({', '.join(m.name for m in left)}): attaching at "
                               f"stream byte {offset}")
        elif self.options.attach and recorded[0].state == statefile.SUBMITTING:
            job.job_id = await find_job(self.cluster, job.spec.job_name, left[0].spec.layout.root, job.spec.layout.output)
            job.submitted_wall = recorded[0].submitted_at
        if job.job_id is None:
            async with self.submit_slots:
                await self._submit_pack(pack, pack.undecided_steps())
        else:
            for member in left:
                member.job_id, member.submitted_wall = job.job_id, job.submitted_wall
        resubmits = self.options.resubmit
        while True:
            assert job.job_id is not None
            attempt = await self._follow(job, job.job_id, offset)
            self._route(pack, pack.demux.finish())
            left = pack.undecided()
            state = attempt.status.state if attempt.status else ""
            if left and resubmits > 0 and attempt.outcome is Outcome.INFRA and states.is_infrastructure(state):
                resubmits -= 1
                for member in left:
                    self._flush_partial(member)
                    self.reporter.warning(f"packed job {job.job_id} ended {state} (cluster failure): resubmitting "
                                          f"the entries that did not finish ({resubmits} resubmit(s) left)", member.name)
                steps = pack.undecided_steps()
                pack.demux, pack.held = packed.StreamDemux(steps), {}
                async with self.submit_slots:
                    await self._submit_pack(pack, steps)
                offset = 0
                continue
            for step in pack.undecided_steps():
                self._decide_member(pack, pack.members[step], pack.held.get(step), attempt)
            return

    async def _submit_pack(self, pack: _Pack, steps: Sequence[int]) -> None:
        """Submit the packed job with the entries `steps` (all, or those a resubmit runs again)."""
        job = pack.job
        submission = Submission(pack.submission.specs, () if len(steps) == len(pack.members) else tuple(steps))
        members = [pack.members[step] for step in steps]
        names = [member.name for member in members]
        earlier = (job.job_id,) if job.job_id else ()
        job.submitted_wall, job.status = time.time(), None
        layout = job.spec.layout
        self.state.update_all(names, state=statefile.SUBMITTING, job_id=None, output_path=layout.output, offset=0,
                              submitted_at=job.submitted_wall)
        job.job_id = await self.cluster.submit(packed.submitted_script(submission), submission.working_dir,
                                               submission.env, output_prefix=layout.output_prefix, exclude=earlier)
        self.state.update_all(names, job_id=job.job_id, output_path=layout.output_path(job.job_id), state="SUBMITTED")
        for member in members:
            member.job_id, member.submitted_wall, member.status = job.job_id, job.submitted_wall, None
            self.reporter.entry_submitted(member.name, job.job_id, member.spec.layout.root)

    def _emit_stream(self, pack: _Pack, reader: OutputReader, text: str) -> None:
        """A chunk of a packed job's stream: each entry's text to it, each end record decides its entry;
        the stream offset up to the last whole record is recorded for every entry still running."""
        self._route(pack, pack.demux.feed(text))
        printed = max(0, reader.offset - pack.demux.pending_bytes)
        left = [member.name for member in pack.undecided()]
        if left:
            self.state.update_all(left, offset=printed)

    def _route(self, pack: _Pack, out: packed.Demuxed) -> None:
        for step, text in out.text.items():
            member = pack.members[step]
            self._show(member, text, member.output_bytes + utf8_len(text))
        pack.job_text = out.job_text
        for line in out.job_text.splitlines():
            if line.strip() and not line.startswith(JOB_END_LINE):  # Slurm's own messages about the job
                self.reporter.warning(f"packed job {pack.job.job_id}: {line}")
        for end in out.ends:
            member = pack.members[end.step]
            if pack.decided[member.name].done():
                continue
            if end.how in (packed.EXITED, packed.TIME_LIMIT):
                self._decide_member(pack, member, end, None)
            else:  # killed, or never started: the job's own ending (a cancel, its time limit) may be why
                pack.held[end.step] = end

    def _decide_member(self, pack: _Pack, member: _Entry, end: packed.StepEnd | None,
                       ended: _Attempt | None) -> None:
        """Decide a packed entry: by its end record as it comes (`ended` None), or once the packed job
        ended (`ended`: that attempt) by its end record and the job's final state, or by how the job
        ended when the entry has none."""
        job = pack.job.status if ended is None else ended.status
        if ended is None:
            verdict = packed.entry_verdict(end, None)
        elif job is None:  # the job vanished, or waited in vain: its own reason
            verdict = states.Verdict(ended.outcome, ended.message)
        else:
            verdict = packed.entry_verdict(end, job.state)
        self._flush_partial(member)
        exit_code = end.status if end is not None else None
        status = JobStatus(member.job_id or "", packed.entry_state(verdict, job.state if job else None), None,
                           exit_code, None, job.start if job else None, None, None)
        member.status = status
        run = float(end.seconds) if end is not None and end.seconds is not None else None
        explain = verdict.outcome not in (Outcome.PASSED, Outcome.FAILED)
        queued = queue_seconds(job, pack.job.submitted_wall) if job is not None else None
        pack.decided[member.name].set_result(_Attempt(status, verdict.outcome, verdict.summary if explain else "",
                                                      queue_seconds=queued, run_seconds=run))

    async def _follow(self, entry: _Entry, job_id: str, offset: int) -> _Attempt:
        """Follow the job until it is final, doing what its `Follower` decides: ask the run's observer
        for the state, poll the output (printing it as it arrives), wait."""
        name = entry.name
        reader = OutputReader(self.cluster, entry.spec.layout.output_path(job_id), output_cap=self.options.output_cap,
                              on_warning=lambda message: self.reporter.warning(message, name),
                              limit=self.options.max_output, tail_bytes=self.options.tail_bytes,
                              sizes=self.observer.size, clock=self.observer.clock,
                              listing_first=lambda: self.pace.following > 1)
        reader.offset = offset
        entry.reader = reader
        entry.limit_warned = False
        clock = self.clock
        submitted = entry.submitted_wall or clock.wall()  # queue time counts from the recorded submit
        follower = Follower(job_id, name, self.pace, self.limits, now=clock.monotonic(),
                            waited=max(0.0, clock.wall() - submitted), submitted_wall=submitted)
        answered = self.observer.clock()  # a job list sent after this knows the job (submitted before)
        step: Step = follower.start()
        with self.pace.follow(name):
            while isinstance(step, Next):
                pause = step.at - clock.monotonic()
                if pause > 0:
                    await clock.sleep(pause)
                if step.ask is Ask.STATE:
                    status, as_of = await self.observer.job_state(job_id, answered)
                    answered = self.observer.clock()
                    entry.status = status or entry.status
                    decision = follower.state_seen(status, clock.monotonic(), as_of,
                                                   behind_siblings=self.observer.array_started(job_id))
                else:
                    text = await reader.poll()  # "" without a request once the output reached max_output
                    self._emit(entry, reader, text)
                    if reader.limited:
                        self._limit_reached(entry, reader)
                    decision = follower.output_read(self._judged(entry, text), chunked=reader.chunked,
                                                    limited=reader.limited, now=clock.monotonic())
                self._tell(entry, decision)
                step = decision.step
            # a listing sent after the job list that showed it final gives the final size
            return await self._end(entry, reader, step, self.observer.states_sent or answered)

    def _tell(self, entry: _Entry, decision: Decision) -> None:
        notice = decision.notice
        if isinstance(notice, Waiting):  # a packed job's wait is each of its entries' wait
            for name in [m.name for m in entry.pack.undecided()] if entry.pack else [entry.name]:
                self.reporter.entry_waiting(name, notice.state, notice.reason, notice.waited)
        elif isinstance(notice, Started):
            name = f"packed job {entry.job_id}" if entry.pack else entry.name
            self.reporter.info(f"{name}: {notice.state} after {format_duration(notice.waited)} in the queue"
                               if notice.waited is not None else f"{name}: {notice.state}")

    @staticmethod
    def _judged(entry: _Entry, text: str) -> str:
        """What the follower judges of a chunk read: the chunk; of a packed job's stream only the job's
        own lines (every entry's step prints a job-end line of its own, the job's comes after them all),
        or a newline standing for records read (the output flows)."""
        if entry.pack is None:
            return text
        return entry.pack.job_text or ("\n" if text else "")

    async def _end(self, entry: _Entry, reader: OutputReader, finish: Finish, final_since: float) -> _Attempt:
        """What the follower's `Finish` asks for: drain and decide, or cancel the job that waits in vain."""
        if finish.ending is Ending.FINAL:
            assert finish.status is not None
            return await self._finished(entry, reader, finish.status, final_since)
        if finish.ending is Ending.GIVE_UP:
            assert entry.job_id is not None
            await self.cluster.cancel(self.observer.addressable(entry.job_id))  # an array task not started: the array
            return _Attempt(finish.status, Outcome.INFRA, finish.message, queue_seconds=finish.queue_seconds)
        await self._drain(entry, reader, final_since)  # unknown to Slurm: what the output file holds
        return _Attempt(None, Outcome.INFRA, finish.message)

    async def _drain(self, entry: _Entry, reader: OutputReader, final_since: float | None = None) -> None:
        """Print the rest of the output file, chunk by chunk (never the whole rest in memory). Over
        max_output: the head up to the limit, a line saying how much is not shown, then the tail.
        `final_since`: when the final state was known (a listing sent since gives the final size)."""
        async for text in reader.drain_chunks(final_since):
            self._emit(entry, reader, text)
            await self._backlog_pause(reader)
        for _ in range(3):  # the tail; again only if the file was truncated and its head re-read
            if not reader.limited:
                return
            self._limit_reached(entry, reader)
            skipped = await reader.skip_to_tail()
            if skipped:
                self._emit(entry, reader, f"... {skipped} bytes not shown (over max_output "
                                          f"{format_size(self.options.max_output)}), full output in {reader.path} ...\n")
            async for text in reader.drain_chunks():
                self._emit(entry, reader, text)
                await self._backlog_pause(reader)

    async def _backlog_pause(self, reader: OutputReader) -> None:
        """Between two reads of a drain (more to read): the entry's share of the budget while others
        are followed (`RunPace.backlog_pause`)."""
        pause = self.pace.backlog_pause()
        if pause > 0 and not reader.limited and reader.known_size is not None and reader.offset < reader.known_size:
            await self.clock.sleep(pause)

    async def _finished(self, entry: _Entry, reader: OutputReader, status: JobStatus,
                        final_since: float | None = None) -> _Attempt:
        """The job is final: print the rest of its output, then decide from the final state. Output
        that could not be read to its end is a warning (how much, and where the file is), not a
        different verdict: Slurm's state is known, and the file is still there to read."""
        await self._drain(entry, reader, final_since)
        if reader.unread:
            self._output_incomplete(entry, "the reads stopped making progress")
        return self._decide(entry, status)

    def _decide(self, entry: _Entry, status: JobStatus) -> _Attempt:
        """The attempt's outcome from the job's final state, with Slurm's own queue and run times."""
        verdict = states.classify(status.state, status.exit_code, status.signal)
        if verdict.outcome is Outcome.FAILED and status.exit_code == CHECKOUT_FAILED:
            verdict = states.Verdict(Outcome.INFRA, f"the checkout on the cluster failed (exit code "
                                     f"{CHECKOUT_FAILED}; see the job's log above), the tests did not run")
        run = status.elapsed if status.elapsed is not None else (
            status.end - status.start if status.start and status.end else None)
        # PASSED and FAILED say it all with the state and exit code the reporter shows; others explain.
        explain = verdict.outcome not in (Outcome.PASSED, Outcome.FAILED)
        return _Attempt(status, verdict.outcome, verdict.summary if explain else "",
                        queue_seconds=queue_seconds(status, entry.submitted_wall), run_seconds=run)

    # -- output --------------------------------------------------------------------------------

    def _emit(self, entry: _Entry, reader: OutputReader, text: str) -> None:
        """Print a chunk and record how far the output is printed (whole lines: the reporter holds the rest)."""
        if not text:
            return
        if entry.pack is not None:
            self._emit_stream(entry.pack, reader, text)
            return
        self._show(entry, text, reader.offset)
        # Bytes not printed yet: the unfinished last line (re-encoding is exact unless it holds
        # invalid UTF-8, which the reader replaced with U+FFFD; then a few bytes may be repeated).
        printed = max(0, reader.offset - entry.partial_bytes)
        self.state.update(entry.name, offset=printed)

    def _show(self, entry: _Entry, text: str, output_bytes: int) -> None:
        """Print a chunk of the entry's output; keep its last lines for the summary."""
        self.reporter.entry_output(entry.name, text)
        entry.output_bytes = output_bytes
        # Only the last TAIL_LINES lines (each cut to TAIL_LINE_CHARS) are kept for the summary.
        head, newline, rest = text.rpartition("\n")
        if newline:
            lines = (entry.partial + head).rsplit("\n", TAIL_LINES)[-TAIL_LINES:]
            entry.tail.extend(line[-TAIL_LINE_CHARS:] for line in lines)
            entry.partial, entry.partial_bytes = "", 0
        entry.partial = (entry.partial + rest)[-TAIL_LINE_CHARS:]
        entry.partial_bytes += len(rest.encode("utf-8"))

    def _limit_reached(self, entry: _Entry, reader: OutputReader) -> None:
        """The job's output reached max_output: end the cut line, record the offset, warn once per job."""
        if entry.limit_warned:
            return
        entry.limit_warned = True
        self._flush_partial(entry)
        self.state.update(entry.name, offset=reader.offset)
        self.reporter.warning(
            f"the output reached max_output ({format_size(self.options.max_output)}): not printing more of it "
            f"while the job runs; the full output is in {reader.path}; its last part will be shown at the end",
            entry.name)

    def _flush_partial(self, entry: _Entry) -> None:
        if entry.partial_bytes:
            self.reporter.entry_output(entry.name, "\n")
            entry.tail.append(entry.partial)
            entry.partial, entry.partial_bytes = "", 0

    # -- artifacts -----------------------------------------------------------------------------

    async def _fetch_artifacts(self, entry: _Entry, attempt: _Attempt) -> tuple[str | None, tuple[str, ...]]:
        """Download the configured artifacts of a job that ran; warnings (not failures) when that fails."""
        if not self.options.artifacts or attempt.status is None or attempt.status.start is None:
            return None, ()
        destination = self.options.artifacts_dir / entry.name
        try:
            files = await fetch_artifacts(self.cluster, entry.spec.layout.src, self.options.artifacts, destination,
                                          warn=lambda message: self.reporter.warning(message, entry.name),
                                          parts_dir=transfer.artifact_parts_dir(entry.spec.layout),
                                          output_cap=self.options.output_cap,
                                          max_size=self.options.max_artifact_size)
        except CIRunnerError as error:
            self.reporter.warning(f"could not fetch artifacts: {error}", entry.name)
            return None, ()
        if not files:
            return None, ()
        junit = [workspace.glob_regex(p.removeprefix("./")) for p in self.options.junit]
        junit_files = tuple(str(destination / f) for f in files if any(r.fullmatch(f) for r in junit))
        return str(destination), junit_files

    # -- results -------------------------------------------------------------------------------

    def _result(self, entry: _Entry, status: JobStatus | None, attempt: _Attempt,
                artifacts_dir: str | None = None, junit_files: tuple[str, ...] = ()) -> EntryResult:
        if status is not None:
            state = status.state
        elif entry.job_id is None:
            state = statefile.NOT_SUBMITTED
        elif attempt.outcome is Outcome.CANCELLED:
            state = "CANCELLED"
        else:
            state = "UNKNOWN"
        tail = list(entry.tail) + ([entry.partial] if entry.partial_bytes else [])
        return EntryResult(
            entry=entry.name, job_id=entry.job_id, state=state,
            exit_code=status.exit_code if status is not None else None,
            outcome=attempt.outcome, queue_seconds=attempt.queue_seconds, run_seconds=attempt.run_seconds,
            output_bytes=entry.output_bytes, remote_dir=entry.spec.layout.root, message=attempt.message,
            tail="\n".join(tail[-TAIL_LINES:]), artifacts_dir=artifacts_dir, junit_files=junit_files,
        )

    def _recorded_result(self, entry: _Entry, recorded: EntryState) -> EntryResult:
        outcome = Outcome(recorded.outcome) if recorded.outcome is not None else Outcome.INFRA
        return EntryResult(
            entry=entry.name, job_id=recorded.job_id, state=recorded.state, exit_code=recorded.exit_code,
            outcome=outcome, queue_seconds=None, run_seconds=None, output_bytes=recorded.offset,
            remote_dir=recorded.remote_dir, message="finished before --attach",
        )


async def fetch_artifacts(cluster: Cluster, src: str, patterns: Sequence[str], destination: Path,
                          warn: Callable[[str], None] | None = None, *, parts_dir: str | None = None,
                          output_cap: int = SERVER_OUTPUT_CAP,
                          max_size: int = DEFAULT_MAX_ARTIFACT_SIZE) -> list[str]:
    """List `src` recursively, download the files matching `patterns` into `destination`; their relative paths.

    Links leaving `src`, non-regular files and files over `max_size` are refused (reported through
    `warn`). A file too large for one direct download on a system with `output_cap` is joined from
    the parts its job wrote into `parts_dir` and kept only when its size and sha256 match
    (transfer.py); when that fails it is reported and skipped.
    """
    list_files = getattr(cluster, "list_files", None)
    if list_files is None:  # until cluster.py offers `ls` (see the runner helper's report)
        raise InfraError("this version cannot list remote files (Cluster.list_files is missing)")
    listing = workspace.remote_files(await list_files(src, recursive=True))
    plan = workspace.plan_artifacts(src, listing, patterns, max_size)
    say = warn or (lambda message: None)
    for path, why in plan.refused:
        say(f"artifact {path} not fetched: {why}")
    part_size = transfer.download_part_size(output_cap)
    fetched: list[str] = []
    for relative in plan.files:
        target = workspace.local_destination(destination, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = plan.sizes.get(relative, 0)
        if size <= part_size:
            target.write_bytes(await cluster.download(f"{src}/{relative}"))
        elif parts_dir is None:
            say(f"artifact {relative} not fetched: {size} bytes, over one direct download ({part_size} bytes)")
            continue
        else:
            try:
                await transfer.fetch_in_parts(cluster, parts_dir, relative, size, part_size, target)
            except CIRunnerError as error:
                say(f"artifact {relative} not fetched: {error}")
                continue
        fetched.append(relative)
    return fetched


async def run(specs: Sequence[JobSpec], cluster: Cluster, reporter: Reporter, options: RunOptions,
              stop: asyncio.Event | None = None, clock: Clock | None = None) -> int:
    """Run (or with `options.attach`, resume) the entries; the process exit code (worst outcome).

    `stop`: set it (from a SIGINT/SIGTERM handler) to cancel every job and end with 130.
    `clock`: the followers' clocks and sleep (tests simulate time with it).
    Raises InfraError only for failures before any job exists (state file not writable, ...).
    """
    if not specs:
        raise UsageError("no entries to run")
    return await _Run(specs, cluster, reporter, options, stop or asyncio.Event(), clock or Clock()).execute()
