"""Filesystem ops of the sandbox, through pyfirecrest's v2 client: GNU head/tail semantics, dd view,
limits (413), errors (404/400/403) and confinement to the root. Backend-independent: local backend."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import firecrest as fc
import pytest
from helpers.firecrest_clients import bearer, raw_client, running_sandbox, sync_client

from ci_runner.sandbox.server import Sandbox

LIMIT = 4096  # max_ops_size: small so the 413 paths stay fast


@pytest.fixture
def sb(tmp_path: Path) -> Iterator[Sandbox]:
    yield from running_sandbox(tmp_path, "local", max_ops_size=LIMIT)


@pytest.fixture
def client(sb: Sandbox) -> fc.v2.Firecrest:
    return sync_client(sb)


def status_of(call: object, *args: object, **kwargs: object) -> tuple[int, dict]:
    with pytest.raises(fc.UnexpectedStatusException) as error:
        call(*args, **kwargs)  # type: ignore[operator]
    response = error.value.responses[-1]
    return response.status_code, response.json()


def test_tail_and_head_follow_gnu_semantics(sb: Sandbox, client: fc.v2.Firecrest) -> None:
    path = sb.root / "ok.out"
    path.write_bytes("a\nb é\n".encode())
    p = str(path)

    assert client.tail(sb.system, p, num_bytes=1, exclude_beginning=True) == {
        "content": "a\nb é\n", "contentType": "bytes", "startPosition": 1, "endPosition": -1}
    assert client.tail(sb.system, p, num_bytes=3, exclude_beginning=True)["content"] == "b é\n"
    assert client.tail(sb.system, p, num_bytes=100, exclude_beginning=True)["content"] == ""
    assert client.tail(sb.system, p, num_bytes=6, exclude_beginning=True)["content"] == "\ufffd\n"  # half of é
    assert client.tail(sb.system, p, num_bytes=0, exclude_beginning=True) == {
        "content": "a\nb é\n", "contentType": "lines", "startPosition": 0, "endPosition": -1}
    assert client.tail(sb.system, p, num_lines=1) == {
        "content": "b é\n", "contentType": "lines", "startPosition": -1, "endPosition": -1}
    assert client.head(sb.system, p, num_bytes=3) == {
        "content": "a\nb", "contentType": "bytes", "startPosition": 0, "endPosition": 3}
    assert client.head(sb.system, p, num_lines=1, exclude_trailing=True)["content"] == "a\n"
    assert client.head(sb.system, p)["endPosition"] == 10
    with raw_client(sb) as raw:
        both = raw.get(f"/filesystem/{sb.system}/ops/tail", params={"path": p, "bytes": 1, "lines": 1},
                       headers=bearer(sb))
    assert both.status_code == 400
    assert both.json()["message"] == "Only one of `bytes` or `lines` can be specified."


def test_view_uses_dd_blocks_and_slices_characters(sb: Sandbox, client: fc.v2.Firecrest) -> None:
    path = sb.root / "ok.out"
    path.write_bytes("a\nb é\n".encode())

    def view(**params: object) -> tuple[int, object]:
        with raw_client(sb) as raw:
            answer = raw.get(f"/filesystem/{sb.system}/ops/view", params={"path": str(path), **params},
                             headers=bearer(sb))
        body = answer.json()
        return answer.status_code, body.get("output", body.get("message"))

    assert view(offset=2, size=4) == (200, "b é\n")  # 4 characters, 5 bytes: as on the real server
    assert view(offset=5, size=1) == (200, "\ufffd")
    assert view(offset=5, size=2) == (200, "\n")
    assert view() == (200, "a\nb é\n")
    assert view(size=0) == (400, "`size` value must be an integer value greater than 0")
    assert view(offset=-1, size=2) == (400, "`offset` value must be an integer value equal or greater than 0")
    assert view(size=LIMIT + 1) == (400, f"`size` value must be less than {LIMIT} bytes")
    assert view(size="x")[0] == 400
    assert client.view(sb.system, str(path)) == "a\nb é\n"


def test_output_at_the_buffer_limit_is_413(sb: Sandbox, client: fc.v2.Firecrest) -> None:
    big = sb.root / "big.out"
    big.write_bytes(b"x" * (LIMIT + 10))
    code, body = status_of(client.tail, sb.system, str(big), num_bytes=1, exclude_beginning=True)
    assert (code, body["message"], body["errorType"]) == (413, "Command output exceeded buffer limit.", "error")
    assert client.tail(sb.system, str(big), num_bytes=12, exclude_beginning=True)["content"] == "x" * (LIMIT - 1)
    assert status_of(client.tail, sb.system, str(big), num_bytes=11, exclude_beginning=True)[0] == 413
    exact = sb.root / "exact.out"
    exact.write_bytes(b"y" * LIMIT)  # >= the limit, not only above it
    assert status_of(client.head, sb.system, str(exact), num_bytes=LIMIT)[0] == 413
    assert client.head(sb.system, str(exact), num_bytes=LIMIT - 1)["content"] == "y" * (LIMIT - 1)


def test_missing_file_is_404_with_the_tool_message(sb: Sandbox, client: fc.v2.Firecrest) -> None:
    missing = f"{sb.root}/nope.out"
    code, body = status_of(client.tail, sb.system, missing, num_bytes=1, exclude_beginning=True)
    assert code == 404
    assert body["message"] == ("Remote process failed with exit status:1 and error message:"
                               f"tail: cannot open '{missing}' for reading: No such file or directory")
    for call in (client.head, client.stat, client.checksum, client.list_files, client.view):
        assert status_of(call, sb.system, missing)[0] == 404
    with pytest.raises(FileNotFoundError):
        client.download(sb.system, missing, str(sb.root.parent / "x"))


@pytest.mark.parametrize("path, status, text", [
    ("x/y", 400, "The provided path (x/y) is not an absolute path."),
    ("/etc/passwd", 400, "The provided path (/etc/passwd) does not match any of the defined filesystem paths "
                         "for the requested system (local)."),
    ("{root}/../escape.txt", 400, "The provided path ({parent}/escape.txt) does not match any of the defined"),
    ("{root}/link/passwd", 403, "Permission denied"),
])
def test_paths_outside_the_root_are_refused(sb: Sandbox, client: fc.v2.Firecrest, path: str, status: int,
                                            text: str) -> None:
    (sb.root / "link").symlink_to("/etc")
    (sb.root.parent / "escape.txt").write_text("secret")
    path = path.format(root=sb.root)
    for call in (client.head, client.view, client.stat, client.checksum, client.list_files):
        code, body = status_of(call, sb.system, path)
        assert code == status and text.format(parent=sb.root.parent) in body["message"], (call, body)
    code, _ = status_of(client.mkdir, sb.system, path.replace("passwd", "new"))
    assert code == status
    assert not Path("/etc/new").exists()


def test_symlink_inside_the_root_works_and_rm_removes_only_the_link(sb: Sandbox, client: fc.v2.Firecrest) -> None:
    (sb.root / "data.txt").write_text("inside\n")
    (sb.root / "alias").symlink_to(sb.root / "data.txt")
    (sb.root / "out").symlink_to("/etc")
    assert client.view(sb.system, f"{sb.root}/alias") == "inside\n"
    listing = {e["name"]: e for e in client.list_files(sb.system, str(sb.root))}
    assert listing["alias"]["type"] == "l" and listing["alias"]["linkTarget"] == str(sb.root / "data.txt")
    client.rm(sb.system, f"{sb.root}/out")
    assert not (sb.root / "out").is_symlink() and Path("/etc/passwd").exists()
    assert status_of(client.rm, sb.system, str(sb.root))[0] == 403


def test_upload_download_checksum_stat(sb: Sandbox, client: fc.v2.Firecrest, tmp_path: Path) -> None:
    local = tmp_path / "payload.bin"
    payload = bytes(range(256)) * 4
    local.write_bytes(payload)
    assert client.upload(sb.system, str(local), str(sb.root), "payload.bin") is None
    assert (sb.root / "payload.bin").read_bytes() == payload

    target = tmp_path / "back.bin"
    client.download(sb.system, f"{sb.root}/payload.bin", str(target))
    assert target.read_bytes() == payload
    assert client.checksum(sb.system, f"{sb.root}/payload.bin") == {
        "algorithm": "SHA256", "checksum": hashlib.sha256(payload).hexdigest()}
    info = client.stat(sb.system, f"{sb.root}/payload.bin")
    real = os.stat(sb.root / "payload.bin")
    assert (info["size"], info["mode"], info["ino"], info["mtime"]) == (len(payload), real.st_mode, real.st_ino,
                                                                       int(real.st_mtime))

    too_big = tmp_path / "big.bin"
    too_big.write_bytes(b"z" * (LIMIT + 1))
    code, body = status_of(client.upload, sb.system, str(too_big), str(sb.root), "big.bin")
    assert (code, body["message"]) == (413, "File to upload is too large.")
    assert not (sb.root / "big.bin").exists()
    assert status_of(client.upload, sb.system, str(local), f"{sb.root}/no/such/dir", "x")[0] == 404
    assert status_of(client.upload, sb.system, str(local), "/tmp", "x")[0] == 400


def test_download_counts_base64_against_the_buffer(sb: Sandbox, client: fc.v2.Firecrest, tmp_path: Path) -> None:
    (sb.root / "three-quarters.bin").write_bytes(b"q" * (LIMIT * 3 // 4 + 3))  # base64 > LIMIT
    with raw_client(sb) as raw:
        answer = raw.get(f"/filesystem/{sb.system}/ops/download",
                         params={"path": f"{sb.root}/three-quarters.bin"}, headers=bearer(sb))
    assert answer.status_code == 413 and answer.json()["message"] == "Command output exceeded buffer limit."


def test_mkdir_ls_rm(sb: Sandbox, client: fc.v2.Firecrest) -> None:
    made = client.mkdir(sb.system, f"{sb.root}/a/b", create_parents=True)
    assert (made["name"], made["type"], made["permissions"][:3]) == (f"{sb.root}/a/b", "d", "rwx")
    code, body = status_of(client.mkdir, sb.system, f"{sb.root}/a/b")
    assert code == 400 and "File exists" in body["message"]
    assert status_of(client.mkdir, sb.system, f"{sb.root}/x/y")[0] == 404
    (sb.root / "a" / "b" / "f.txt").write_text("12345")
    (sb.root / "a" / ".hidden").write_text("")

    assert [e["name"] for e in client.list_files(sb.system, f"{sb.root}/a")] == ["b"]
    assert [e["name"] for e in client.list_files(sb.system, f"{sb.root}/a", show_hidden=True)] == [".hidden", "b"]
    recursive = client.list_files(sb.system, f"{sb.root}/a", recursive=True)
    assert [(e["name"], e["size"]) for e in recursive if e["type"] == "-"] == [("b/f.txt", "5")]
    numeric = client.list_files(sb.system, f"{sb.root}/a", numeric_uid=True)[0]
    assert numeric["user"] == str(os.getuid())
    single = client.list_files(sb.system, f"{sb.root}/a/b/f.txt")
    assert [e["name"] for e in single] == [f"{sb.root}/a/b/f.txt"]

    client.rm(sb.system, f"{sb.root}/a")
    assert not (sb.root / "a").exists()
    assert status_of(client.rm, sb.system, f"{sb.root}/a")[0] == 404


def test_a_file_nobody_may_read_is_refused_as_the_real_server_does(sb: Sandbox, client: fc.v2.Firecrest) -> None:
    """The sandbox runs as root, but a site reads as the job's user: `tail`, `head` and `view` of a
    mode-000 file answer 403 with the remote command's message (measured on the real server), while
    `stat` and `ls` still work."""
    path = sb.root / "locked.out"
    path.write_text("secret\n")
    path.chmod(0)
    p = str(path)
    status, body = status_of(client.tail, "local", p, num_bytes=1, exclude_beginning=True)
    assert status == 403 and body["message"] == (
        f"Remote process failed with exit status:1 and error message:tail: cannot open '{p}' for reading: "
        "Permission denied")
    assert status_of(client.head, "local", p, num_bytes=3)[0] == 403
    answer = raw_client(sb).get("/filesystem/local/ops/view", params={"path": p, "offset": 0, "size": 100},
                                headers=bearer(sb))
    assert answer.status_code == 403 and f"dd: failed to open '{p}': Permission denied" in answer.json()["message"]
    assert client.stat("local", p)["size"] == 7
