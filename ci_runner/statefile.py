"""The run state file: which jobs a run submitted, where their output is, how far it was printed.

`ci-runner cancel` and `ci-runner run --attach` read it after the runner died or was restarted.
It holds no secrets: job ids, job names, remote paths, byte offsets and Slurm states only (never
tokens, never environment values). Every write replaces the file atomically (temp file + os.replace),
so a reader (or a runner killed with SIGKILL) never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping

from ci_runner.errors import UsageError

STATE_DIR = ".ci-runner-state"
FORMAT_VERSION = 1

SUBMITTING = "SUBMITTING"  # state of an entry whose sbatch was sent but whose job id is not known yet
NOT_SUBMITTED = "NOT_SUBMITTED"


@dataclass(frozen=True)
class EntryState:
    """What is known about one entry's job. `offset` = bytes of output already printed."""

    job_name: str
    remote_dir: str
    system: str
    job_id: str | None = None
    output_path: str | None = None
    offset: int = 0
    state: str = NOT_SUBMITTED
    finished: bool = False
    exit_code: int | None = None
    outcome: int | None = None     # slurm_states.Outcome value once decided
    submitted_at: float | None = None  # epoch seconds of the (last) submit


@dataclass(frozen=True)
class RunState:
    """The whole file."""

    run_id: str
    system: str
    workdir: str
    created: float = field(default_factory=time.time)
    entries: Mapping[str, EntryState] = field(default_factory=dict)

    def with_entry(self, name: str, **changes: object) -> RunState:
        """A copy where entry `name` has `changes` applied (the entry must exist)."""
        entries = dict(self.entries)
        entries[name] = replace(entries[name], **changes)  # type: ignore[arg-type]
        return replace(self, entries=entries)

    def unfinished(self) -> dict[str, EntryState]:
        """Entries whose job may still be queued or running (or whose submit may have happened)."""
        return {name: entry for name, entry in self.entries.items() if not entry.finished}


def default_path(run_id: str, cwd: Path) -> Path:
    """`<cwd>/.ci-runner-state/<run-id>.json`."""
    return cwd / STATE_DIR / f"{run_id}.json"


def newest(cwd: Path) -> Path | None:
    """The most recently written state file under `<cwd>/.ci-runner-state/`, if any."""
    directory = cwd / STATE_DIR
    if not directory.is_dir():
        return None
    files = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def find(run_id: str, cwd: Path) -> Path:
    """This CI run's state file, else the newest in ./.ci-runner-state/ (local runs get a new id each time)."""
    path = default_path(run_id, cwd)
    if path.exists():
        return path
    found = newest(cwd)
    if found is None:
        raise UsageError(f"no state file in {cwd / STATE_DIR}; pass --state-file PATH")
    return found


def to_json(state: RunState) -> str:
    """Serialise (stable key order, human-readable)."""
    document = {"version": FORMAT_VERSION, **asdict(state)}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def from_json(text: str, source: str = "<state>") -> RunState:
    """Parse a state file; `UsageError` naming `source` when it is not one."""
    try:
        document = json.loads(text)
        if document.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported version {document.get('version')!r}")
        entries = {name: EntryState(**fields) for name, fields in document["entries"].items()}
        return RunState(run_id=document["run_id"], system=document["system"], workdir=document["workdir"],
                        created=float(document["created"]), entries=entries)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"{source}: not a ci-runner state file ({error})") from error


def load(path: Path) -> RunState:
    """Read the state file at `path`; `UsageError` if it is missing or invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise UsageError(f"{path}: state file not found (pass --state-file PATH)") from error
    except OSError as error:
        raise UsageError(f"{path}: cannot read the state file: {error.strerror}") from error
    return from_json(text, str(path))


def save(path: Path, state: RunState) -> None:
    """Write atomically: a temp file in the same directory, then os.replace.

    No fsync: the file must survive the runner being killed (the kernel keeps the data), not a power
    loss, and it is written after every printed chunk of output.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(to_json(state))
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


class StateFile:
    """The state of one run plus the path it lives at; every `update` is saved at once.

    Mutable on purpose: it is the runner's single local record, written from one asyncio thread.
    """

    def __init__(self, path: Path, state: RunState) -> None:
        self.path = path
        self.state = state

    @classmethod
    def create(cls, path: Path, state: RunState) -> StateFile:
        """Start a new file (overwrites an older one of the same run id)."""
        handle = cls(path, state)
        save(path, state)
        return handle

    @classmethod
    def open(cls, path: Path) -> StateFile:
        """Open an existing file (`--attach`, `cancel`)."""
        return cls(path, load(path))

    def update(self, entry: str, **changes: object) -> None:
        """Apply `changes` to one entry and save."""
        self.state = self.state.with_entry(entry, **changes)
        save(self.path, self.state)

    def update_all(self, entries: Iterable[str], **changes: object) -> None:
        """Apply `changes` to each of `entries` and save once (the entries of one packed job)."""
        for entry in entries:
            self.state = self.state.with_entry(entry, **changes)
        save(self.path, self.state)
