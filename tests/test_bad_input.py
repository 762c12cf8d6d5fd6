"""The bad-input catalogue of issue 4: each case gives a clear message and its exit code
through the real CLI (``python -m memoh_trio ...`` in a subprocess), or the right outcome through
the library, and never loses data.

Exit codes (the CLI's contract): 0 ok, 1 incomplete, 2 usage/bad input, 3 unreachable / not
gRPC / TLS mismatch, 4 refused (token/permission), 5 busy.
"""

# Test set-up and checks touch the local file system directly, on purpose.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import http.server
import os
import shutil
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from faultproxy import open_fault_proxy
from helpers import running, temp_entries, tree_files

from memoh_trio._client import connect
from memoh_trio._migrate import migrate
from memoh_trio._report import MigrationReport
from memoh_trio._tls import ServerTLS

MIGRATED = ".migrated"


# --------------------------------------------------------------------------- helpers


async def run_cli(*args: str, limit: float = 60, **kwargs: Any) -> tuple[int, str, str]:
    """Run ``python -m memoh_trio ARGS``; return (exit code, stdout, stderr)."""
    with trio.fail_after(limit):
        proc = await trio.run_process(
            [sys.executable, "-m", "memoh_trio", *args], capture_stdout=True,
            capture_stderr=True, check=False, **kwargs)
    return proc.returncode, proc.stdout.decode(errors="replace"), \
        proc.stderr.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "bot"
    s.mkdir()
    (s / "a.txt").write_bytes(b"hello\n")
    return s


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def assert_untouched(src: Path, root: Path) -> None:
    assert src.is_dir() and not Path(str(src) + MIGRATED).exists()
    assert temp_entries(root) == []


# --------------------------------------------------------------------------- SRC


async def test_src_missing(tmp_path: Path, root: Path) -> None:
    async with running(root) as addr:
        code, _out, err = await run_cli("migrate", str(tmp_path / "nope"), "--target", str(addr))
    assert code == 2, err
    assert "does not exist" in err and "nope" in err
    assert os.listdir(root) == []


async def test_src_is_a_file(tmp_path: Path, root: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"data")
    async with running(root) as addr:
        code, _out, err = await run_cli("migrate", str(f), "--target", str(addr))
    assert code == 2, err
    assert "not a directory" in err
    assert f.read_bytes() == b"data" and os.listdir(root) == []


async def test_src_unreadable(tmp_path: Path, root: Path) -> None:
    """Mode 000 does not stop root: the CLI runs without CAP_DAC_OVERRIDE/READ_SEARCH."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop the capabilities that bypass modes")
    src = tmp_path / "bot"
    src.mkdir()
    (src / "a.txt").write_bytes(b"secret")
    src.chmod(0)
    try:
        async with running(root) as addr:
            with trio.fail_after(60):
                proc = await trio.run_process(
                    [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable,
                     "-m", "memoh_trio", "migrate", str(src), "--target", str(addr)],
                    capture_stdout=True, capture_stderr=True, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 2, (proc.returncode, err)
        assert "permission denied" in err.lower() and str(src) in err
        assert src.is_dir() and not Path(str(src) + MIGRATED).exists()
        assert os.listdir(root) == []
    finally:
        src.chmod(0o755)


# --------------------------------------------------------------------------- targets


async def test_target_unreachable(src: Path) -> None:
    code, _out, err = await run_cli("migrate", str(src), "--target", f"127.0.0.1:{free_port()}",
                                    limit=30)
    assert code == 3, err
    assert "connect" in err.lower() and "refused" in err.lower(), err
    assert_untouched(src, src)


async def test_target_host_name_that_does_not_resolve(src: Path) -> None:
    """``.invalid`` never resolves (RFC 6761): the error says so (not the resolver's "unknown
    error -2") and the hint names the host; exit 3, nothing touched."""
    code, _out, err = await run_cli("migrate", str(src), "--target", "nosuchhost.invalid:9090",
                                    limit=30)
    assert code == 3, err
    first, hint = err.strip().splitlines()[:2]
    assert "cannot resolve the host name" in first and "unknown error" not in first, err
    assert "'nosuchhost.invalid' does not resolve" in hint, err
    assert_untouched(src, src)


async def test_wrong_port_with_another_tcp_service(src: Path, root: Path) -> None:
    """A port where something else listens and never answers in HTTP/2 (it accepts, then
    closes): unreachable/not gRPC, exit 3."""
    async with running(root) as addr, open_fault_proxy((addr.host, addr.port)) as proxy:
        proxy.refuse = True  # accept and close at once
        code, _out, err = await run_cli("migrate", str(src), "--target", proxy.target,
                                        limit=30)
    assert code == 3, (code, err)
    assert "memoh-trio: error:" in err
    assert_untouched(src, root)


@contextmanager
def http1_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello from HTTP/1.1\n")

        do_POST = do_GET
        do_PRI = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


async def test_non_grpc_listener(src: Path) -> None:
    with http1_server() as port:
        code, _out, err = await run_cli("migrate", str(src), "--target", f"127.0.0.1:{port}",
                                        limit=30)
    assert code == 3, (code, err)
    assert "memoh-trio: error:" in err
    assert "Traceback" not in err
    assert_untouched(src, src)


async def test_tls_mismatch_both_ways(tmp_path: Path, src: Path, root: Path) -> None:
    from _certs import make_certs

    certs = make_certs(tmp_path / "certs")
    tls = ServerTLS(cert=certs.server_cert, key=certs.server_key)
    async with running(root, tls=tls) as addr:
        # Plaintext client, TLS server.
        code, _out, err = await run_cli("migrate", str(src), "--target", str(addr), limit=30)
        assert code == 3, (code, err)
        # TLS client trusting another CA.
        code, _out, err = await run_cli("migrate", str(src), "--target", str(addr),
                                        "--tls-ca", str(certs.other_ca), limit=30)
        assert code == 3, (code, err)
        assert "certificate" in err.lower(), err
    async with running(root) as addr:
        # TLS client, plaintext server.
        code, _out, err = await run_cli("migrate", str(src), "--target", str(addr),
                                        "--tls-ca", str(certs.ca), limit=30)
        assert code == 3, (code, err)
    assert "Traceback" not in err
    assert_untouched(src, root)
    assert os.listdir(root) == []


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_wrong_or_missing_token(src: Path, root: Path, token: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MEMOH_TRIO_TOKEN"}
    async with running(root, token="right") as addr:
        args = ["migrate", str(src), "--target", str(addr)]
        if token is not None:
            args += ["--token", token]
        code, _out, err = await run_cli(*args, env=env, limit=30)
    assert code == 4, (code, err)
    assert "token" in err.lower(), err
    assert_untouched(src, root)
    assert os.listdir(root) == []


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("target", ["nohost", "host:abc", "host:0", "host:99999", "[::1",
                                    ":80", "host:"])
async def test_malformed_target(src: Path, target: str) -> None:
    code, _out, err = await run_cli("migrate", str(src), "--target", target)
    assert code == 2, (target, code, err)
    assert "target" in err.lower()
    assert_untouched(src, src)


@pytest.mark.parametrize("size", ["abc", "0", "-1", "10GiB", "1.5.5MiB"])
async def test_bad_chunk_size(src: Path, size: str) -> None:
    code, _out, err = await run_cli("migrate", str(src), "--target", "127.0.0.1:1",
                                    "--chunk-size", size)
    assert code == 2, (size, code, err)
    assert "chunk" in err.lower() or "size" in err.lower(), err
    assert_untouched(src, src)


@pytest.mark.parametrize("value", ["0", "-3", "many"])
async def test_bad_concurrency(src: Path, value: str) -> None:
    code, _out, err = await run_cli("migrate", str(src), "--target", "127.0.0.1:1",
                                    "--concurrency", value)
    assert code == 2, (value, code, err)
    assert "concurrency" in err
    assert_untouched(src, src)


async def test_library_rejects_bad_options(src: Path, root: Path) -> None:
    from memoh_trio._errors import ConfigError

    async with running(root) as addr, connect(str(addr)) as client:
        for kwargs in ({"concurrency": 0}, {"chunk_size": 0}, {"verify": "md5"},
                       {"stall_timeout": -1.0}):
            with pytest.raises(ConfigError):
                await migrate(src, client, **kwargs)
    assert_untouched(src, root)


# --------------------------------------------------------------------------- names and shapes


async def migrate_lib(src: Path, root: Path, **kwargs: Any) -> MigrationReport:
    with trio.fail_after(60):
        async with running(root) as addr, connect(str(addr)) as client:
            return await migrate(src, client, **kwargs)


async def test_awkward_names_copied_exactly(tmp_path: Path, root: Path) -> None:
    src = tmp_path / "bot"
    src.mkdir()
    names = ["with\nnewline", "with space", " lead space", "-leading-dash", "--rf", "-",
             "tab\there", "quote'\"", "$(touch pwned)", "back\\slash", "ünïcødé-名前",
             "x" * 255, "é" * 127]  # 255 bytes: the longest name Linux allows
    for i, name in enumerate(names):
        (src / name).write_bytes(f"content {i}\n".encode())
    (src / "-dir with space").mkdir()
    (src / "-dir with space" / "--inner\nname").write_bytes(b"inner")
    os.utime(src / "-leading-dash", (1_000_000_000, 1_000_000_000))
    expected = tree_files(src)
    report = await migrate_lib(src, root)
    assert report.status == "migrated", report
    assert tree_files(root) == expected
    assert not (root / "pwned").exists() and not (tmp_path / "pwned").exists()
    assert os.stat(root / "-leading-dash").st_mtime == 1_000_000_000
    assert temp_entries(root) == []


async def test_non_utf8_name_is_a_clear_failure(tmp_path: Path, root: Path) -> None:
    src = tmp_path / "bot"
    src.mkdir()
    (src / "fine.txt").write_bytes(b"ok")
    bad = os.fsencode(src) + b"/bad-\xff\xfe-name"
    with open(bad, "wb") as f:
        f.write(b"latin-1 name")
    async with running(root) as addr:
        code, out, err = await run_cli("migrate", str(src), "--target", str(addr), "--json")
    assert code == 1, (code, out, err)
    import json

    report = json.loads(out)
    assert report["renamed_to"] is None and not report["ok"]
    [failure] = report["failures"]
    assert "UTF-8" in failure["error"] or "utf-8" in failure["error"].lower(), failure
    assert "bad-" in failure["path"]
    assert src.is_dir() and os.path.exists(bad)
    assert temp_entries(root) == []


async def test_tree_200_directories_deep(tmp_path: Path, root: Path) -> None:
    src = tmp_path / "bot"
    deep = src
    for i in range(200):
        deep = deep / f"d{i % 10}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"at the bottom")
    (deep.parent / "empty-sibling").mkdir()
    report = await migrate_lib(src, root)
    assert report.status == "migrated", report
    rel = deep.relative_to(src)
    assert (root / rel / "bottom.txt").read_bytes() == b"at the bottom"
    assert (root / rel.parent / "empty-sibling").is_dir()


async def test_fifo_socket_and_device_are_skipped_never_opened(tmp_path: Path,
                                                               root: Path) -> None:
    src = tmp_path / "bot"
    src.mkdir()
    (src / "file.txt").write_bytes(b"data")
    os.mkfifo(src / "fifo")  # opening it for reading would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    sock.close()
    special = {"fifo", "sock"}
    try:
        os.mknod(src / "null-dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        special.add("null-dev")
    except PermissionError:
        pass  # not root / no CAP_MKNOD: devices are covered by the plan's unit tests
    report = await migrate_lib(src, root)
    assert {s.path for s in report.skipped} == special, report.skipped
    for s in report.skipped:
        assert s.reason
    assert report.failures == []
    assert (root / "file.txt").read_bytes() == b"data"
    assert not any((root / n).exists() for n in special)


async def test_hard_links_sparse_and_empty_files(tmp_path: Path, root: Path) -> None:
    src = tmp_path / "bot"
    src.mkdir()
    (src / "orig").write_bytes(b"shared content\n")
    os.link(src / "orig", src / "hardlink")
    with open(src / "sparse.bin", "wb") as f:
        f.seek(8 * 1024 * 1024)
        f.write(b"end")
    (src / "empty").write_bytes(b"")
    (src / "sub").mkdir()
    (src / "sub" / "empty2").write_bytes(b"")
    expected = tree_files(src)
    report = await migrate_lib(src, root)
    assert report.status == "migrated", report
    assert tree_files(root) == expected
    assert (root / "sparse.bin").stat().st_size == 8 * 1024 * 1024 + 3
    assert (root / "empty").stat().st_size == 0 and (root / "sub" / "empty2").exists()
    assert tree_files(Path(str(src) + MIGRATED)) == expected


# --------------------------------------------------------------------------- files changing


@pytest.mark.parametrize("change", ["grow", "shrink", "vanish", "replace"])
async def test_file_changing_mid_copy(tmp_path: Path, root: Path, change: str) -> None:
    """The file is modified while its stream is running (the proxy slows the copy down so the
    change lands mid-stream): that file fails with a clear error, nothing is renamed, nothing
    partial is at its final path; a rerun with the file left alone completes."""
    src = tmp_path / "bot"
    src.mkdir()
    (src / "other.txt").write_bytes(b"other")
    big = src / "big.bin"
    big.write_bytes(os.urandom(4 * 1024 * 1024))
    with trio.fail_after(60):
        async with running(root) as addr, open_fault_proxy((addr.host, addr.port)) as proxy:
            proxy.delay = 0.01
            async with connect(proxy.target) as client, trio.open_nursery() as nursery:
                result: list[MigrationReport] = []

                async def go() -> None:
                    result.append(await migrate(src, client, chunk_size=64 * 1024))

                nursery.start_soon(go)
                while proxy.bytes_up < 1_000_000:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                if change == "grow":
                    with open(big, "ab") as f:
                        f.write(b"more" * 100_000)
                elif change == "shrink":
                    os.truncate(big, 1_500_000)
                elif change == "vanish":
                    big.unlink()
                else:
                    big.with_suffix(".new").write_bytes(os.urandom(4 * 1024 * 1024))
                    big.with_suffix(".new").rename(big)
                proxy.delay = 0
            [report] = result
            assert report.status == "incomplete", report
            [failure] = report.failures
            assert failure.path == "big.bin"
            assert "changed" in failure.error or "vanished" in failure.error \
                or "no such file" in failure.error.lower(), failure
            assert src.is_dir() and not Path(str(src) + MIGRATED).exists()
            if (root / "big.bin").exists():
                assert (root / "big.bin").read_bytes() == big.read_bytes()
            assert temp_entries(root) == []
            # Rerun with the file now stable.
            expected = tree_files(src)
            async with connect(str(addr)) as client:
                report = await migrate(src, client)
            assert report.status == "migrated", report
            assert tree_files(root) == expected


# --------------------------------------------------------------------------- scale


def _make_flat_tree(src: Path, count: int, per_dir: int = 1000) -> None:
    for i in range(count):
        d = src / f"dir{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        with open(d / f"f{i:06d}", "wb") as f:
            f.write(b"%d\n" % i)


@pytest.mark.slow
async def test_100k_file_tree(tmp_path: Path, root: Path) -> None:
    """100 000 small files through the real CLI: completes, every file arrives; time and peak
    RSS of the client process are printed (see the reliability report for the figures)."""
    import resource
    import time

    src = tmp_path / "bot"
    _make_flat_tree(src, 100_000)
    async with running(root) as addr:
        start = time.monotonic()
        code, _out, err = await run_cli("migrate", str(src), "--target", str(addr), "--json",
                                       limit=900)
        elapsed = time.monotonic() - start
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"\n100k files: {elapsed:.1f} s, client peak RSS {rss_kib / 1024:.0f} MiB")
    assert code == 0, err[-2000:]
    assert sum(len(fs) for _d, _ds, fs in os.walk(root)) == 100_000
    assert not src.exists()
