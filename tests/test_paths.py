"""Path confinement: the pure rules of _paths, and a property over real symlink layouts."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memoh_trio import _fs
from memoh_trio._paths import (
    NAME_MAX,
    InvalidPath,
    PathError,
    PathEscape,
    join,
    split_link_target,
    split_request_path,
)


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("", ()),
        ("/", ()),
        (".", ()),
        ("x", ("x",)),
        ("/x", ("x",)),
        ("//a///b/", ("a", "b")),
        ("a/./b", ("a", "b")),
        ("a/../b", ("b",)),
        ("a/b/..", ("a",)),
        ("a\\..\\b", ("a\\..\\b",)),  # backslash is an ordinary character on POSIX
        (" -x\n", (" -x\n",)),
    ],
)
def test_split_request_path(path: str, parts: tuple[str, ...]) -> None:
    assert split_request_path(path) == parts
    assert join(parts) == "/".join(parts)


@pytest.mark.parametrize("path", ["..", "../x", "/../x", "a/../../x", "a/b/../../..", "./.."])
def test_escape_refused(path: str) -> None:
    with pytest.raises(PathEscape):
        split_request_path(path)


@pytest.mark.parametrize("path", ["a\x00b", "x" * (NAME_MAX + 1), "a/" * 3000])
def test_invalid_refused(path: str) -> None:
    with pytest.raises(InvalidPath):
        split_request_path(path)


def test_root_refused_when_not_allowed() -> None:
    with pytest.raises(InvalidPath, match="required"):
        split_request_path("", allow_root=False)
    with pytest.raises(InvalidPath, match="root"):
        split_request_path("a/..", allow_root=False)


def test_link_targets() -> None:
    assert split_link_target("../a/./b") == ["..", "a", "b"]
    with pytest.raises(PathEscape):
        split_link_target("/etc/passwd", link="l")
    with pytest.raises(InvalidPath):
        split_link_target("")


# ------------------------------------------------------------------ property over a real tree

NAMES = st.sampled_from(["a", "b", "l", "m", "..", ".", "", "out", "f"])
REQUEST_PATHS = st.lists(NAMES, max_size=6).map("/".join) | st.text(
    alphabet="ab./l\x00", max_size=12)
LINK_TARGETS = st.sampled_from([
    "..", "../..", "../../outside", "../outside", "/", "/etc", "a", "a/b", "b/../..", ".",
    "l", "m", "../a", "f", "../../outside/secret",
])


def _snapshot(top: Path) -> dict[str, tuple[int, int, bytes | str]]:
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st_ = p.lstat()
            body: bytes | str = os.readlink(p) if p.is_symlink() else (
                p.read_bytes() if p.is_file() else b"")
            out[str(p.relative_to(top))] = (st_.st_mode, st_.st_mtime_ns, body)
    return out


@pytest.fixture
def tree() -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        outside = base / "outside"
        outside.mkdir()
        (outside / "secret").write_bytes(b"secret")
        (outside / "sub").mkdir()
        yield base / "root", outside


def _ops(root_fd: int, path: str, other: str) -> None:
    """Every file operation the server does, on ``path`` (and ``other`` for rename)."""
    calls: list[Callable[[], object]] = [
        lambda: _fs.stat(root_fd, path),
        lambda: _fs.list_dir(root_fd, path, True),
        lambda: _fs.read_file(root_fd, path),
        lambda: os.close(_fs.open_regular(root_fd, path)),
        lambda: os.close(_fs.open_dir(root_fd, path)),
        lambda: _fs.write_file(root_fd, path, b"pwned"),
        lambda: _fs.mkdir(root_fd, path + "/new"),
        lambda: _fs.rename(root_fd, path, other),
        lambda: _fs.rename(root_fd, other, path),
        lambda: _fs.delete(root_fd, path, True),
    ]
    for call in calls:
        with contextlib.suppress(PathError, OSError):
            call()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    links=st.lists(st.tuples(st.sampled_from(["l", "a/l", "a/b/m", "m", "a/m"]), LINK_TARGETS),
                   max_size=4),
    paths=st.lists(st.tuples(REQUEST_PATHS, REQUEST_PATHS), min_size=1, max_size=4),
)
def test_nothing_outside_root_is_touched(
    tree: tuple[Path, Path], links: list[tuple[str, str]], paths: list[tuple[str, str]]
) -> None:
    root, outside = tree
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    (root / "a" / "b").mkdir(parents=True)
    (root / "f").write_bytes(b"inside")
    for where, target in links:
        link = root / where
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)
    before = _snapshot(outside)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path, other in paths:
            _ops(root_fd, path, other)
    finally:
        os.close(root_fd)
    assert _snapshot(outside) == before
    assert sorted(p.name for p in root.parent.iterdir()) == ["outside", "root"]
