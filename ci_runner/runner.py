"""Orchestration of `ci-runner run`: prepare, submit, follow, decide, fetch back, report.

The run is prepared once (one `mkdir` of its output directory, the source archive unless cached),
then one asyncio task per entry submits and follows its job; all of them share the Cluster's single
request budget, and the job states and output sizes come from the run's `RunObserver` (one job list
and one directory listing per cycle for every entry), so an idle cycle costs two requests whatever
the number of entries; only an output that grew costs a read of its own. What to ask next, and
when, is decided by each job's `poller.Follower`; following.py does what it says (the I/O), and
packed_run.py follows packed jobs. The state file records every job id (and every submit in
flight) before the job is followed, and the printed output offset after every print, so
`ci-runner cancel` and `ci-runner run --attach` work after the runner died.

Cancellation (`stop` set by the CLI's SIGINT/SIGTERM handler): every follower is stopped, every
unfinished entry's job is cancelled at once (`cancel.cancel_unfinished`), and the run ends with 130.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Sequence

from ci_runner import statefile, slurm_states, transfer, workspace
from ci_runner.artifact_selection import glob_regex
from ci_runner.artifacts import fetch_artifacts
from ci_runner.cancel import cancel_unfinished, find_lost_job
from ci_runner.errors import CIRunnerError, SubmitRejected, UsageError
from ci_runner.following import JobFollowing
from ci_runner.layout import job_found, split_task_id, task_id
from ci_runner.observer import RunObserver
from ci_runner.packed_run import PackedJobs
from ci_runner.poller import Clock, FollowLimits, RunPace
from ci_runner.job_spec import JobSpec, Submission, submissions
from ci_runner.reporters.result import EntryResult
from ci_runner.run_context import TAIL_LINES, Attempt, EntryProgress, RunContext, RunOptions
from ci_runner.slurm_states import Outcome
from ci_runner.statefile import EntryState, RunState, StateFile

if TYPE_CHECKING:
    from ci_runner.api import JobStatus
    from ci_runner.cluster import Cluster
    from ci_runner.reporters.base import Reporter


class _Run:
    def __init__(self, specs: Sequence[JobSpec], cluster: Cluster, reporter: Reporter,
                 options: RunOptions, stop: asyncio.Event, clock: Clock) -> None:
        self.cluster = cluster
        self.reporter = reporter
        self.options = options
        self.stop = stop
        self.clock = clock
        self.entries = {spec.entry.name: EntryProgress(spec) for spec in specs}
        self.submit_slots = asyncio.Semaphore(max(1, options.max_concurrent_submits))
        self.pace = RunPace(lambda: cluster.budget.requests_per_minute, cluster.budget.available,
                            self.clock.monotonic, cluster.budget.refill_in)  # the followers' share of the budget
        self.limits = FollowLimits(not_found_grace=options.not_found_grace, queue_timeout=options.queue_timeout)
        first = specs[0]
        self.run_layout = first.layout.run
        self.observer = RunObserver(cluster, first.job_name, self.run_layout.output_dir, clock.monotonic,
                                    cluster.budget.until_free)
        # Job arrays (arrays.py): the entries of array k share one submit, made by the first of them
        self.arrays = {s.specs[0].layout.array[0]: s for s in submissions(specs) if s.is_array}  # type: ignore[index]
        self.array_submits: dict[int, asyncio.Task[str]] = {}
        # Packed jobs (pack.py): the entries of packed job k are its steps, followed by one task
        self.pack_submissions = {s.specs[0].layout.pack[0]: s for s in submissions(specs) if s.is_pack}  # type: ignore[index]
        self.state: StateFile
        self.following: JobFollowing
        self.packed: PackedJobs

    # -- the whole run -------------------------------------------------------------------------

    async def execute(self) -> int:
        self.state = self._open_state()
        context = RunContext(self.cluster, self.reporter, self.options, self.state, self.observer, self.pace,
                             self.limits, self.clock, self.submit_slots)
        self.following = JobFollowing(context)
        self.packed = PackedJobs(context, self.following, self.entries, self.pack_submissions)
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
        code = slurm_states.worst(r.outcome for r in results).exit_code
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
        pack_tasks = self.packed.tasks()
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
            result = self._result(entry, None, Attempt(None, Outcome.CANCELLED, "cancelled because the CI cancelled the run"))
            self.reporter.entry_finished(result)
            results.append(result)
        self.reporter.run_finished(results, Outcome.CANCELLED.exit_code)
        return Outcome.CANCELLED.exit_code

    # -- one entry -----------------------------------------------------------------------------

    async def _entry(self, entry: EntryProgress) -> EntryResult:
        try:
            result = await self._entry_attempts(entry)
        except SubmitRejected as error:
            result = self._result(entry, None, Attempt(None, Outcome.CONFIG, str(error)))
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

    async def _lost_track(self, entry: EntryProgress, error: CIRunnerError) -> EntryResult:
        """Following failed (API errors after retries). A job that has ended (as last seen, or as one
        more look at its state says) keeps the verdict of its final state, with a warning that its
        output is incomplete; any other job is cancelled rather than left unobserved, and the entry is
        an infrastructure failure."""
        status = entry.status
        addressable = self.observer.own_job_id(entry.job_id) if entry.job_id is not None else None
        if addressable is not None and (status is None or not slurm_states.is_terminal(status.state)):
            try:
                status = await self.cluster.job(addressable) or status
            except CIRunnerError:
                pass  # the API is still failing: the cancel below will say whether it got through
        if entry.job_id is not None and status is not None and slurm_states.is_terminal(status.state):
            self.following.output_incomplete(entry, f"reading it failed: {error}")
            return self._result(entry, status, self.following.decide(entry, status))
        if entry.job_id is not None:
            await self._abandon(entry.name, entry.job_id)
        return self._result(entry, None, Attempt(None, Outcome.INFRA, str(error)))

    def _cancel_target(self, job_id: str) -> str | None:
        """What to cancel for the entry's job: the job itself, or for an array task not started yet the
        array, but only while none of its tasks has started (it must not take the others with it)."""
        own = self.observer.own_job_id(job_id)
        if own is not None:
            return own
        return None if self.observer.array_started(job_id) else self.observer.addressable(job_id)

    async def _find_entry_job(self, entry: EntryProgress) -> str | None:
        """The entry's job after a lost submit answer (`cancel.find_lost_job`; for a task of a job array,
        its task id A_i in the array found)."""
        layout = entry.spec.layout
        found = await find_lost_job(self.cluster, entry.spec.job_name, layout.root, layout.output)
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


    async def _entry_attempts(self, entry: EntryProgress) -> EntryResult:
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
                entry.job_id = await self._find_entry_job(entry)
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
            attempt = await self.following.follow(entry, entry.job_id, offset)
            state = attempt.status.state if attempt.status else ""
            if resubmits > 0 and attempt.outcome is Outcome.INFRA and slurm_states.is_infrastructure(state):
                resubmits -= 1
                self.following.flush_partial(entry)  # the attempt's cut last line ends before we speak
                self.reporter.warning(f"job {entry.job_id} ended {state} (cluster failure): resubmitting "
                                      f"({resubmits} resubmit(s) left)", entry.name)
                async with self.submit_slots:
                    await self._submit(entry, resubmit=True)
                offset = 0
                continue
            break
        artifacts_dir, junit_files = await self._fetch_artifacts(entry, attempt)
        return self._result(entry, attempt.status, attempt, artifacts_dir, junit_files)

    async def _submit(self, entry: EntryProgress, resubmit: bool = False) -> None:
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


    async def _packed_entry(self, entry: EntryProgress) -> EntryResult:
        """A packed entry: its attempt comes from its packed job's one follower (packed_run.py)."""
        attempt = await self.packed.attempt(entry)
        packed = await self.packed.artifacts(entry) if self._fetches_artifacts(attempt) else None
        artifacts_dir, junit_files = await self._fetch_artifacts(entry, attempt, packed)
        return self._result(entry, attempt.status, attempt, artifacts_dir, junit_files)


    # -- artifacts -----------------------------------------------------------------------------

    def _fetches_artifacts(self, attempt: Attempt) -> bool:
        """Artifacts are configured and the attempt's job ran."""
        return bool(self.options.artifacts) and attempt.status is not None and attempt.status.start is not None

    async def _fetch_artifacts(self, entry: EntryProgress, attempt: Attempt,
                               packed: dict[str, bytes] | None = None) -> tuple[str | None, tuple[str, ...]]:
        """Download the configured artifacts of a job that ran (`packed`: its tar's members, as its
        packed job passed them on); warnings (not failures) when that fails."""
        if not self._fetches_artifacts(attempt):
            return None, ()
        destination = self.options.artifacts_dir / entry.name
        try:
            files = await fetch_artifacts(self.cluster, entry.spec.layout.src, self.options.artifacts, destination,
                                          warn=lambda message: self.reporter.warning(message, entry.name),
                                          parts_dir=transfer.artifact_parts_dir(entry.spec.layout),
                                          bundle=transfer.artifact_bundle(entry.spec.layout), packed=packed,
                                          output_cap=self.options.output_cap,
                                          max_size=self.options.max_artifact_size)
        except CIRunnerError as error:
            self.reporter.warning(f"could not fetch artifacts: {error}", entry.name)
            return None, ()
        if not files:
            return None, ()
        junit = [glob_regex(p.removeprefix("./")) for p in self.options.junit]
        junit_files = tuple(str(destination / f) for f in files if any(r.fullmatch(f) for r in junit))
        return str(destination), junit_files

    # -- results -------------------------------------------------------------------------------

    def _result(self, entry: EntryProgress, status: JobStatus | None, attempt: Attempt,
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

    def _recorded_result(self, entry: EntryProgress, recorded: EntryState) -> EntryResult:
        outcome = Outcome(recorded.outcome) if recorded.outcome is not None else Outcome.INFRA
        return EntryResult(
            entry=entry.name, job_id=recorded.job_id, state=recorded.state, exit_code=recorded.exit_code,
            outcome=outcome, queue_seconds=None, run_seconds=None, output_bytes=recorded.offset,
            remote_dir=recorded.remote_dir, message="finished before --attach",
        )


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
