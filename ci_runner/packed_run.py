"""Packed jobs (pack.py) in a run: the entries of packed job k are its steps, and one task per packed
job submits it (or attaches to it), follows its stream (`following.JobFollowing`) and decides each of
its entries, by the entry's end record as it comes, else by how the job ended; a job that ended in an
infrastructure state is submitted again with the entries that did not finish (`resubmit`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Mapping, Sequence

from ci_runner import pack as packed
from ci_runner import transfer
from ci_runner.api import RemoteFileMissing
from ci_runner.artifacts import bundle_members
from ci_runner import statefile, slurm_states
from ci_runner.cancel import find_lost_job
from ci_runner.errors import CIRunnerError
from ci_runner.following import JobFollowing
from ci_runner.layout import PACK_PREFIX
from ci_runner.matrix import Entry
from ci_runner.job_spec import JobSpec, Submission
from ci_runner.run_context import Attempt, EntryProgress, PackProgress, RunContext
from ci_runner.slurm_states import Outcome


class PackedJobs:
    """The run's packed jobs, each followed by one task started by the first of its entries to ask."""

    def __init__(self, run: RunContext, following: JobFollowing, entries: Mapping[str, EntryProgress],
                 submissions: Mapping[int, Submission]) -> None:
        self.run = run
        self.following = following
        self.entries = entries
        self.submissions = submissions      # by packed job number
        self.packs: dict[int, PackProgress] = {}

    def tasks(self) -> list[asyncio.Task[None]]:
        """The followers started so far (to cancel them with the run)."""
        return [pack.task for pack in self.packs.values() if pack.task is not None]

    async def artifacts(self, entry: EntryProgress) -> dict[str, bytes] | None:
        """The members of the entry's artifact tar, from its packed job's tar of them (one download
        for all its entries, after the job's end); None when that tar or the entry's is not there."""
        assert entry.spec.layout.pack is not None
        pack = self._pack(entry.spec.layout.pack[0])
        if pack.artifacts is None:
            pack.artifacts = asyncio.create_task(self._pack_artifacts(pack), name="packed artifacts")
        try:
            tars = await asyncio.shield(pack.artifacts)
        except CIRunnerError:
            return None
        inner = tars.get(transfer.artifact_bundle_name(entry.spec.layout)) if tars is not None else None
        return bundle_members(inner) if inner is not None else None

    async def _pack_artifacts(self, pack: PackProgress) -> dict[str, bytes] | None:
        """After the packed job's follower is done: its tar of the entries' tars, by name."""
        if pack.task is not None:
            await asyncio.wait([pack.task])
            if pack.task.cancelled():  # the run is being cancelled: nothing more to ask
                return None
        try:
            data = await self.run.cluster.download(transfer.pack_artifact_bundle(pack.job.spec.layout))
        except RemoteFileMissing:
            return None
        return bundle_members(data)

    async def attempt(self, entry: EntryProgress) -> Attempt:
        """A packed entry's attempt, decided by its packed job's follower."""
        assert entry.spec.layout.pack is not None
        pack = self._pack(entry.spec.layout.pack[0])
        return await asyncio.shield(pack.decided[entry.name])

    def _pack(self, number: int) -> PackProgress:
        """Packed job `number` of the run, its follower started by the first of its entries to ask."""
        pack = self.packs.get(number)
        if pack is None:
            submission = self.submissions[number]
            first = submission.specs[0]
            job = EntryProgress(JobSpec(Entry(f"{PACK_PREFIX}{number}", -1, {}, {}, first.entry.system),
                                        first.header, "", first.layout, first.env))
            members = tuple(self.entries[spec.entry.name] for spec in submission.specs)
            loop = asyncio.get_running_loop()
            pack = PackProgress(submission, job, members, packed.StreamDemux(range(len(members))),
                                {member.name: loop.create_future() for member in members})
            job.pack = pack
            self.packs[number] = pack
            pack.task = asyncio.create_task(self._run_pack(pack), name=f"packed job {number}")
        return pack

    async def _run_pack(self, pack: PackProgress) -> None:
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

    async def _follow_pack(self, pack: PackProgress) -> None:
        """Submit the packed job (or attach to it), follow it, and decide each entry: by its end record
        as it comes, else by how the job ended; resubmit the entries that did not finish when the job
        ended in an infrastructure state (`resubmit`)."""
        job, offset = pack.job, 0
        left = pack.undecided()
        recorded = [self.run.state.state.entries[member.name] for member in left]
        if self.run.options.attach and recorded[0].job_id is not None:
            job.job_id, job.submitted_wall = recorded[0].job_id, recorded[0].submitted_at
            offset = min(entry.offset for entry in recorded if entry.job_id == job.job_id)
            self.run.reporter.info(f"packed job {job.job_id} ({', '.join(m.name for m in left)}): attaching at "
                               f"stream byte {offset}")
        elif self.run.options.attach and recorded[0].state == statefile.SUBMITTING:
            job.job_id = await find_lost_job(self.run.cluster, job.spec.job_name, left[0].spec.layout.root, job.spec.layout.output)
            job.submitted_wall = recorded[0].submitted_at
        if job.job_id is None:
            async with self.run.submit_slots:
                await self._submit_pack(pack, pack.undecided_steps())
        else:
            for member in left:
                member.job_id, member.submitted_wall = job.job_id, job.submitted_wall
        resubmits = self.run.options.resubmit
        while True:
            assert job.job_id is not None
            attempt = await self.following.follow(job, job.job_id, offset)
            self.following.route(pack, pack.demux.finish())
            left = pack.undecided()
            state = attempt.status.state if attempt.status else ""
            if left and resubmits > 0 and attempt.outcome is Outcome.INFRA and slurm_states.is_infrastructure(state):
                resubmits -= 1
                for member in left:
                    self.following.flush_partial(member)
                    self.run.reporter.warning(f"packed job {job.job_id} ended {state} (cluster failure): resubmitting "
                                          f"the entries that did not finish ({resubmits} resubmit(s) left)", member.name)
                steps = pack.undecided_steps()
                pack.demux, pack.held, pack.end_status = packed.StreamDemux(steps), {}, None
                async with self.run.submit_slots:
                    await self._submit_pack(pack, steps)
                offset = 0
                continue
            for step in pack.undecided_steps():
                self.following.decide_member(pack, pack.members[step], pack.held.get(step), attempt)
            return

    async def _submit_pack(self, pack: PackProgress, steps: Sequence[int]) -> None:
        """Submit the packed job with the entries `steps` (all, or those a resubmit runs again)."""
        job = pack.job
        submission = Submission(pack.submission.specs, () if len(steps) == len(pack.members) else tuple(steps))
        members = [pack.members[step] for step in steps]
        names = [member.name for member in members]
        earlier = (job.job_id,) if job.job_id else ()
        job.submitted_wall, job.status = time.time(), None
        layout = job.spec.layout
        self.run.state.update_all(names, state=statefile.SUBMITTING, job_id=None, output_path=layout.output, offset=0,
                              submitted_at=job.submitted_wall)
        job.job_id = await self.run.cluster.submit(packed.submitted_script(submission), submission.working_dir,
                                               submission.env, output_prefix=layout.output_prefix, exclude=earlier)
        self.run.state.update_all(names, job_id=job.job_id, output_path=layout.output_path(job.job_id), state="SUBMITTED")
        for member in members:
            member.job_id, member.submitted_wall, member.status = job.job_id, job.submitted_wall, None
            self.run.reporter.entry_submitted(member.name, job.job_id, member.spec.layout.root)
