"""Following one job (or one packed job's stream) to its end: the I/O that its `poller.Follower`
decides (ask the run's observer for the state, read and print the output, wait), then draining the
rest of the output and the attempt's verdict from the final state.

A packed job is followed like an entry (`EntryProgress.pack` set): its stream is demultiplexed
(`pack.StreamDemux`) into its entries' outputs, and each entry's end record decides that entry.
"""

from __future__ import annotations

from ci_runner import pack as packed
from ci_runner import slurm_states
from ci_runner.api import JobStatus
from ci_runner.poller import Ask, Decision, Ending, Finish, Follower, Next, Phase, Started, Step, Waiting, queue_seconds
from ci_runner.job_spec import CHECKOUT_FAILED, JOB_END_LINE
from ci_runner.reporters.text import format_duration
from ci_runner.run_context import TAIL_LINE_CHARS, TAIL_LINES, Attempt, EntryProgress, PackProgress, RunContext
from ci_runner.slurm_states import Outcome
from ci_runner.stream import OutputReader
from ci_runner.utf8_offsets import utf8_len
from ci_runner.units import format_size


class JobFollowing:
    """Follows jobs for a run, printing their output through the run's reporter."""

    def __init__(self, run: RunContext) -> None:
        self.run = run

    async def follow(self, entry: EntryProgress, job_id: str, offset: int) -> Attempt:
        """Follow the job until it is final, doing what its `Follower` decides: ask the run's observer
        for the state, poll the output (printing it as it arrives), wait."""
        name = entry.name
        reader = OutputReader(self.run.cluster, entry.spec.layout.output_path(job_id), output_cap=self.run.options.output_cap,
                              on_warning=lambda message: self.run.reporter.warning(message, name),
                              limit=self.run.options.max_output, tail_bytes=self.run.options.tail_bytes,
                              sizes=self.run.observer.size, clock=self.run.observer.clock,
                              listing_first=lambda: self.run.pace.following > 1)
        reader.offset = offset
        entry.reader = reader
        entry.limit_warned = False
        clock = self.run.clock
        submitted = entry.submitted_wall or clock.wall()  # queue time counts from the recorded submit
        follower = Follower(job_id, name, self.run.pace, self.run.limits, now=clock.monotonic(),
                            waited=max(0.0, clock.wall() - submitted), submitted_wall=submitted)
        answered = self.run.observer.clock()  # a job list sent after this knows the job (submitted before)
        read_asked = answered  # when the latest output poll was asked
        step: Step = follower.start()
        with self.run.pace.follow(name):
            while isinstance(step, Next):
                pause = step.at - clock.monotonic()
                if pause > 0:
                    await clock.sleep(pause)
                if step.ask is Ask.STATE:
                    # after the job-end line: a job list sent since that read was asked (one sent
                    # before, reused after a stall, would show the job running and cost end checks)
                    newer = max(answered, read_asked) if follower.watch.phase is Phase.ENDING else answered
                    status, as_of = await self.run.observer.job_state(job_id, newer)
                    answered = self.run.observer.clock()
                    entry.status = status or entry.status
                    decision = follower.state_seen(status, clock.monotonic(), as_of,
                                                   behind_siblings=self.run.observer.array_started(job_id))
                else:
                    read_asked = self.run.observer.clock()
                    text = await reader.poll()  # "" without a request once the output reached max_output
                    self._emit(entry, reader, text)
                    if reader.limited:
                        self._limit_reached(entry, reader)
                    decision = follower.output_read(self._judged(entry, text), chunked=reader.chunked,
                                                    limited=reader.limited, missing=reader.missing,
                                                    now=clock.monotonic())
                self._tell(entry, decision)
                step = decision.step
            # a listing sent after the job list that showed it final gives the final size
            return await self._end(entry, reader, step, self.run.observer.states_sent or answered)

    def _tell(self, entry: EntryProgress, decision: Decision) -> None:
        notice = decision.notice
        if isinstance(notice, Waiting):  # a packed job's wait is each of its entries' wait
            for name in [m.name for m in entry.pack.undecided()] if entry.pack else [entry.name]:
                self.run.reporter.entry_waiting(name, notice.state, notice.reason, notice.waited)
        elif isinstance(notice, Started):
            name = f"packed job {entry.job_id}" if entry.pack else entry.name
            self.run.reporter.info(f"{name}: {notice.state} after {format_duration(notice.waited)} in the queue"
                               if notice.waited is not None else f"{name}: {notice.state}")

    @staticmethod
    def _judged(entry: EntryProgress, text: str) -> str:
        """What the follower judges of a chunk read: the chunk; of a packed job's stream only the job's
        own lines (every entry's step prints a job-end line of its own, the job's comes after them all),
        or a newline standing for records read (the output flows)."""
        if entry.pack is None:
            return text
        return entry.pack.job_text or ("\n" if text else "")

    async def _end(self, entry: EntryProgress, reader: OutputReader, finish: Finish, final_since: float) -> Attempt:
        """What the follower's `Finish` asks for: drain and decide, or cancel the job that waits in vain."""
        if finish.ending is Ending.FINAL:
            assert finish.status is not None
            return await self._finished(entry, reader, finish.status, final_since)
        if finish.ending is Ending.GIVE_UP:
            assert entry.job_id is not None
            await self.run.cluster.cancel(self.run.observer.addressable(entry.job_id))  # an array task not started: the array
            return Attempt(finish.status, Outcome.INFRA, finish.message, queue_seconds=finish.queue_seconds)
        await self._drain(entry, reader, final_since)  # unknown to Slurm: what the output file holds
        return Attempt(None, Outcome.INFRA, finish.message)

    async def _drain(self, entry: EntryProgress, reader: OutputReader, final_since: float | None = None) -> None:
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
                                          f"{format_size(self.run.options.max_output)}), full output in {reader.path} ...\n")
            async for text in reader.drain_chunks():
                self._emit(entry, reader, text)
                await self._backlog_pause(reader)

    async def _backlog_pause(self, reader: OutputReader) -> None:
        """Between two reads of a drain (more to read): the entry's share of the budget while others
        are followed (`RunPace.backlog_pause`)."""
        pause = self.run.pace.backlog_pause()
        if pause > 0 and not reader.limited and reader.known_size is not None and reader.offset < reader.known_size:
            await self.run.clock.sleep(pause)

    async def _finished(self, entry: EntryProgress, reader: OutputReader, status: JobStatus,
                        final_since: float | None = None) -> Attempt:
        """The job is final: print the rest of its output, then decide from the final state. Output
        that could not be read to its end is a warning (how much, and where the file is), not a
        different verdict: Slurm's state is known, and the file is still there to read. A packed
        job's stream read to its end line is complete when the state agrees (`pack.stream_complete`):
        no listing for its final size."""
        pack = entry.pack
        if (pack is not None and reader.at_eof and not reader.limited and not pack.demux.pending_bytes
                and packed.stream_complete(pack.end_status, status.state, status.exit_code, status.signal)):
            return self.decide(entry, status)
        await self._drain(entry, reader, final_since)
        if reader.unread:
            self.output_incomplete(entry, "the reads stopped making progress")
        return self.decide(entry, status)

    def decide(self, entry: EntryProgress, status: JobStatus) -> Attempt:
        """The attempt's outcome from the job's final state, with Slurm's own queue and run times."""
        verdict = slurm_states.classify(status.state, status.exit_code, status.signal)
        if verdict.outcome is Outcome.FAILED and status.exit_code == CHECKOUT_FAILED:
            verdict = slurm_states.Verdict(Outcome.INFRA, f"the checkout on the cluster failed (exit code "
                                     f"{CHECKOUT_FAILED}; see the job's log above), the tests did not run")
        run = status.elapsed if status.elapsed is not None else (
            status.end - status.start if status.start and status.end else None)
        # PASSED and FAILED say it all with the state and exit code the reporter shows; others explain.
        explain = verdict.outcome not in (Outcome.PASSED, Outcome.FAILED)
        return Attempt(status, verdict.outcome, verdict.summary if explain else "",
                       queue_seconds=queue_seconds(status, entry.submitted_wall), run_seconds=run)

    # -- output --------------------------------------------------------------------------------

    def _emit(self, entry: EntryProgress, reader: OutputReader, text: str) -> None:
        """Print a chunk and record how far the output is printed (whole lines: the reporter holds the rest)."""
        if not text:
            return
        if entry.pack is not None:
            self._emit_stream(entry.pack, reader, text)
            return
        self.show(entry, text, reader.offset)
        # Bytes not printed yet: the unfinished last line (re-encoding is exact unless it holds
        # invalid UTF-8, which the reader replaced with U+FFFD; then a few bytes may be repeated).
        printed = max(0, reader.offset - entry.partial_bytes)
        self.run.state.update(entry.name, offset=printed)

    def show(self, entry: EntryProgress, text: str, output_bytes: int) -> None:
        """Print a chunk of the entry's output; keep its last lines for the summary."""
        self.run.reporter.entry_output(entry.name, text)
        entry.output_bytes = output_bytes
        # Only the last TAIL_LINES lines (each cut to TAIL_LINE_CHARS) are kept for the summary.
        head, newline, rest = text.rpartition("\n")
        if newline:
            lines = (entry.partial + head).rsplit("\n", TAIL_LINES)[-TAIL_LINES:]
            entry.tail.extend(line[-TAIL_LINE_CHARS:] for line in lines)
            entry.partial, entry.partial_bytes = "", 0
        entry.partial = (entry.partial + rest)[-TAIL_LINE_CHARS:]
        entry.partial_bytes += len(rest.encode("utf-8"))

    def _limit_reached(self, entry: EntryProgress, reader: OutputReader) -> None:
        """The job's output reached max_output: end the cut line, record the offset, warn once per job."""
        if entry.limit_warned:
            return
        entry.limit_warned = True
        self.flush_partial(entry)
        self.run.state.update(entry.name, offset=reader.offset)
        self.run.reporter.warning(
            f"the output reached max_output ({format_size(self.run.options.max_output)}): not printing more of it "
            f"while the job runs; the full output is in {reader.path}; its last part will be shown at the end",
            entry.name)

    def flush_partial(self, entry: EntryProgress) -> None:
        if entry.partial_bytes:
            self.run.reporter.entry_output(entry.name, "\n")
            entry.tail.append(entry.partial)
            entry.partial, entry.partial_bytes = "", 0

    def output_incomplete(self, entry: EntryProgress, why: str) -> None:
        """Warn that the job's output was not printed to its end: how much is missing, where it all is."""
        reader = entry.reader
        if reader is None:
            return
        self.flush_partial(entry)
        size = reader.known_size
        missing = f"{size - reader.offset} of its {size} bytes" if size is not None and size > reader.offset else (
            f"everything after byte {reader.offset}")
        self.run.reporter.warning(f"the job's output is incomplete: {missing} not printed ({why}); "
                              f"the full output is in {reader.path}", entry.name)

    # -- a packed job's stream (pack.py) -------------------------------------------------------

    def _emit_stream(self, pack: PackProgress, reader: OutputReader, text: str) -> None:
        """A chunk of a packed job's stream: each entry's text to it, each end record decides its entry;
        the stream offset up to the last whole record is recorded for every entry still running."""
        self.route(pack, pack.demux.feed(text))
        printed = max(0, reader.offset - pack.demux.pending_bytes)
        left = [member.name for member in pack.undecided()]
        if left:
            self.run.state.update_all(left, offset=printed)

    def route(self, pack: PackProgress, out: packed.Demuxed) -> None:
        for step, text in out.text.items():
            member = pack.members[step]
            self.show(member, text, member.output_bytes + utf8_len(text))
        pack.job_text = out.job_text
        if out.text or out.ends or out.job_text:
            pack.end_status = packed.job_end_status(out.job_text)
        for line in out.job_text.splitlines():
            if line.strip() and not line.startswith(JOB_END_LINE):  # Slurm's own messages about the job
                self.run.reporter.warning(f"packed job {pack.job.job_id}: {line}")
        for end in out.ends:
            member = pack.members[end.step]
            if pack.decided[member.name].done():
                continue
            if end.how in (packed.EXITED, packed.TIME_LIMIT):
                self.decide_member(pack, member, end, None)
            else:  # killed, or never started: the job's own ending (a cancel, its time limit) may be why
                pack.held[end.step] = end

    def decide_member(self, pack: PackProgress, member: EntryProgress, end: packed.StepEnd | None,
                       ended: Attempt | None) -> None:
        """Decide a packed entry: by its end record as it comes (`ended` None), or once the packed job
        ended (`ended`: that attempt) by its end record and the job's final state, or by how the job
        ended when the entry has none."""
        job = pack.job.status if ended is None else ended.status
        if ended is None:
            verdict = packed.entry_verdict(end, None)
        elif job is None:  # the job vanished, or waited in vain: its own reason
            verdict = slurm_states.Verdict(ended.outcome, ended.message)
        else:
            verdict = packed.entry_verdict(end, job.state)
        self.flush_partial(member)
        exit_code = end.status if end is not None else None
        status = JobStatus(member.job_id or "", packed.entry_state(verdict, job.state if job else None), None,
                           exit_code, None, job.start if job else None, None, None)
        member.status = status
        run = float(end.seconds) if end is not None and end.seconds is not None else None
        explain = verdict.outcome not in (Outcome.PASSED, Outcome.FAILED)
        queued = queue_seconds(job, pack.job.submitted_wall) if job is not None else None
        pack.decided[member.name].set_result(Attempt(status, verdict.outcome, verdict.summary if explain else "",
                                                     queue_seconds=queued, run_seconds=run))
