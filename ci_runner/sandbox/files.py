"""Filesystem operations of `/filesystem/{system}/ops/*`, confined to the sandbox root.

Like the real server, head/tail/view(dd)/stat/mkdir/rm/checksum/download run the GNU tools and map
their exit status and stderr the same way: "No such file or directory" → 404, "Permission
denied"/"Operation not permitted" → 403, "File exists" → 400, anything else → 500. So head/tail byte
and line semantics are exactly GNU's. `ls` is done in Python (same JSON as the server's parser).

Output limit and command timeout, as measured on the real server (asyncssh over ssh, 5 MiB limit):
it reads stdout up to the limit and stderr to its end, both under one command timeout. The SSH
channel takes about 2 MiB more than the limit, so a command whose output reaches the limit by up
to `CHANNEL_SLACK` bytes still ends and the answer is 413 at once. A longer output fills the
channel: the command blocks on a full pipe, stderr never ends and the timeout expires. Up to
`CLOSED_SLACK` bytes beyond the limit the server's cleanup then finds the channel closed and answers
500 "('Channel not open for sending',)" with `user: null`; beyond it, 408 "Command execution timeout
limit exceeded.". A command that simply runs longer than the timeout is also that 408.

Path policy (checked before any command):
- not absolute → 400 "The provided path (p) is not an absolute path." (server's text);
- `os.path.normpath` outside the root → 400 "... does not match any of the defined filesystem paths ..."
  (server's text; it is a lexical check there too, so `..` escapes are caught here);
- inside lexically but resolving outside through a symlink → 403 with "Permission denied". The real
  server does not resolve symlinks: the OS would then refuse files the user may not read, which
  FirecREST reports as 403 "... Permission denied". The sandbox runs as a user who can read
  everything, so it refuses such paths itself and answers the way the real service answers a
  refused file. `rm` and `stat`/`ls` without dereference look at the link itself, not its target.
"""

from __future__ import annotations

import base64
import grp
import os
import pwd
import selectors
import stat as stat_module
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUFFER_LIMIT_MESSAGE = "Command output exceeded buffer limit."
TIMEOUT_MESSAGE = "Command execution timeout limit exceeded."
CHANNEL_CLOSED_MESSAGE = "('Channel not open for sending',)"
# Bytes of output beyond the limit (measured with the 5 MiB limit; each boundary moves by a few hundred
# bytes between runs): up to CHANNEL_SLACK → 413, up to CLOSED_SLACK → 500 after the timeout, more → 408.
CHANNEL_SLACK = 2_098_392
CLOSED_SLACK = 3_337_470
_READ_SIZE = 65536


class FsError(Exception):
    """An ops request failed; `status` and `message` become the error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UnmappedError(FsError):
    """An exception the real server has no mapping for: its fallback answers 500 with `user: null`."""

    def __init__(self, message: str) -> None:
        super().__init__(500, message)


def command_error(stderr: str, exit_status: int) -> FsError:
    """The HTTP error the real server derives from a failed remote command."""
    message = f"Remote process failed with exit status:{exit_status}"
    if stderr:
        message += f" and error message:{stderr.strip()}"
    if exit_status == 124:
        return FsError(408, message)
    if "No such file or directory" in stderr:
        return FsError(404, message)
    if "Permission denied" in stderr or "Operation not permitted" in stderr:
        return FsError(403, message)
    if "File exists" in stderr or "invalid user" in stderr:
        return FsError(400, message)
    return FsError(500, message)


@dataclass(frozen=True)
class SandboxFiles:
    """The system's single filesystem (`root`, already resolved) and its limits."""

    root: Path
    system: str
    max_ops_size: int = 5 * 1024 * 1024
    command_timeout: float = 5.0

    # -- path policy -------------------------------------------------------------------------

    def check(self, path: str | None, *, follow: bool = True) -> str:
        """Return `path` unchanged if an op may touch it; raise `FsError` (400/403) otherwise."""
        if path is None:
            raise FsError(400, "All filesystem requests require a path or source_path parameter.")
        if not os.path.isabs(path):
            raise FsError(400, f"The provided path ({path}) is not an absolute path.")
        norm = os.path.normpath(path)
        if not self._inside(norm):
            raise FsError(
                400,
                f"The provided path ({norm}) does not match any of the defined filesystem paths "
                f"for the requested system ({self.system}).",
            )
        if follow:
            real = os.path.realpath(path)
        else:
            real = os.path.join(os.path.realpath(os.path.dirname(norm)), os.path.basename(norm))
        if not self._inside(real):
            raise FsError(
                403,
                f"Remote process failed with exit status:1 and error message:cannot access '{path}': "
                "Permission denied (the path resolves outside the sandbox filesystem)",
            )
        return path

    def readable(self, path: str | None, cannot: str) -> str:
        """`check`, then refuse a file nobody may read (mode without any r bit) as the real server's
        remote command does (403 "Permission denied"): the sandbox runs as root, which could read it,
        but a site's FirecREST reads as the job's user. `cannot` is the command's wording ({} = path)."""
        checked = self.check(path)
        try:
            mode = os.stat(checked).st_mode
        except OSError:
            return checked  # the command itself reports a missing file
        if stat_module.S_ISREG(mode) and not mode & 0o444:
            raise command_error(f"{cannot.format(checked)}: Permission denied", 1)
        return checked

    def _inside(self, path: str) -> bool:
        root = str(self.root)
        return path == root or path.startswith(root.rstrip("/") + "/")

    # -- commands ----------------------------------------------------------------------------

    def _run(self, argv: list[str]) -> bytes:
        """Run `argv`; its stdout, or `FsError` the way the real server fails (see module docstring)."""
        deadline = time.monotonic() + self.command_timeout
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err, produced, ended = self._collect(process, deadline)
            beyond = produced - self.max_ops_size
            if ended and (0 <= beyond <= CHANNEL_SLACK or len(err) >= self.max_ops_size):
                raise FsError(413, BUFFER_LIMIT_MESSAGE)
            status = process.wait(timeout=max(0.0, deadline - time.monotonic())) if ended and beyond < 0 else None
        except subprocess.TimeoutExpired:
            status = None
        finally:
            _end(process)
        if status is None:
            time.sleep(max(0.0, deadline - time.monotonic()))  # the real server answers when its timeout expires
            if ended and CHANNEL_SLACK < beyond <= CLOSED_SLACK:
                raise UnmappedError(CHANNEL_CLOSED_MESSAGE)
            raise FsError(408, TIMEOUT_MESSAGE)
        if status != 0:
            raise command_error(err.decode("utf-8", errors="replace"), status)
        return bytes(out)

    def _collect(self, process: subprocess.Popen[bytes], deadline: float) -> tuple[bytearray, bytearray, int, bool]:
        """Read stdout (kept up to the limit) and stderr until both end, the deadline passes, or stdout
        outgrows what the SSH channel would hold. Returns (stdout, stderr, stdout bytes produced, ended)."""
        assert process.stdout is not None and process.stderr is not None
        limit = self.max_ops_size
        out, err, produced = bytearray(), bytearray(), 0
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ, out)
            selector.register(process.stderr, selectors.EVENT_READ, err)
            while selector.get_map() and produced - limit <= CLOSED_SLACK:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, _READ_SIZE)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    if key.data is out:
                        produced += len(chunk)
                    key.data.extend(chunk[:max(0, limit - len(key.data))])
            return out, err, produced, not selector.get_map()

    def head(self, path: str, num_bytes: int | None, lines: int | None, skip_trailing: bool) -> str:
        """GNU `head`; a value of 0 (falsy) is ignored exactly like the server ignores it."""
        sign = "-" if skip_trailing else ""
        options = [f"--bytes={sign}{num_bytes}"] if num_bytes else []
        options += [f"--lines={sign}{lines}"] if lines else []
        return self._text(["head", *options, "--", self.readable(path, "head: cannot open '{}' for reading")])

    def tail(self, path: str, num_bytes: int | None, lines: int | None, skip_heading: bool) -> str:
        """GNU `tail`; with `skip_heading` NUM is 1-based (`--bytes=+NUM`)."""
        sign = "+" if skip_heading else ""
        options = [f"--bytes={sign}{num_bytes}"] if num_bytes else []
        options += [f"--lines={sign}{lines}"] if lines else []
        return self._text(["tail", *options, "--", self.readable(path, "tail: cannot open '{}' for reading")])

    def view(self, path: str, offset: int, size: int) -> str:
        """The server's `dd` view: two blocks of `size` bytes from block offset//size, decoded, then
        sliced by characters (byte-exact only for ASCII, as on the real service)."""
        size = min(size, self.max_ops_size)
        text = self._text(["dd", f"if={self.readable(path, 'dd: failed to open {!r}')}", f"bs={size}",
                           f"skip={offset // size}", "count=2"])
        start = offset % size
        return text[start:start + size]

    def stat(self, path: str, dereference: bool) -> dict[str, int]:
        """`stat -c '%f %i %d %h %u %g %s %X %Y %Z'` as the server's dict."""
        options = ["--dereference"] if dereference else []
        fields = self._text(["stat", *options, "-c", "%f %i %d %h %u %g %s %X %Y %Z", "--",
                             self.check(path, follow=dereference)]).split()
        keys = ("mode", "ino", "dev", "nlink", "uid", "gid", "size", "atime", "mtime", "ctime")
        values = dict(zip(keys, fields, strict=True))
        result = {key: int(value) for key, value in values.items() if key != "mode"}
        return {"mode": int(values["mode"], 16), **result}

    def checksum(self, path: str) -> dict[str, str]:
        """`sha256sum`; the algorithm name is the server's ("SHA256", not the schema default "SHA-256")."""
        digest = self._text(["sha256sum", "--", self.check(path)]).split()
        if len(digest) != 2:
            raise FsError(500, f"Invalid output: {' '.join(digest)} ")
        return {"algorithm": "SHA256", "checksum": digest[0]}

    def mkdir(self, path: str, parent: bool) -> dict[str, Any]:
        """`mkdir [-p]` then the `ls -d` entry of the new directory (name = the path as given)."""
        self._text(["mkdir", *(["-p"] if parent else []), "--", self.check(path)])
        return self._entry(Path(path), path, dereference=False, numeric=False)

    def rm(self, path: str) -> None:
        """`rm -r --interactive=never`; the sandbox root itself is refused (403)."""
        self.check(path, follow=False)
        if os.path.normpath(path) == str(self.root):
            raise FsError(403, f"Remote process failed with exit status:1 and error message:rm: "
                               f"cannot remove '{path}': Permission denied")
        self._text(["rm", "-r", "--interactive=never", "--", path])

    def download(self, path: str) -> bytes:
        """File bytes; like the server (base64 over SSH) the encoded size counts against the buffer."""
        self.check(path)
        encoded = self._run(["base64", "--wrap=0", "--", path])
        content = base64.b64decode(encoded)
        if len(content) > self.max_ops_size:
            raise FsError(413, "File to download is too large.")
        return content

    def upload(self, directory: str, filename: str, content: bytes) -> None:
        """Write `directory/filename` (overwrite); > max_ops_size → 413 like the server."""
        self.check(directory)
        if len(content) > self.max_ops_size:
            raise FsError(413, "File to upload is too large.")
        target = f"{directory}/{filename}"
        self.check(target)
        try:
            with open(target, "wb") as handle:
                handle.write(content)
        except FileNotFoundError as exc:
            raise command_error(f"bash: line 1: {target}: No such file or directory", 1) from exc
        except IsADirectoryError as exc:
            raise command_error(f"bash: line 1: {target}: Is a directory", 1) from exc
        except PermissionError as exc:
            raise command_error(f"bash: line 1: {target}: Permission denied", 1) from exc

    def ls(self, path: str, show_hidden: bool, numeric_uid: bool, recursive: bool, dereference: bool) -> list[dict[str, Any]]:
        """`ls -l [-A] [--numeric-uid-gid] [-R] [-L]` as the server's list of File dicts."""
        self.check(path, follow=dereference)
        target = Path(path)
        try:
            info = os.stat(target) if dereference else os.lstat(target)
        except FileNotFoundError as exc:
            raise command_error(f"ls: cannot access '{path}': No such file or directory", 2) from exc
        except PermissionError as exc:
            raise command_error(f"ls: cannot access '{path}': Permission denied", 2) from exc
        if not stat_module.S_ISDIR(info.st_mode):
            return [self._entry(target, path, dereference, numeric_uid)]
        entries: list[dict[str, Any]] = []
        self._list_dir(target, "", show_hidden, numeric_uid, recursive, dereference, entries)
        return entries

    def _list_dir(self, directory: Path, prefix: str, hidden: bool, numeric: bool, recursive: bool,
                  dereference: bool, out: list[dict[str, Any]]) -> None:
        try:
            names = sorted(os.listdir(directory))
        except PermissionError as exc:
            raise command_error(f"ls: cannot open directory '{directory}': Permission denied", 2) from exc
        names = [n for n in names if hidden or not n.startswith(".")]
        subdirs = []
        for name in names:
            entry = self._entry(directory / name, prefix + name, dereference, numeric)
            out.append(entry)
            if recursive and entry["type"] == "d":
                subdirs.append(name)
        for name in subdirs:
            self._list_dir(directory / name, f"{prefix}{name}/", hidden, numeric, recursive, dereference, out)

    def _entry(self, target: Path, name: str, dereference: bool, numeric: bool) -> dict[str, Any]:
        try:
            info = os.stat(target) if dereference else os.lstat(target)
        except FileNotFoundError:
            info = os.lstat(target)  # broken link with -L: ls shows the link
        mode = stat_module.filemode(info.st_mode)
        link = os.readlink(target) if stat_module.S_ISLNK(info.st_mode) else None
        return {
            "name": name,
            "type": mode[0],
            "linkTarget": link,
            "user": str(info.st_uid) if numeric else _user_name(info.st_uid),
            "group": str(info.st_gid) if numeric else _group_name(info.st_gid),
            "permissions": mode[1:],
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(info.st_mtime)),
            "size": str(info.st_size),
        }

    def _text(self, argv: list[str]) -> str:
        """Command stdout decoded like the server's SSH client (UTF-8, errors replaced)."""
        return self._run(argv).decode("utf-8", errors="replace")


def _end(process: subprocess.Popen[bytes]) -> None:
    """Kill the command if it still runs, reap it, close its pipes."""
    if process.poll() is None:
        process.kill()
    process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
