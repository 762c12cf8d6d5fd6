"""Differential conformance with Memoh's own ContainerService (issue 10).

The same calls, sent with grpcio (an implementation independent of both servers), go to Memoh's
Go server and to ``memoh-trio serve`` (child processes), each over its own fresh root with
identical contents; the outcomes are compared: status codes, response fields (Stat/ListDir
entries and mode strings, ReadFile formatting), Exec output and exit codes, and what each call
left on disk. Every case must come out the same, except the ones in :data:`DIFFERENT`, each
with why it is deliberate; for those the test checks that they still differ (so the list never
goes stale). ``pytest -s`` prints the table (call -> Memoh -> memoh-trio -> same/different).

Also here: Memoh's own migrator into ``memoh-trio serve`` has the same outcome as into Memoh's
server, empty files and directories included (issue 10, item 5).
"""

# Test set-up and checks touch the local file system directly, on purpose.
# ruff: noqa: ASYNC240

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from peers import TEST_TOKEN, memoh_go_server, memoh_trio_server, run_memoh_go_seed

from benchmarks.grpcio_peer import load_stubs

pb2, pb2_grpc = load_stubs()

pytestmark = pytest.mark.memoh_go

MiB = 1024 * 1024
#: The fixed mtime of every entry of the fixture tree (2021-03-04T05:06:07Z).
MTIME = 1614834367
CALL_TIMEOUT = 30.0

Outcome = tuple[Any, ...]
Case = Callable[[Any, Path], Outcome]

#: Cases where memoh-trio answers differently from Memoh's server on purpose, and why.
DIFFERENT: dict[str, str] = {
    "stat_root": "the root's own name is not revealed: memoh-trio answers `/` for the root "
                 "(paths are relative to it), Memoh the base name of its data directory",
    "stat_absolute": "root confinement: `/x` means ROOT/x on memoh-trio; Memoh uses an absolute "
                     "path as is, on the host side of the container",
    "stat_dotdot": "root confinement: `..` above the root is PERMISSION_DENIED; Memoh follows it",
    "readfile_link_outside": "root confinement: a symlink leading out of the root is "
                             "PERMISSION_DENIED; Memoh follows it",
    "listdir_file": "a file is not a directory: FAILED_PRECONDITION; Memoh says NOT_FOUND",
    "listdir_recursive_missing": "a missing directory is NOT_FOUND, not an empty listing "
                                 "(Memoh's WalkDir skips the error and answers OK, empty)",
    "listdir_recursive_file": "a file is not a directory: FAILED_PRECONDITION; Memoh answers "
                              "OK with no entries",
    "readfile_dir": "a directory is not a file: FAILED_PRECONDITION; Memoh answers OK, empty",
    "readfile_invalid_utf8": "bytes that are not UTF-8 become U+FFFD (proto strings must be "
                             "UTF-8); Memoh's reply fails to marshal (INTERNAL)",
    "readfile_line_over_1mib": "a line over 1 MiB is cut like any long line; Memoh's "
                               "bufio.Scanner stops there and answers OK with nothing",
    "readraw_dir": "a directory is not a file: FAILED_PRECONDITION; Memoh fails the read "
                   "(INTERNAL)",
    "mkdir_over_file": "specific status codes (FAILED_PRECONDITION for a file in the way) where "
                       "Memoh answers INTERNAL for every failed mkdir/write/rename/delete",
    "writefile_onto_dir": "specific status codes (FAILED_PRECONDITION), Memoh INTERNAL",
    "writeraw_under_file": "specific status codes (FAILED_PRECONDITION), Memoh INTERNAL",
    "rename_missing": "specific status codes (NOT_FOUND), Memoh INTERNAL",
    "rename_onto_nonempty_dir": "specific status codes (FAILED_PRECONDITION), Memoh INTERNAL",
    "delete_nonempty_dir": "specific status codes (FAILED_PRECONDITION), Memoh INTERNAL",
    "exec_relative_workdir": "`work_dir` is resolved under the root like every path; Memoh "
                             "takes a relative one from its own process's working directory "
                             "(here that fails: INTERNAL)",
    "exec_missing_workdir": "specific status codes (NOT_FOUND), Memoh INTERNAL (chdir fails)",
    "exec_stdin_in_first_message": "memoh-trio refuses `stdin_data` in the first ExecInput "
                                   "(INVALID_ARGUMENT); Memoh silently drops it. Loud instead "
                                   "of silent data loss; memoh-trio's client sends the command "
                                   "alone first, so it works with both",
    "exec_timeout": "a command killed at `timeout_seconds` exits 128+9 (shell convention, the "
                    "whole process group is killed); Memoh reports -1 (it kills /bin/sh only)",
    "writeraw_abort": "`abort=true` discards the upload (ABORTED, nothing written); Memoh "
                      "ignores `abort`, writes the data and answers OK",
    "writeraw_5mib_message": "messages up to 16 MiB are accepted; grpc-go's default receive "
                             "limit is 4 MiB (RESOURCE_EXHAUSTED)",
    "writefile_5mib_message": "messages up to 16 MiB are accepted; grpc-go refuses over 4 MiB",
}


# --------------------------------------------------------------------------- fixture tree


def build_root(base: Path) -> Path:
    """``base/data`` (the served root) and ``base/outside.txt`` beside it, identical each time."""
    root = base / "data"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "emptydir").mkdir()
    (base / "outside.txt").write_bytes(b"outside the root\n")
    files = {
        "a.txt": b"".join(b"line %d\n" % i for i in range(1, 301)),
        "crlf.txt": b"one\r\ntwo\r\n",
        "noeol.txt": b"x\ny",
        "long.txt": "é".join(["a" * 700, "b" * 700]).encode() + b"\nshort\n",
        "wide.txt": b"".join(b"%s\n" % (b"w" * 300) for _ in range(40)),
        "bin.dat": b"abc\x00def" * 10,
        "bad-utf8.txt": b"ok\n\xff\xfe broken\n",
        "huge-line.txt": b"z" * (MiB + 10) + b"\nafter\n",
        "empty": b"",
        "dir/sub/deep.txt": b"deep\n",
        "dir/f.txt": b"f\n",
        "secret": b"mode 0600\n",
        "big.bin": bytes(range(256)) * (3 * MiB // 256),
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    os.chmod(root / "secret", 0o600)
    os.chmod(root / "dir" / "sub", 0o750)
    (root / "link").symlink_to("a.txt")
    (root / "dirlink").symlink_to("dir")
    (root / "out").symlink_to("../outside.txt")
    (root / "full").mkdir()
    (root / "full" / "x").write_bytes(b"x")
    for cases_dir in ("w",):
        (root / cases_dir).mkdir()
    for dirpath, dirs, names in os.walk(root, topdown=False):
        for name in dirs + names:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))
    return root


def host_state(root: Path, *rels: str) -> Outcome:
    """What is on disk at ``rels``: kind, permission bits, content digest."""
    out: list[Outcome] = []
    for rel in rels:
        p = root / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            out.append((rel, "missing"))
            continue
        if stat.S_ISDIR(st.st_mode):
            out.append((rel, "dir", oct(stat.S_IMODE(st.st_mode)), sorted(os.listdir(p))))
        elif stat.S_ISLNK(st.st_mode):
            out.append((rel, "link", os.readlink(p)))
        else:
            data = p.read_bytes()
            out.append((rel, "file", oct(stat.S_IMODE(st.st_mode)), len(data),
                        hashlib.sha256(data).hexdigest()[:12]))
    return tuple(out)


# --------------------------------------------------------------------------- calls


def entry(e: Any) -> Outcome:
    return (e.path, e.is_dir, e.size, e.mode, e.mod_time)


def rpc(fn: Callable[[], Any], norm: Callable[[Any], Any] = lambda r: ()) -> Outcome:
    try:
        return ("OK", norm(fn()))
    except grpc.RpcError as exc:
        return (exc.code().name,)


def stat_(path: str) -> Case:
    return lambda s, root: rpc(lambda: s.Stat(pb2.StatRequest(path=path), timeout=CALL_TIMEOUT),
                               lambda r: entry(r.entry))


def listdir(path: str, recursive: bool = False) -> Case:
    return lambda s, root: rpc(
        lambda: s.ListDir(pb2.ListDirRequest(path=path, recursive=recursive),
                          timeout=CALL_TIMEOUT),
        lambda r: tuple(entry(e) for e in r.entries))


def readfile(path: str, offset: int = 0, n: int = 0) -> Case:
    return lambda s, root: rpc(
        lambda: s.ReadFile(pb2.ReadFileRequest(path=path, line_offset=offset, n_lines=n),
                           timeout=CALL_TIMEOUT),
        lambda r: (r.content, r.total_lines, r.binary))


def readraw(path: str) -> Case:
    def run(s: Any, root: Path) -> Outcome:
        try:
            data = b"".join(c.data for c in s.ReadRaw(pb2.ReadRawRequest(path=path),
                                                      timeout=CALL_TIMEOUT))
        except grpc.RpcError as exc:
            return (exc.code().name,)
        return ("OK", len(data), hashlib.sha256(data).hexdigest()[:12])
    return run


def exec_(first: Any, *later: bytes) -> Case:
    def run(s: Any, root: Path) -> Outcome:
        def messages() -> Iterator[Any]:
            yield first
            for data in later:
                yield pb2.ExecInput(stdin_data=data)

        out, err, code = b"", b"", None
        try:
            for msg in s.Exec(messages(), timeout=CALL_TIMEOUT):
                if msg.stream == pb2.ExecOutput.STDOUT:
                    out += msg.data
                elif msg.stream == pb2.ExecOutput.STDERR:
                    err += msg.data
                else:
                    code = msg.exit_code
        except grpc.RpcError as exc:
            return (exc.code().name,)
        return ("OK", out if len(out) < 200 else (len(out), hashlib.sha256(out).hexdigest()[:12]),
                err, code)
    return run


def with_state(case: Case, *rels: str) -> Case:
    return lambda s, root: (*case(s, root), host_state(root, *rels))


def writeraw(chunks: list[Any], *rels: str) -> Case:
    return with_state(lambda s, root: rpc(
        lambda: s.WriteRaw(iter(chunks), timeout=CALL_TIMEOUT), lambda r: r.bytes_written),
        *rels)


def unary(method: str, request: Any, *rels: str) -> Case:
    return with_state(lambda s, root: rpc(
        lambda: getattr(s, method)(request, timeout=CALL_TIMEOUT)), *rels)


def ExecIn(command: str = "", **kw: Any) -> Any:  # reads like the message it builds
    return pb2.ExecInput(command=command, **kw)


#: (name, call) in order; read-only calls first, then calls that change the tree (each in its
#: own corner of it).
CASES: list[tuple[str, Case]] = [
    ("stat_file", stat_("a.txt")),
    ("stat_dir_mode", stat_("dir/sub")),
    ("stat_0600", stat_("secret")),
    ("stat_link_followed", stat_("link")),
    ("stat_root", stat_(".")),
    ("stat_missing", stat_("nope")),
    ("stat_empty_path", stat_("")),
    ("stat_absolute", stat_("/a.txt")),
    ("stat_dotdot", stat_("../outside.txt")),
    ("listdir_root", listdir("")),
    ("listdir_sub", listdir("dir")),
    ("listdir_recursive", listdir("dir", True)),
    ("listdir_via_link", listdir("dirlink")),
    ("listdir_missing", listdir("nope")),
    ("listdir_file", listdir("a.txt")),
    ("listdir_recursive_missing", listdir("nope", True)),
    ("listdir_recursive_file", listdir("a.txt", True)),
    ("readfile_default_200_lines", readfile("a.txt")),
    ("readfile_range", readfile("a.txt", 10, 5)),
    ("readfile_offset_past_end", readfile("a.txt", 500, 5)),
    ("readfile_n_over_200", readfile("a.txt", 1, 1000)),
    ("readfile_negative", readfile("a.txt", -3, -1)),
    ("readfile_crlf", readfile("crlf.txt")),
    ("readfile_no_final_newline", readfile("noeol.txt")),
    ("readfile_long_line_cut", readfile("long.txt")),
    ("readfile_5120_bytes", readfile("wide.txt")),
    ("readfile_binary", readfile("bin.dat")),
    ("readfile_empty", readfile("empty")),
    ("readfile_link", readfile("link", 1, 2)),
    ("readfile_missing", readfile("nope")),
    ("readfile_empty_path", readfile("")),
    ("readfile_dir", readfile("dir")),
    ("readfile_invalid_utf8", readfile("bad-utf8.txt")),
    ("readfile_line_over_1mib", readfile("huge-line.txt")),
    ("readfile_link_outside", readfile("out")),
    ("readraw_big", readraw("big.bin")),
    ("readraw_empty", readraw("empty")),
    ("readraw_missing", readraw("nope")),
    ("readraw_dir", readraw("dir")),
    ("exec_stdout_exit", exec_(ExecIn("echo out; echo err >&2; exit 3"))),
    ("exec_env", exec_(ExecIn("echo $FOO; pwd -P | xargs basename", env=["FOO=bar"]))),
    ("exec_relative_workdir", exec_(ExecIn("pwd -P | xargs basename", work_dir="dir/sub"))),
    ("exec_large_output", exec_(ExecIn("head -c 300000 /dev/zero | tr '\\0' a"))),
    ("exec_stdin_later_messages", exec_(ExecIn("cat"), b"one ", b"two ", b"three")),
    ("exec_stdin_in_first_message", exec_(ExecIn("cat", stdin_data=b"first "), b"second")),
    ("exec_stdin_large", exec_(ExecIn("wc -c"), *[b"s" * MiB] * 3)),
    ("exec_exits_before_stdin", exec_(ExecIn("exit 0"), *[b"x" * MiB] * 4)),
    ("exec_empty_command", exec_(ExecIn(""))),
    ("exec_missing_workdir", exec_(ExecIn("true", work_dir="nope"))),
    ("exec_timeout", exec_(ExecIn("sleep 3", timeout_seconds=1))),
    ("writeraw_empty_stream", writeraw([], "w")),
    ("writeraw_path_only", writeraw([pb2.WriteRawChunk(path="w/e0")], "w/e0")),
    ("writeraw_large", writeraw(
        [pb2.WriteRawChunk(path="w/big", data=b"")]
        + [pb2.WriteRawChunk(data=bytes([i]) * MiB) for i in range(9)], "w/big")),
    ("writeraw_no_path", writeraw([pb2.WriteRawChunk(data=b"x")], "w")),
    ("writeraw_parents_created", writeraw(
        [pb2.WriteRawChunk(path="w/p/q/r.txt", data=b"r")], "w/p/q/r.txt")),
    ("writeraw_replace_keeps_mode", writeraw(
        [pb2.WriteRawChunk(path="secret", data=b"new secret")], "secret")),
    ("writeraw_under_file", writeraw([pb2.WriteRawChunk(path="a.txt/x", data=b"x")], "a.txt")),
    ("writeraw_abort", writeraw([pb2.WriteRawChunk(path="w/ab", data=b"data"),
                                 pb2.WriteRawChunk(abort=True)], "w/ab")),
    ("writeraw_5mib_message", writeraw([pb2.WriteRawChunk(path="w/m5", data=b"5" * (5 * MiB))],
                                       "w/m5")),
    ("writeraw_17mib_message", writeraw(
        [pb2.WriteRawChunk(path="w/m17", data=b"7" * (17 * MiB))], "w/m17")),
    ("writefile_new", unary("WriteFile", pb2.WriteFileRequest(path="w/wf/new.txt", content=b"n"),
                            "w/wf/new.txt")),
    ("writefile_onto_dir", unary("WriteFile", pb2.WriteFileRequest(path="dir", content=b"n"),
                                 "dir")),
    ("writefile_5mib_message", unary(
        "WriteFile", pb2.WriteFileRequest(path="w/wf5", content=b"5" * (5 * MiB)), "w/wf5")),
    ("mkdir_new_nested", unary("Mkdir", pb2.MkdirRequest(path="w/m/n/o"), "w/m/n/o")),
    ("mkdir_existing_dir", unary("Mkdir", pb2.MkdirRequest(path="dir"), "dir")),
    ("mkdir_over_file", unary("Mkdir", pb2.MkdirRequest(path="a.txt"), "a.txt")),
    ("mkdir_empty_path", unary("Mkdir", pb2.MkdirRequest(path=""), "dir/sub")),
    ("rename_file", unary("Rename", pb2.RenameRequest(old_path="dir/f.txt", new_path="w/r/f.txt"),
                          "dir/f.txt", "w/r/f.txt")),
    ("rename_onto_existing_file", unary(
        "Rename", pb2.RenameRequest(old_path="noeol.txt", new_path="crlf.txt"),
        "noeol.txt", "crlf.txt")),
    ("rename_onto_nonempty_dir", unary(
        "Rename", pb2.RenameRequest(old_path="emptydir", new_path="full"), "emptydir", "full")),
    ("rename_missing", unary("Rename", pb2.RenameRequest(old_path="nope", new_path="w/x"),
                             "w/x")),
    ("rename_empty", unary("Rename", pb2.RenameRequest(old_path="", new_path="w/x"), "w/x")),
    ("delete_missing", unary("DeleteFile", pb2.DeleteFileRequest(path="nope"), "nope")),
    ("delete_nonempty_dir", unary("DeleteFile", pb2.DeleteFileRequest(path="full"), "full")),
    ("delete_recursive", unary("DeleteFile", pb2.DeleteFileRequest(path="full", recursive=True),
                               "full")),
    ("delete_link_not_target", unary("DeleteFile", pb2.DeleteFileRequest(path="link"),
                                     "link", "a.txt")),
    ("delete_empty_path", unary("DeleteFile", pb2.DeleteFileRequest(path=""), "dir/sub")),
]


def run_cases(target: str, token: str | None, root: Path) -> dict[str, Outcome]:
    options = [("grpc.max_send_message_length", 64 * MiB),
               ("grpc.max_receive_message_length", 64 * MiB)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb2_grpc.ContainerServiceStub(channel)
        if token is not None:
            stub = _with_token(stub, token)
        return {name: case(stub, root) for name, case in CASES}


def _with_token(stub: Any, token: str) -> Any:
    metadata = (("authorization", f"Bearer {token}"),)

    class Authed:
        def __getattr__(self, name: str) -> Any:
            method = getattr(stub, name)
            return lambda *a, **kw: method(*a, metadata=metadata, **kw)

    return Authed()


def _short(outcome: Outcome) -> str:
    text = repr(outcome[1:] if outcome[0] == "OK" else outcome[0])
    return (text[:70] + "…") if len(text) > 71 else text


async def test_same_calls_same_outcomes(tmp_path: Path) -> None:
    go_root = build_root(tmp_path / "go")
    trio_root = build_root(tmp_path / "trio")
    async with memoh_go_server(go_root) as go, memoh_trio_server(trio_root) as ours:
        memoh = await trio.to_thread.run_sync(run_cases, go.target, None, go_root)
        mine = await trio.to_thread.run_sync(run_cases, ours.target, TEST_TOKEN, trio_root)
    rows = ["| call | Memoh | memoh-trio | same? |", "| --- | --- | --- | --- |"]
    unexpected = []
    for name, _case in CASES:
        same = memoh[name] == mine[name]
        rows.append(f"| {name} | `{_short(memoh[name])}` | `{_short(mine[name])}` | "
                    f"{'same' if same else 'different: ' + DIFFERENT.get(name, 'UNEXPECTED')} |")
        if same == (name in DIFFERENT):
            unexpected.append(f"{name}: Memoh {memoh[name]!r:.300} / memoh-trio "
                              f"{mine[name]!r:.300}")
    print("\n".join(rows))
    assert set(DIFFERENT) <= {name for name, _ in CASES}
    assert unexpected == [], "\n".join(unexpected)


# --------------------------------------------------------------------------- Memoh's migrator


def seed_tree(src: Path) -> None:
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "emptydir" / "nested-empty").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 1200)
    (src / "sub" / "deeper" / "c.txt").write_bytes(b"c\n")
    for rel in ("empty1", "sub/empty2", "sub/deeper/empty3"):
        (src / rel).write_bytes(b"")


def dest_tree(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


async def test_memoh_migrator_with_empty_files_and_dirs(tmp_path: Path) -> None:
    """Memoh's migrator sends no message for an empty file: both servers answer OK, so the run
    completes and renames its source into either server, with the same counts and the same
    destination tree (Memoh's migrator creates neither empty files nor empty directories)."""
    results = {}
    for kind in ("memoh-go", "memoh-trio"):
        src = tmp_path / kind / "bot"
        src.mkdir(parents=True)
        seed_tree(src)
        root = tmp_path / kind / "root"
        root.mkdir()
        server = memoh_go_server(root) if kind == "memoh-go" else memoh_trio_server(
            root, "--no-auth", token=None)
        async with server as peer:
            code, out, _err = await run_memoh_go_seed(src, peer.target)
        results[kind] = (code, out.strip(), src.exists(), Path(str(src) + ".migrated").is_dir(),
                         dest_tree(root))
    for kind in ("memoh-go", "memoh-trio"):
        assert results[kind][:4] == (0, "migrated=6 failed=0 renamed=true", False, True), \
            (kind, results[kind])
    assert results["memoh-trio"] == results["memoh-go"]
