"""The container agent's operations, against a real python3 process over pipes (no sockets):
placement, modes and nanosecond mtimes, links, and what it refuses (issue 25's security rule:
every component opened relative to its parent without following links)."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import select
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memoh_trio._agent import PROTOCOL_VERSION, command
from memoh_trio._agent.agent import CHECK_FAILED, EXIT_PROTOCOL, EXIT_VERSION, encode_request
from memoh_trio._agent.driver import AgentVersionMismatch, Driver, Record, Reply

T0 = 1_577_836_800_123_456_789  # 2020-01-01 plus some nanoseconds


class LocalAgent:
    """The agent as a child process in ``cwd``, spoken to through a :class:`Driver`."""

    def __init__(self, cwd: Path, dest: str = "dest", version: int | None = None,
                 python: str = sys.executable) -> None:
        self.proc = subprocess.Popen(["sh", "-c", command(dest, python=python)],
                                     cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.driver = Driver() if version is None else Driver(version=version)
        self._write(self.driver.hello()[1])
        self.hello = self._reply()

    def _write(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(frame)
        self.proc.stdin.flush()

    def _reply(self, timeout: float = 20) -> Reply:
        assert self.proc.stdout is not None
        while (reply := self.driver.next_reply()) is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            assert ready, f"the agent did not answer in {timeout} s"
            data = os.read(self.proc.stdout.fileno(), 65536)
            assert data, self.proc.stderr.read() if self.proc.stderr else "eof"
            self.driver.receive_data(data)
        return reply

    def call(self, op: str, fields: dict[str, Any] | None = None, data: bytes = b"",
             timeout: float = 20) -> Reply:
        self._write(self.driver.send(op, fields, data)[1])
        return self._reply(timeout)

    def records(self, op: str, entries: list[Any], data: bytes = b"",
                timeout: float = 20) -> list[Record]:
        key = "paths" if op in ("delete", "hash") else "entries"
        return list(self.call(op, {key: entries}, data, timeout).records)

    def close(self) -> int:
        """Say bye and wait for the exit code; an agent that does not end is killed (-9)."""
        try:
            if self.proc.poll() is None and self.driver.state.value == "ready":
                self._write(self.driver.bye()[1])
                self._reply()
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            return self.proc.wait(10)
        except (AssertionError, subprocess.TimeoutExpired, BrokenPipeError):
            self.proc.kill()
            return self.proc.wait()
        finally:
            for f in (self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    a = LocalAgent(tmp_path)
    yield a
    assert a.close() == 0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_failed(record: Record) -> bool:
    """The record is a failed content check (not a refusal)."""
    return not record.ok and (record.error or "").startswith(CHECK_FAILED + ": ")


def outside_untouched(outside: Path, before: dict[str, bytes]) -> None:
    now = {p.relative_to(outside).as_posix(): p.read_bytes()
           for p in outside.rglob("*") if p.is_file()}
    assert now == before


def test_places_files_dirs_and_links_with_modes_and_ns_mtimes(agent: LocalAgent,
                                                              tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert agent.hello.ok and agent.hello.header["pid"] == agent.proc.pid  # python3 itself
    recs = agent.records("mkdir", [{"path": "a/b/c", "mode": 0o700}, {"path": "a/b"}])
    assert all(r.ok for r in recs)
    big = os.urandom(2 * 1024 * 1024 + 3)
    recs = agent.records("files", [
        {"path": "a/.t1", "size": 3, "final": "a/one", "mode": 0o640, "mtime_ns": T0},
        {"path": "a/b/.t2", "size": 0, "final": "a/b/empty", "mode": 0o600, "mtime_ns": T0 + 1},
        {"path": "new/deep/.t3", "size": 2, "final": "new/deep/two"},
    ], b"abc" + b"" + b"xy")
    assert [(r.path, r.ok) for r in recs] == [("a/one", True), ("a/b/empty", True),
                                             ("new/deep/two", True)]
    assert recs[0].extra == {"size": 3, "mode": 0o640, "mtime_ns": T0}
    assert agent.call("write", {"path": "a/.big", "first": True, "last": False},
                      big[:1000]).ok
    last = agent.call("write", {"path": "a/.big", "first": False, "last": True}, big[1000:])
    assert last.ok and last.header["size"] == len(big)
    recs = agent.records("place", [{"tmp": "a/.big", "path": "a/b/c/big", "size": len(big),
                                    "mode": 0o755, "mtime_ns": T0 + 2, "atime_ns": T0}])
    assert recs[0].ok, recs
    recs = agent.records("symlink", [{"path": "a/link", "target": "../../etc/passwd",
                                      "mtime_ns": T0 + 3}])
    assert recs[0].ok, recs
    recs = agent.records("meta", [{"path": "a/b", "mode": 0o711, "mtime_ns": T0 + 4},
                                  {"path": "a/link", "mtime_ns": T0 + 5}])
    assert all(r.ok for r in recs), recs
    st = (dest / "a/b/c/big").stat()  # before reading it (relatime)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_atime_ns) == (0o755, T0 + 2, T0)
    assert (dest / "a/one").read_bytes() == b"abc"
    assert (dest / "a/b/c/big").read_bytes() == big
    assert stat.S_IMODE((dest / "a/b/c").stat().st_mode) == 0o700
    assert (stat.S_IMODE((dest / "a/b").stat().st_mode), (dest / "a/b").stat().st_mtime_ns) \
        == (0o711, T0 + 4)
    assert os.readlink(dest / "a/link") == "../../etc/passwd"
    assert (dest / "a/link").lstat().st_mtime_ns == T0 + 5
    assert (dest / "a/b/empty").read_bytes() == b""
    assert sorted(p.name for p in dest.rglob(".*")) == []  # every temporary renamed
    for how in ("syncfs", "fsync"):
        reply = agent.call("flush", {"how": how})
        assert reply.ok and reply.header["how"] == how, reply
    # fsync: the 4 files placed, and DEST plus the 5 directories whose entries or inodes this
    # agent changed (a, a/b, a/b/c, new, new/deep)
    reply = agent.call("flush", {"how": "fsync"})
    assert (reply.header["files"], reply.header["dirs"]) == (4, 6), reply


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "victim").write_bytes(b"mine")
    return out


def test_a_symlink_on_the_way_fails_every_entry_and_nothing_lands_outside(
        agent: LocalAgent, tmp_path: Path, outside: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "d").symlink_to(outside)
    (dest / "real").mkdir()
    (dest / "real" / ".t").write_bytes(b"12")
    checks = {
        "mkdir": agent.records("mkdir", [{"path": "d/sub"}]),
        "files": agent.records("files", [{"path": "d/.t", "size": 2, "final": "d/f"},
                                         {"path": "real/.u", "size": 2, "final": "d/g"}],
                               b"abcd"),
        "place": agent.records("place", [{"tmp": "real/.t", "path": "d/x/y", "size": 2}]),
        "symlink": agent.records("symlink", [{"path": "d/l", "target": "/"}]),
        "meta": agent.records("meta", [{"path": "d/victim", "mode": 0o777, "mtime_ns": T0}]),
        "delete": agent.records("delete", ["d/victim"]),
    }
    for op, recs in checks.items():
        assert recs and all(not r.ok for r in recs), (op, recs)
        assert all("a symlink is in the way at 'd'" in (r.error or "") for r in recs), (op, recs)
        assert not any(check_failed(r) for r in recs), (op, recs)  # a refusal, not a check
    outside_untouched(outside, {"victim": b"mine"})
    assert stat.S_IMODE((outside / "victim").stat().st_mode) != 0o777
    assert (dest / "real" / ".t").read_bytes() == b"12"  # a failed place leaves its temporary


def test_fifos_never_block_the_agent(agent: LocalAgent, tmp_path: Path) -> None:
    # A process in the container puts FIFOs where the agent opens files: at a temporary name
    # it writes (replaced: the agent creates its temporaries itself, O_EXCL), one it places
    # (refused), and a path whose metadata it sets or flushes (no open may block).
    dest = tmp_path / "dest"
    for name in (".t", ".u", "f"):
        os.mkfifo(dest / name)
    recs = agent.records("files", [{"path": ".t", "size": 2, "final": "a"}], b"ok")
    assert recs[0].ok and (dest / "a").read_bytes() == b"ok" and not (dest / ".t").exists()
    recs = agent.records("place", [{"tmp": ".u", "path": "b"}])
    assert not recs[0].ok and "not a regular file" in (recs[0].error or ""), recs
    assert agent.records("meta", [{"path": "f", "mode": 0o600}])[0].ok
    reply = agent.call("flush", {"how": "fsync"})
    assert reply.header["files"] == 2, reply  # a, and f (its mode changed; fsync refused)
    assert stat.S_ISFIFO((dest / "f").lstat().st_mode)


def test_a_file_where_a_directory_must_be(agent: LocalAgent, tmp_path: Path) -> None:
    (tmp_path / "dest" / "f").write_bytes(b"x")
    recs = agent.records("files", [{"path": "f/.t", "size": 1, "final": "f/g"}], b"y")
    assert not recs[0].ok and "not a directory on the way at 'f'" in (recs[0].error or "")


def test_links_at_the_last_component_are_never_followed(agent: LocalAgent, tmp_path: Path,
                                                        outside: Path) -> None:
    dest = tmp_path / "dest"
    (dest / ".t").symlink_to(outside / "victim")  # a temporary name that is a link
    (dest / "final").symlink_to(outside / "victim")  # a final name that is a link
    recs = agent.records("files", [{"path": ".t", "size": 3, "final": "x"}], b"new")
    assert recs[0].ok, recs  # the link at the temporary name is replaced, not followed
    recs = agent.records("files", [{"path": ".u", "size": 3, "final": "final"}], b"new")
    assert recs[0].ok, recs  # the link itself is replaced, not its target
    assert not (dest / "final").is_symlink() and (dest / "final").read_bytes() == b"new"
    recs = agent.records("meta", [{"path": "x2", "mode": 0o777}])
    assert not recs[0].ok
    outside_untouched(outside, {"victim": b"mine"})


def test_a_directory_swapped_for_a_symlink_before_placement(agent: LocalAgent, tmp_path: Path,
                                                           outside: Path) -> None:
    # The temporaries are written; then a process in the container moves the directory aside
    # and puts a symlink to elsewhere in its place; then the files are placed.
    dest = tmp_path / "dest"
    recs = agent.records("files", [{"path": f"d/.t{i}", "size": 1} for i in range(5)],
                         b"01234")
    assert all(r.ok for r in recs)
    (dest / "d").rename(dest / "d.aside")
    (dest / "d").symlink_to(outside)
    (outside / ".t0").write_bytes(b"X")  # a temporary of the same name outside
    recs = agent.records("place", [{"tmp": f"d/.t{i}", "path": f"d/f{i}", "size": 1}
                                   for i in range(5)])
    assert all(not r.ok and "symlink" in (r.error or "") for r in recs), recs
    outside_untouched(outside, {"victim": b"mine", ".t0": b"X"})
    assert sorted(p.name for p in (dest / "d.aside").iterdir()) == [f".t{i}" for i in range(5)]


def test_a_directory_swapped_for_a_symlink_inside_one_request(agent: LocalAgent, tmp_path: Path,
                                                             outside: Path) -> None:
    # The agent keeps a request's directory descriptors (issue 25: a component is opened once
    # per request, not once per entry). A process swaps the directory for a symlink to
    # elsewhere while one ``files`` request places thousands of files in it: what comes after
    # the swap still goes into the directory (moved aside, not through the link), and every
    # entry of that directory fails, since it is no longer at its path when the request ends.
    dest = tmp_path / "dest"
    (dest / "d").mkdir()
    n = 3000
    swapped = threading.Event()

    def swap() -> None:
        deadline = time.monotonic() + 30
        while not (dest / "d" / "f0000").exists() and time.monotonic() < deadline:
            pass
        (dest / "d").rename(dest / "d.aside")
        (dest / "d").symlink_to(outside)
        swapped.set()

    swapper = threading.Thread(target=swap)
    swapper.start()
    recs = agent.records("files", [{"path": f"d/.t{i:04d}", "size": 1, "final": f"d/f{i:04d}"}
                                   for i in range(n)], b"x" * n, timeout=60)
    swapper.join()
    assert swapped.is_set()
    placed = sorted(p.name for p in (dest / "d.aside").iterdir())
    assert placed and placed[-1] == f"f{n - 1:04d}", placed[-3:]  # swap before the end
    assert all(not r.ok and "was replaced while the entry was placed" in (r.error or "")
               for r in recs), [r for r in recs if r.ok][:3]
    outside_untouched(outside, {"victim": b"mine"})


def test_a_temporary_replaced_before_placement_is_refused(agent: LocalAgent,
                                                         tmp_path: Path) -> None:
    # Between the write and the place, a process swaps the temporary for its own file of the
    # same size (moving ours aside, or deleting it: the new file may get its inode number):
    # the agent places only the file it wrote.
    dest = tmp_path / "dest"
    for i, swap in enumerate(("rename", "unlink")):
        assert agent.call("write", {"path": f".t{i}", "first": True, "last": True}, b"real").ok
        if swap == "rename":
            (dest / f".t{i}").rename(dest / "aside")
        else:
            (dest / f".t{i}").unlink()
        (dest / f".t{i}").write_bytes(b"fake")
        recs = agent.records("place", [{"tmp": f".t{i}", "path": "f", "size": 4}])
        assert not recs[0].ok and "replaced meanwhile" in (recs[0].error or ""), recs
        assert not check_failed(recs[0])
        assert not (dest / "f").exists()
    # a temporary the agent did not write (WriteRaw's) is placed on its size alone
    (dest / ".w").write_bytes(b"server")
    assert agent.records("place", [{"tmp": ".w", "path": "g", "size": 6}])[0].ok


def test_bad_paths_are_refused(agent: LocalAgent) -> None:
    bad = ["../x", "/etc/passwd", "a//b", "", "a/./b", "a/..", "x\x00y"]
    recs = agent.records("mkdir", [{"path": p} for p in bad])
    assert [r.ok for r in recs] == [False] * len(bad)
    assert all("bad path" in (r.error or "") for r in recs)


def test_a_temporary_of_the_wrong_size_is_not_placed(agent: LocalAgent, tmp_path: Path) -> None:
    assert agent.records("files", [{"path": ".t", "size": 3}], b"abc")[0].ok
    recs = agent.records("place", [{"tmp": ".t", "path": "f", "size": 4}])
    assert check_failed(recs[0]) and "'.t' has 3 bytes, not 4" in (recs[0].error or ""), recs
    assert not (tmp_path / "dest" / "f").exists() and (tmp_path / "dest" / ".t").exists()
    recs = agent.records("files", [{"path": ".u", "size": 9}], b"abc")  # fewer bytes came
    assert check_failed(recs[0]) and "3 bytes arrived, not 9" in (recs[0].error or ""), recs


def test_place_checks_the_sha256_before_anything_changes(agent: LocalAgent,
                                                         tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    data = os.urandom(2 * 1024 * 1024 + 5)  # more than one read of the agent's
    (dest / "f").write_bytes(b"old")
    for tmp in (".good", ".bad"):
        assert agent.call("write", {"path": tmp, "first": True, "last": True}, data).ok
    (dest / ".raw").write_bytes(b"by WriteRaw")  # a temporary the agent did not write
    entry = {"path": "f", "size": len(data), "mode": 0o644, "mtime_ns": T0}
    wrong = sha256(data[:-1] + b"X")
    recs = agent.records("place", [{**entry, "tmp": ".bad", "sha256": wrong}])
    assert check_failed(recs[0]), recs
    assert f"'.bad' has sha256 {sha256(data)}, not {wrong}" in (recs[0].error or "")
    assert (dest / "f").read_bytes() == b"old"  # nothing renamed
    bad = (dest / ".bad").stat()  # the temporary is left as it was: no mode, no times
    assert bad.st_size == len(data) and stat.S_IMODE(bad.st_mode) == 0o600
    assert bad.st_mtime_ns != T0
    recs = agent.records("place", [{**entry, "tmp": ".good", "sha256": sha256(data)},
                                   {"tmp": ".raw", "path": "g", "size": 11,
                                    "sha256": sha256(b"by WriteRaw")}])
    assert [r.ok for r in recs] == [True, True], recs
    assert recs[0].extra == {"size": len(data), "mode": 0o644, "mtime_ns": T0,
                             "sha256": sha256(data)}
    assert (dest / "f").read_bytes() == data and (dest / "g").read_bytes() == b"by WriteRaw"
    assert not (dest / ".good").exists() and not (dest / ".raw").exists()
    # a sha256 that is not one is refused (not a failed check), before anything is opened
    for bad_hash in ("A" * 64, "ab", 7):
        (dest / ".t").write_bytes(b"x")
        recs = agent.records("place", [{"tmp": ".t", "path": "h", "size": 1,
                                        "sha256": bad_hash}])
        assert not recs[0].ok and not check_failed(recs[0]), recs
        assert "bad sha256" in (recs[0].error or "") and not (dest / "h").exists()


def test_files_checks_the_sha256_of_what_it_wrote(agent: LocalAgent, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    recs = agent.records("files", [
        {"path": ".a", "size": 3, "sha256": sha256(b"abc"), "final": "a", "mode": 0o640},
        {"path": ".b", "size": 3, "sha256": sha256(b"xyz"), "final": "b"},  # "def" came
        {"path": ".c", "size": 3, "sha256": sha256(b"ghi")},  # written, not placed
        {"path": ".d", "size": 3, "sha256": sha256(b"xyz")},
        {"path": ".e", "size": 0, "sha256": sha256(b""), "final": "e"},
        {"path": ".f", "size": 3, "sha256": "0" * 63, "final": "f"},
    ], b"abcdefghijklmno")
    assert [(r.path, r.ok) for r in recs] == [("a", True), ("b", False), (".c", True),
                                             (".d", False), ("e", True), ("f", False)]
    assert recs[0].extra == {"size": 3, "mode": 0o640, "mtime_ns": recs[0].extra["mtime_ns"],
                             "sha256": sha256(b"abc")}
    assert recs[2].extra == {"size": 3, "sha256": sha256(b"ghi")}
    assert check_failed(recs[1]) and check_failed(recs[3]), recs
    assert f"'.b' has sha256 {sha256(b'def')}, not {sha256(b'xyz')}" in (recs[1].error or "")
    assert not check_failed(recs[5]) and "bad sha256" in (recs[5].error or "")
    assert (dest / "a").read_bytes() == b"abc" and (dest / "e").read_bytes() == b""
    assert not (dest / "b").exists() and not (dest / "f").exists()
    assert (dest / ".c").read_bytes() == b"ghi"


def test_hash_reads_regular_files_only_and_never_follows_a_link(agent: LocalAgent,
                                                                tmp_path: Path,
                                                                outside: Path) -> None:
    dest = tmp_path / "dest"
    data = os.urandom(3 * 1024 * 1024 + 1)
    (dest / "sub").mkdir()
    (dest / "sub" / "big").write_bytes(data)
    (dest / "empty").write_bytes(b"")
    (dest / "link").symlink_to(outside / "victim")
    (dest / "dlink").symlink_to(outside)
    os.mkfifo(dest / "fifo")
    paths = ["sub/big", "empty", "link", "dlink/victim", "fifo", "sub", "gone", "no/dir/x",
             "../x"]
    recs = agent.records("hash", paths, timeout=10)  # a FIFO opened would block it for good
    assert [r.path for r in recs] == paths
    by = dict(zip(paths, recs, strict=True))
    assert by["sub/big"].ok and by["sub/big"].extra == {"sha256": sha256(data),
                                                        "size": len(data)}
    assert by["empty"].extra == {"sha256": sha256(b""), "size": 0}
    refused = {"link": "is not a regular file (a symlink, not followed)",
               "dlink/victim": "a symlink is in the way at 'dlink'",
               "fifo": "is not a regular file (a FIFO)",
               "sub": "is not a regular file (a directory)",
               "../x": "bad path"}
    for path, why in refused.items():
        rec = by[path]
        assert not rec.ok and why in (rec.error or ""), rec
        assert rec.extra == {} and not check_failed(rec), rec  # nothing of the target's
    for path in ("gone", "no/dir/x"):
        assert not by[path].ok and by[path].extra == {"absent": True}, by[path]
    assert not check_failed(by["gone"])
    outside_untouched(outside, {"victim": b"mine"})


def test_hash_never_opens_a_device(agent: LocalAgent, tmp_path: Path) -> None:
    try:
        os.mknod(tmp_path / "dest" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    rec = agent.records("hash", ["null"], timeout=10)[0]
    assert not rec.ok and "(a character device)" in (rec.error or "") and rec.extra == {}


def test_delete_removes_files_and_links_never_directories(agent: LocalAgent,
                                                          tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "dir").mkdir()
    (dest / "f").write_bytes(b"")
    (dest / "l").symlink_to("dir")
    recs = agent.records("delete", ["f", "l", "dir", "gone"])
    assert [(r.ok, r.extra) for r in recs[:2]] == [(True, {}), (True, {})]
    assert not recs[2].ok and "is a directory" in (recs[2].error or "")
    assert recs[3].ok and recs[3].extra == {"absent": True}
    assert sorted(p.name for p in dest.iterdir()) == ["dir"]


def test_an_unknown_operation_is_answered_and_the_agent_goes_on(agent: LocalAgent) -> None:
    reply = agent.call("frobnicate")
    assert not reply.ok and "unknown operation" in (reply.error or "")
    assert agent.records("mkdir", [{"path": "x"}])[0].ok


def test_another_protocol_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AgentVersionMismatch):
        LocalAgent(tmp_path, version=99)
    # (the process, refused, exits EXIT_VERSION: see the next test, with the raw stream)


@pytest.mark.parametrize(("stream", "code", "message"), [
    (encode_request({"op": "hello", "id": 0, "version": 99}), EXIT_VERSION, b""),
    (b"GET / HTTP/1.1\r\n\r\n", EXIT_PROTOCOL, b"bad frame prefix"),
    (encode_request({"op": "hello", "id": 0, "version": PROTOCOL_VERSION})
     + encode_request({"op": "mkdir", "id": 1})[:-2], EXIT_PROTOCOL, b"ended inside a frame"),
])
def test_a_broken_stream_ends_the_agent_with_a_distinct_code(tmp_path: Path, stream: bytes,
                                                             code: int, message: bytes) -> None:
    done = subprocess.run(["sh", "-c", command("dest", python=sys.executable)], cwd=tmp_path,
                          input=stream, capture_output=True, timeout=30)
    assert done.returncode == code, done.stderr
    assert message in done.stderr


_PYTHON_VERSION = re.compile(r"/(?:versions/3\.(\d+)\.\d+/bin/python3|python3\.(\d+))$")


def other_pythons() -> dict[str, str]:
    """One python3 per version from 3.8 on this machine (pyenv's, the system's), by version:
    the agent runs on the container's python3 (alpine's is 3.12), not on the client's."""
    found: dict[str, str] = {}
    for path in (sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
                 + sorted(glob.glob("/usr/bin/python3.*"))):
        m = _PYTHON_VERSION.search(path)
        if m and int(minor := m.group(1) or m.group(2)) >= 8 and os.access(path, os.X_OK):
            found.setdefault(f"3.{minor}", path)
    return dict(sorted(found.items(), key=lambda item: int(item[0][2:])))


PYTHONS = other_pythons()


@pytest.mark.parametrize("version", list(PYTHONS) or [pytest.param("3.8", marks=pytest.mark.skip(
    reason="no python3 >= 3.8 in ~/.pyenv/versions or as /usr/bin/python3.N"))])
def test_the_agent_runs_on_every_python3_from_3_8(version: str, tmp_path: Path) -> None:
    agent = LocalAgent(tmp_path, python=PYTHONS[version])
    try:
        assert agent.hello.ok and agent.hello.header["python"].startswith(version + ".")
        recs = agent.records("files", [{"path": ".t", "size": 3, "sha256": sha256(b"abc"),
                                        "final": "d/f", "mode": 0o640, "mtime_ns": T0}], b"abc")
        assert recs[0].ok and recs[0].extra["sha256"] == sha256(b"abc"), recs
        assert agent.call("write", {"path": ".u", "first": True, "last": True}, b"xy").ok
        recs = agent.records("place", [{"tmp": ".u", "path": "d/g", "size": 2,
                                        "sha256": sha256(b"xy")}])
        assert recs[0].ok, recs
        recs = agent.records("hash", ["d/f", "d/gone"])
        assert recs[0].extra == {"sha256": sha256(b"abc"), "size": 3}
        assert recs[1].extra == {"absent": True}
        assert agent.call("flush", {"how": "syncfs"}).ok
    finally:
        assert agent.close() == 0
    assert (tmp_path / "dest/d/f").stat().st_mtime_ns == T0


def test_a_destination_behind_a_symlink_is_refused(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "dest").symlink_to(outside)
    with pytest.raises(Exception, match=r"refused to start.*cannot open the destination"):
        LocalAgent(tmp_path)
