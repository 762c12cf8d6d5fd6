"""memoh_trio._scripts: the container-side scripts and their parsers.

Pure tests (hypothesis) of the builders and parsers, then the scripts run by real shells and
tools: dash and bash with GNU coreutils here, and the container kinds of
``../shared/containers/run-in.sh`` (busybox ``sh`` and applets, with and without python3; GNU
without python3).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peers import RUN_IN, need_container

from memoh_trio import _scripts as S
from memoh_trio._plan import Action, Kind
from memoh_trio._tarbatch import Layout, Member, layout, pack

# --------------------------------------------------------------------------- pure

_idx = st.integers(0, 40)


@given(n=st.integers(0, 30), oks=st.sets(_idx), fails=st.dictionaries(_idx, st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), max_size=20)),
    junk=st.lists(st.sampled_from(["O", "O ", "F", "O 1x", "o 1", " O 1", "O -1", "X 2",
                                   "O 1 extra"]), max_size=4))
def test_parse_records_never_accepts_a_missing_record(n: int, oks: set[int],
                                                      fails: dict[int, str],
                                                      junk: list[str]) -> None:
    lines = [f"O {i}" for i in sorted(oks)] + [f"F {i} {w}" for i, w in fails.items()] + junk
    got = S.parse_records("\n".join(lines).encode(), n)
    assert set(got) == set(range(n))
    for i in range(n):
        if i in fails:
            assert got[i] is not None and got[i] != S.NO_RECORD
        elif i in oks or (i == 1 and "O 1 extra" in junk):
            assert got[i] is None
        else:
            assert got[i] == S.NO_RECORD


def test_parse_records_cut_output() -> None:
    out = b"O 0\nO 1\nF 2 chmod failed\nO 3\nO 1"  # cut after "O 1" of index 1x: still 1
    assert S.parse_records(out, 5) == {0: None, 1: None, 2: "chmod failed", 3: None,
                                       4: S.NO_RECORD}
    assert S.parse_records(b"", 2) == {0: S.NO_RECORD, 1: S.NO_RECORD}
    assert S.parse_records(b"O 0\nF 0 later failure\n", 1) == {0: "later failure"}
    assert S.failures(b"", 2, b"sh: boom\n") == {0: f"{S.NO_RECORD}: sh: boom",
                                                 1: f"{S.NO_RECORD}: sh: boom"}
    assert S.failures(b"O 0\nF 1 touch failed\n", 2, b"touch: bad\n") == {
        1: "touch failed (touch: bad)"}


def test_parse_probe_and_methods() -> None:
    busybox = S.parse_probe(b"has tar\nhas stat\nhas mv\nhas mkdir\nhas rm\ntouch s\nprobed\n")
    assert busybox.tar_ok("size") and not busybox.tar_ok("sha256")
    assert busybox.precision == "s" and S.meta_method(busybox, 100) == "shell-s"
    bbpy = S.Capabilities(touch_s=True, python3=True, probed=True)
    assert bbpy.precision == "ns"
    assert S.meta_method(bbpy, 1) == "python"  # the shell would lose the nanoseconds
    gnu = S.Capabilities(touch_ns=True, touch_s=True, python3=True, probed=True)
    assert S.meta_method(gnu, 1) == "shell-ns" and S.meta_method(gnu, 100) == "python"
    assert S.meta_method(gnu, 100, use_python=False) == "shell-ns"
    nothing = S.parse_probe(b"has tar\n")  # cut: no "probed"
    assert not nothing.tar_ok("size") and nothing.precision is None
    assert S.method_precision("shell-s") == "s" and S.method_precision("python") == "ns"


def test_python_is_run_by_the_path_it_reported() -> None:
    """The probe's ``python3 exe /abs/path`` is used to run the scripts (quoted); without it,
    plain ``python3``."""
    caps = S.parse_probe(b"python3 ok\npython3 exe /opt/py 3/bin/python3\nprobed\n")
    assert caps.python3 and caps.python_exe == "/opt/py 3/bin/python3"
    assert S.with_python(S.PY_META, caps.python_exe).startswith("'/opt/py 3/bin/python3' -S -c")
    assert S.parse_probe(b"python3 ok\npython3 exe \nprobed\n").python_exe == "python3"
    assert S.with_python(S.PY_META, "python3") == S.PY_META
    assert S.py_move_command("st", "/usr/bin/python3").startswith("/usr/bin/python3 -S -c")


_names = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="/\0"),
                 min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


@given(rels=st.lists(st.lists(_names, min_size=1, max_size=3).map("/".join), min_size=1,
                     max_size=50))
def test_fixed_commands_stay_small(rels: list[str]) -> None:
    """The first Exec message never carries the variable part: whatever the batch, the
    command is short (Linux caps one argument at 128 KiB)."""
    for cmd in (S.PROBE_COMMAND, S.RUN_STDIN, S.PY_META, S.PY_LINKS, S.SYNC_COMMAND,
                S.extract_command(".memoh-tar-0123456789abcdef")):
        assert len(cmd.encode()) < 4096
    for r in rels:  # the per-entry commands of the stream path stay one path long
        assert len(S.sha256_command(r).encode()) < 100 + 4 * len(r.encode())


# --------------------------------------------------------------------------- real shells

SHELLS = ("dash", "bash", "busybox", "busybox-python", "gnu-nopython")


def run(kind: str, command: str, cwd: Path, stdin: bytes = b"",
        ) -> subprocess.CompletedProcess[bytes]:
    """``/bin/sh -c command`` as a server's Exec would run it, in ``kind``'s userland."""
    if kind == "dash":
        argv = ["/bin/sh", "-c", command]
    elif kind == "bash":
        argv = ["bash", "-c", command]
    else:
        need_container(kind)
        argv = ["bash", str(RUN_IN), kind, "/bin/sh", "-c", command]
    return subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, check=False,
                          timeout=120)


def caps_of(kind: str, cwd: Path) -> S.Capabilities:
    return S.parse_probe(run(kind, S.PROBE_COMMAND, cwd).stdout)


def meta_run(kind: str, cwd: Path, batch: list[Action], use_python: bool = True,
             ) -> tuple[dict[int, str], S.Precision]:
    caps = caps_of(kind, cwd)
    method = S.meta_method(caps, len(batch), use_python=use_python, shell_max=0)
    precision = S.method_precision(method)
    if method == "python":
        res = run(kind, S.PY_META, cwd, S.py_meta_records(batch))
    else:
        res = run(kind, S.RUN_STDIN, cwd, S.meta_script(batch, precision).encode())
    return S.failures(res.stdout, len(batch), res.stderr), precision


def links_run(kind: str, cwd: Path, batch: list[Action], python: bool) -> dict[int, str]:
    if python:
        res = run(kind, S.PY_LINKS, cwd, S.py_link_records(batch))
    else:
        res = run(kind, S.RUN_STDIN, cwd, S.links_script(batch).encode())
    return S.failures(res.stdout, len(batch), res.stderr)


def link(rel: str, target: str) -> Action:
    return Action(Kind.SYMLINK, rel, "", link_target=target)


def entry(rel: str, mode: int, mtime_ns: int) -> Action:
    return Action(Kind.COPY, rel, "", mode=mode, mtime_ns=mtime_ns)


def tar_batch(kind: str, cwd: Path, rels: list[str], datas: list[bytes],
              check: S.Check = "size") -> dict[int, str | None]:
    members = [Member(r, d, 0o640, 1_600_000_000_123_456_789) for r, d in zip(rels, datas,
                                                                            strict=True)]
    lay = layout(rels)
    archive = pack(members, lay, trailer=(S.RUN_MEMBER, S.listing_script(lay, check).encode()))
    res = run(kind, S.extract_command(".memoh-tar-t"), cwd, archive)
    assert res.returncode == 0, res.stderr
    listing = S.parse_listing(res.stdout, lay.staged, check)
    good = [i for i in range(len(rels)) if i in listing]
    res = run(kind, S.RUN_STDIN, cwd, S.move_script(".memoh-tar-t", lay, good).encode())
    assert not (cwd / ".memoh-tar-t").exists()
    return S.parse_records(res.stdout, len(rels))


def unpack_staged(kind: str, dest: Path, rels: list[str]) -> tuple[Layout, list[Action]]:
    """Unpack a batch of ``rels`` (each holding its own name) into ``dest``'s staging directory
    ``.memoh-tar-t``, as the extract command does; the actions give each its own mode and
    mtime to apply."""
    actions = [entry(r, 0o600 + i % 2 * 0o40, 1_500_000_000_987_654_321 + i)
               for i, r in enumerate(rels)]
    lay = layout(rels)
    members = [Member(r, r.encode(), 0o644, 0) for r in rels]
    archive = pack(members, lay, trailer=(S.RUN_MEMBER, S.listing_script(lay, "size").encode()))
    res = run(kind, S.extract_command(".memoh-tar-t"), dest, archive)
    assert res.returncode == 0, res.stderr
    return lay, actions


_tricky = st.sampled_from(["a", "-x", "d e", "ü", "n\nl", "q'\"$`\\", "--", "*", ".h", "t\t",
                           "x" * 100, "ë\u200b"])
_rels = st.lists(_tricky, min_size=1, max_size=3).map("/".join)


@pytest.mark.parametrize("kind", SHELLS)
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rels=st.lists(_rels, min_size=1, max_size=6, unique=True))
def test_tar_links_meta_round_trip(kind: str, tmp_path_factory: pytest.TempPathFactory,
                                   rels: list[str]) -> None:
    rels = [r for r in rels if not any(o.startswith(r + "/") for o in rels)]
    dest = tmp_path_factory.mktemp("dest")
    datas = [r.encode() * 2 for r in rels]
    records = tar_batch(kind, dest, rels, datas, "sha256")
    assert records == dict.fromkeys(range(len(rels))), records
    for r, d in zip(rels, datas, strict=True):
        assert (dest / r).read_bytes() == d
    caps = caps_of(kind, dest)
    links = [link(f"links/{r}", f"../{r}") for r in rels]
    assert links_run(kind, dest, links, python=False) == {}
    if caps.python3:
        assert links_run(kind, dest, links, python=True) == {}  # replaces them
    for r in rels:
        assert os.readlink(dest / "links" / r) == f"../{r}"
    batch = [entry(r, 0o600, 1_500_000_000_987_654_321) for r in rels]
    failed, precision = meta_run(kind, dest, batch)
    assert failed == {}
    assert precision == caps.precision
    for r in rels:
        st_ = (dest / r).lstat()
        assert st_.st_mode & 0o7777 == 0o600
        want = 1_500_000_000_987_654_321 if precision == "ns" else 1_500_000_000_000_000_000
        assert st_.st_mtime_ns == want


@pytest.mark.parametrize("kind", SHELLS)
def test_precision_per_kind(kind: str, tmp_path: Path) -> None:
    caps = caps_of(kind, tmp_path)
    assert caps.probed and caps.tar_ok("sha256")
    assert caps.python3 == (kind in ("dash", "bash", "busybox-python"))
    assert caps.touch_ns == (kind in ("dash", "bash", "gnu-nopython"))
    assert caps.precision == ("s" if kind == "busybox" else "ns")
    assert not list(tmp_path.iterdir())  # the probe leaves nothing behind


@pytest.mark.parametrize("kind", SHELLS)
def test_never_through_a_destination_symlink(kind: str, tmp_path: Path) -> None:
    """The destination has ``sub -> outside``: nothing is written, moved, linked, chmod-ed or
    touched through it; each such entry fails; the rest go on."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep")
    os.chmod(outside / "victim", 0o644)
    before = {p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in outside.iterdir()}
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    (dest / "deep").mkdir()
    (dest / "deep" / "in").symlink_to(outside)
    records = tar_batch(kind, dest, ["sub/file", "deep/in/x/y", "ok"], [b"1", b"2", b"3"])
    assert records[0] == records[1] == "a symlink is in the way" and records[2] is None
    caps = caps_of(kind, dest)
    for python in (False, True) if caps.python3 else (False,):
        failed = links_run(kind, dest, [link("sub/l", "t"), link("deep/in/z/l", "t"),
                                         link("fine", "t")], python)
        assert set(failed) == {0, 1}, failed
        assert all("symlink is in the way" in w for w in failed.values())
    (outside / "victim2").write_bytes(b"x")
    before["victim2"] = ((outside / "victim2").lstat().st_mode,
                         (outside / "victim2").lstat().st_mtime_ns)
    for use_python in (False, True):
        failed, _ = meta_run(kind, dest, [entry("sub/victim", 0o777, 10**18),
                                          entry("sub", 0o700, 10**18),
                                          entry("deep/in/victim2", 0o600, 10**18),
                                          entry("ok", 0o600, 10**18)], use_python)
        assert set(failed) == {0, 1, 2}, failed
    assert {p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns)
            for p in outside.iterdir()} == before
    assert (outside / "victim").read_bytes() == b"keep"
    assert os.readlink(dest / "sub") == str(outside)
    assert (dest / "ok").read_bytes() == b"3" and os.readlink(dest / "fine") == "t"


@pytest.mark.parametrize("kind", SHELLS)
def test_find_links_lists_every_destination_symlink(kind: str, tmp_path: Path) -> None:
    """What a run uses when the server cannot list the destination: every symlink, whatever
    its name (not UTF-8, a newline, a leading dash, a ``%``), never one it follows, then the
    proof that ``find`` went through the whole tree."""
    dest = tmp_path / "dest"
    (dest / "d" / "e").mkdir(parents=True)
    (dest / "plain").write_bytes(b"x")
    names = [b"d/l1", b"n\nl", b"caf\xe9", b"d/e/-dash", b"caf\xe9dir/%s", b"d/e/to-dir"]
    os.mkdir(os.fsencode(dest) + b"/caf\xe9dir")
    for name in names:
        os.symlink(b"/etc" if name.endswith(b"dir") else b"t", os.fsencode(dest) + b"/" + name)
    res = run(kind, S.FIND_LINKS_COMMAND, dest)
    assert res.returncode == 0, res.stderr
    assert S.parse_links_found(res.stdout) == {n.decode("utf-8", "surrogateescape")
                                               for n in names}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert S.parse_links_found(run(kind, S.FIND_LINKS_COMMAND, empty).stdout) == set()


def test_parse_links_found_needs_the_whole_proof() -> None:
    mark = S.LINKS_FOUND.encode() + b"\n"
    assert S.parse_links_found(b"./a\0./b/c\0" + mark) == {"a", "b/c"}
    assert S.parse_links_found(b"./caf\xe9\0" + mark) == {"caf\udce9"}
    assert S.parse_links_found(mark) == set()
    for cut in (b"", b"./a\0", b"./a\0" + mark[:-1], b"./a" + mark,  # no proof, or cut
                b"/etc\0" + mark, b"a\0" + mark, b"./\0" + mark,  # not one of find's paths
                b"./a\0" + mark + b"x"):
        assert S.parse_links_found(cut) is None, cut


@pytest.mark.parametrize("kind", SHELLS)
def test_symlink_onto_a_real_directory_is_a_conflict(kind: str, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "f").write_bytes(b"old file")
    (tmp_path / "old").symlink_to("somewhere")
    caps = caps_of(kind, tmp_path)
    for python in (False, True) if caps.python3 else (False,):
        failed = links_run(kind, tmp_path, [link("x", "t"), link("f", "t1"), link("old", "t2")],
                           python)
        assert failed == {0: "a directory is in the way"}, failed
        assert list((tmp_path / "x").iterdir()) == []
        assert os.readlink(tmp_path / "f") == "t1" and os.readlink(tmp_path / "old") == "t2"
        (tmp_path / "f").unlink()
        (tmp_path / "f").write_bytes(b"old file")
    # A file whose final name is a real directory: that file fails, not the others.
    records = tar_batch(kind, tmp_path, ["x", "y"], [b"1", b"2"])
    assert records == {0: "a directory is in the way", 1: None}
    assert list((tmp_path / "x").iterdir()) == []
    # An old symlink where a file goes is replaced, never followed.
    (tmp_path / "target").write_bytes(b"keep")
    (tmp_path / "z").symlink_to(tmp_path / "target")
    assert tar_batch(kind, tmp_path, ["z"], [b"new"]) == {0: None}
    assert not (tmp_path / "z").is_symlink() and (tmp_path / "z").read_bytes() == b"new"
    assert (tmp_path / "target").read_bytes() == b"keep"


@pytest.mark.parametrize("kind", SHELLS)
def test_dropped_stdin_fails_every_entry(kind: str, tmp_path: Path) -> None:
    """A server that swallows stdin runs an empty script: no record, every entry fails."""
    (tmp_path / "f").write_bytes(b"x")
    for command in (S.RUN_STDIN, S.PY_META, S.PY_LINKS):
        if command != S.RUN_STDIN and not caps_of(kind, tmp_path).python3:
            continue
        res = run(kind, command, tmp_path, b"")
        assert S.parse_records(res.stdout, 3) == dict.fromkeys(range(3), S.NO_RECORD)
    res = run(kind, S.extract_command(".memoh-tar-t"), tmp_path, b"")
    assert res.returncode in (S.TAR_FAILED_EXIT, S.NO_RUN_EXIT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    res = run(kind, S.SYNC_COMMAND, tmp_path)
    assert res.returncode == 0 and S.SYNCED.encode() in res.stdout


@pytest.mark.parametrize("kind", SHELLS)
def test_big_batches_pass_no_argument_limit(kind: str, tmp_path: Path) -> None:
    """1,000 entries with 100-byte names (and 1,000 directories): the scripts travel as stdin,
    far over the 128 KiB one argument may hold."""
    names = [f"d{i // 100:02d}/{'n' * 90}{i:06d}.txt" for i in range(1000)]
    records = tar_batch(kind, tmp_path, names, [b"%d" % i for i in range(1000)])
    assert set(records.values()) == {None}
    links = [link(f"l/{i:04d}/{'k' * 100}", "../" + names[i]) for i in range(1000)]
    script = S.links_script(links).encode()
    assert len(script) > 200 * 1024
    res = run(kind, S.RUN_STDIN, tmp_path, script)
    assert S.failures(res.stdout, 1000, res.stderr) == {}
    batch = [entry(n, 0o600, 1_577_836_800_123_456_789) for n in names]
    failed, precision = meta_run(kind, tmp_path, batch, use_python=False)
    assert failed == {}
    want = 1_577_836_800_123_456_789 if precision == "ns" else 1_577_836_800_000_000_000
    assert all((tmp_path / n).stat().st_mtime_ns == want for n in names[::97])


@pytest.mark.parametrize("kind", ["dash", "busybox-python"])
def test_python_mover_never_through_a_symlink(kind: str, tmp_path: Path) -> None:
    """The python3 mover of a tar batch (PY_MOVE): a directory symlink on the way and a real
    directory at the final name fail those files (nothing outside is touched), an old symlink
    at the final name is replaced, not followed; every moved file has its mode and mtime to
    the nanosecond, and the staging directory is gone."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"outside")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    (dest / "ok").mkdir()
    (dest / "ok" / "f3").mkdir()
    (dest / "ok" / "f4").symlink_to(outside / "keep")
    rels = [f"ok/f{i}" for i in range(6)] + ["sub/a", "new/x/y", "n\nl/q'\"$`\\"]
    lay, actions = unpack_staged(kind, dest, rels)
    caps = caps_of(kind, dest)
    assert caps.python3 and caps.python_exe.startswith("/")
    res = run(kind, S.py_move_command(".memoh-tar-t", caps.python_exe), dest,
              S.py_move_records(".memoh-tar-t", lay, range(len(rels)), actions, preserve=True))
    assert res.returncode == 0, res.stderr
    records = S.parse_records(res.stdout, len(rels))
    assert records[rels.index("sub/a")] == "a symlink is in the way"
    assert records[rels.index("ok/f3")] == "a directory is in the way"
    assert [i for i, why in records.items() if why is not None] == [3, 6]
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (outside / "keep").read_bytes() == b"outside"
    for i, r in enumerate(rels):
        if i in (3, 6):
            continue
        st_ = (dest / r).lstat()
        assert stat.S_ISREG(st_.st_mode) and (dest / r).read_bytes() == r.encode()
        assert st_.st_mode & 0o7777 == actions[i].mode
        assert st_.st_mtime_ns == actions[i].mtime_ns
    assert not (dest / ".memoh-tar-t").exists()


@pytest.mark.parametrize("kind", ["dash", "busybox-python"])
def test_python_mover_renames_a_new_directory_whole(kind: str, tmp_path: Path) -> None:
    """A destination directory that does not exist yet gets its staging group directory (one
    rename; the same inode), with every file's mode and mtime and the mode ``mkdir`` gives; a
    directory that exists, and a group with a file that failed its check (not moved, not
    left behind), go file by file."""
    dest = tmp_path / "dest"
    (dest / "old").mkdir(parents=True)
    (dest / "old" / "keep").write_bytes(b"keep")
    rels = ["new/a", "new/b", "old/x", "deep/er/f", "bad/ok", "bad/fail"]
    lay, actions = unpack_staged(kind, dest, rels)
    staged = {d: (dest / ".memoh-tar-t" / str(g)).stat().st_ino for g, d in enumerate(lay.dirs)}
    caps = caps_of(kind, dest)
    good = [i for i, r in enumerate(rels) if r != "bad/fail"]
    res = run(kind, S.py_move_command(".memoh-tar-t", caps.python_exe), dest,
              S.py_move_records(".memoh-tar-t", lay, good, actions, preserve=True))
    assert res.returncode == 0, res.stderr
    records = S.parse_records(res.stdout, len(rels))
    assert records == {**dict.fromkeys(good), rels.index("bad/fail"): S.NO_RECORD}
    for i in good:
        st_ = (dest / rels[i]).lstat()
        assert (dest / rels[i]).read_bytes() == rels[i].encode()
        assert st_.st_mode & 0o7777 == actions[i].mode
        assert st_.st_mtime_ns == actions[i].mtime_ns
    assert not (dest / "bad" / "fail").exists() and not (dest / ".memoh-tar-t").exists()
    assert (dest / "old" / "keep").read_bytes() == b"keep"
    umask = os.umask(0)
    os.umask(umask)
    for d in ("new", "deep/er"):  # renamed whole
        assert (dest / d).stat().st_ino == staged[d], d
        assert (dest / d).stat().st_mode & 0o7777 == 0o777 & ~umask, d
    for d in ("old", "bad"):  # file by file
        assert (dest / d).stat().st_ino != staged[d], d


@pytest.mark.parametrize("kind", ["dash", "busybox-python"])
@pytest.mark.parametrize("check", ["size", "sha256"])
def test_one_exec_batch_checks_before_it_moves(kind: str, check: str, tmp_path: Path) -> None:
    """A tar batch checked and moved in the Exec that unpacks it (verify_move_script): the
    mover checks each staged file against the size or SHA-256 the client read before it moves
    it; a file that differs fails with what was found and never reaches its final name;
    the others get their modes and mtimes; the staging directory is gone."""
    caps = caps_of(kind, tmp_path)
    assert caps.python3
    rels = ["new/a", "new/b", "top", "old/c"]
    (tmp_path / "old").mkdir()
    datas = [r.encode() * 3 for r in rels]
    actions = [entry(r, 0o640, 1_600_000_000_000_000_123 + i) for i, r in enumerate(rels)]
    lay = layout(rels)
    expect: dict[int, int | str] = {
        i: len(d) if check == "size" else hashlib.sha256(d).hexdigest()
        for i, d in enumerate(datas)}
    bad = rels.index("new/b")
    expect[bad] = 999 if check == "size" else "0" * 64
    records = S.py_move_records(".memoh-tar-t", lay, range(len(rels)), actions, preserve=True,
                                expect=expect)
    archive = pack([Member(r, d, 0o644, 0) for r, d in zip(rels, datas, strict=True)], lay,
                   extra=[(S.MOVES_MEMBER, records)],
                   trailer=(S.RUN_MEMBER,
                            S.verify_move_script(".memoh-tar-t", caps.python_exe).encode()))
    res = run(kind, S.extract_command(".memoh-tar-t"), tmp_path, archive)
    assert res.returncode == 0, res.stderr
    got = S.parse_records(res.stdout, len(rels))
    found = len(datas[bad]) if check == "size" else hashlib.sha256(datas[bad]).hexdigest()
    assert got == {0: None, bad: f"{S.CHECK_FAILED}: expected {expect[bad]}, found {found}",
                   2: None, 3: None}
    assert not (tmp_path / "new" / "b").exists() and not (tmp_path / ".memoh-tar-t").exists()
    for i in (0, 2, 3):
        st_ = (tmp_path / rels[i]).lstat()
        assert (tmp_path / rels[i]).read_bytes() == datas[i]
        assert (st_.st_mode & 0o7777, st_.st_mtime_ns) == (0o640, actions[i].mtime_ns)


def test_mover_strings_are_the_records_the_client_reads() -> None:
    assert f"'{S.MOVE_FAILED}'" in S.PY_MOVE and f"'{S.CHECK_FAILED}: " in S.PY_MOVE


def _writes(command: str, cwd: Path, stdin: bytes) -> tuple[int, bytes]:
    """Run ``command`` under dash with ``PYTHONUNBUFFERED=1`` (as many container images set)
    and its stdout a SEQPACKET socket, which keeps each ``write`` one message: how many writes
    it made, and what it wrote. (Memoh's server sends each read of the pipe as an ExecOutput
    message: a write per record is a gRPC message per record.)"""
    import socket
    import threading

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        with theirs:
            proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=cwd, stdin=subprocess.PIPE,
                                    stdout=theirs.fileno(), stderr=subprocess.PIPE,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdin is not None and proc.stderr is not None

        def feed() -> None:
            assert proc.stdin is not None
            with proc.stdin:
                proc.stdin.write(stdin)

        feeder = threading.Thread(target=feed)
        feeder.start()
        writes, out = 0, b""
        while message := ours.recv(1 << 20):
            writes += 1
            out += message
        feeder.join()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        proc.stderr.close()
    return writes, out


def test_python_scripts_write_their_records_in_blocks(tmp_path: Path) -> None:
    """The python3 mover, meta and links scripts buffer their records whatever
    ``PYTHONUNBUFFERED`` says: 1,000 records in one write, not 1,000 (3,000 small files into
    Memoh's server: 2,974 ExecOutput messages before, 29 after)."""
    caps = caps_of("dash", tmp_path)
    assert caps.python3
    n = 1000
    rels = [f"d/f{i:04}" for i in range(n)]
    lay, actions = unpack_staged("dash", tmp_path, rels)
    writes, out = _writes(S.py_move_command(".memoh-tar-t", caps.python_exe), tmp_path,
                          S.py_move_records(".memoh-tar-t", lay, range(n), actions,
                                            preserve=True))
    assert S.parse_records(out, n) == dict.fromkeys(range(n))
    assert writes == 1
    writes, out = _writes(S.PY_META, tmp_path, S.py_meta_records(actions))
    assert S.failures(out, n) == {}
    assert writes == 1
    links = [link(f"links/l{i:04}", f"../d/f{i:04}") for i in range(n)]
    writes, out = _writes(S.PY_LINKS, tmp_path, S.py_link_records(links))
    assert S.failures(out, n) == {}
    assert writes == 1
