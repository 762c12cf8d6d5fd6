"""Tar batches in the container: the fixed extract command, the listing of the staged files and
its parser, and the moves into place (shell, or one python3 process that also applies modes and
mtimes). The archive itself is built by :mod:`memoh_trio._tarbatch`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .._plan import Action
from .._tarbatch import Layout
from .probe import Check
from .records import MOVE_FAILED
from .shell import PRELUDE, quote, shell_path, with_python

#: Exit code of the extract command when ``tar`` itself failed (staging removed).
TAR_FAILED_EXIT = 70
#: Exit code of the extract command when the archive had no listing script.
NO_RUN_EXIT = 71
#: Name of the listing script inside a tar batch (group directories are numbers: no clash).
RUN_MEMBER = ".memoh-run"
#: Name of the mover's records inside a tar batch checked and moved in one Exec
#: (:func:`verify_move_script`).
MOVES_MEMBER = ".memoh-moves"


def extract_command(staging: str) -> str:
    """The fixed command of a tar batch: unpack stdin into ``./staging`` and run the archive's
    own :data:`RUN_MEMBER` (built by :func:`listing_script`) there.

    Exit :data:`TAR_FAILED_EXIT` when tar fails, :data:`NO_RUN_EXIT` when the archive had no
    listing script (stdin dropped or cut); the staging directory is removed in both cases.
    """
    s = quote("./" + staging)
    # -m: do not restore mtimes, -o: nor owners (GNU and busybox). The metadata step applies
    # modes and mtimes afterwards, with a record per file, as for every file: restoring them
    # here too doubled GNU tar's time (1,000 files: 0.74 -> 0.34 s, median of 5).
    flags = "-x -m -o"
    return (
        f"mkdir -- {s} || exit 1; "
        f"if ! tar {flags} -f - -C {s}; then rm -rf -- {s}; exit {TAR_FAILED_EXIT}; fi; "
        f"if [ ! -f {s}/{RUN_MEMBER} ]; then echo 'the batch had no listing script' >&2; "
        f"rm -rf -- {s}; exit {NO_RUN_EXIT}; fi; "
        f"cd -- {s} && exec sh ./{RUN_MEMBER}"
    )


def listing_script(lay: Layout, check: Check) -> str:
    """Inside the staging directory: list each staged file (``size name`` or ``sha256sum``
    lines) in member order, then delete itself. A staged file that is missing has no line."""
    names = " ".join(quote(n) for n in lay.staged)
    lister = "sha256sum" if check == "sha256" else "stat -c '%s %n'"
    return f"rm -f ./{RUN_MEMBER}\n{lister} -- {names}\nexit 0\n"


_SIZE = re.compile(rb"(\d+) ")
_HEX = re.compile(rb"(\\?)([0-9a-fA-F]{64})  ")


def _gnu_escape(name: bytes) -> bytes:
    return name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")


def parse_listing(output: bytes, staged: Sequence[str], check: Check) -> dict[int, int | str]:
    """Read :func:`listing_script`'s listing: ``{member index: size or lowercase hex}``.

    Lines come in member order, but a file the lister could not read has none, and a name may
    itself hold newlines; so each line is matched against the expected name in turn (GNU
    ``sha256sum`` escapes names with ``\\`` or newline behind a leading backslash; busybox does
    not). Members missing from the result failed the check.
    """
    out: dict[int, int | str] = {}
    pos = 0
    for i, name in enumerate(staged):
        raw = name.encode("utf-8", "surrogateescape")
        if check == "size":
            m = _SIZE.match(output, pos)
            if m and output.startswith(raw + b"\n", m.end()):
                out[i] = int(m.group(1))
                pos = m.end() + len(raw) + 1
            continue
        m = _HEX.match(output, pos)
        if not m:
            continue
        for form in ((_gnu_escape(raw), raw) if m.group(1) else (raw,)):
            if output.startswith(form + b"\n", m.end()):
                out[i] = m.group(2).decode("ascii").lower()
                pos = m.end() + len(form) + 1
                break
    return out


def dir_prefixes(dirs: Sequence[str]) -> list[str]:
    """Every directory on the way to each of ``dirs`` ("/"-separated, relative), once each,
    each after its parent (pure)."""
    seen: dict[str, None] = {}
    for d in dirs:
        parts = [c for c in d.split("/") if c not in ("", ".")]
        for n in range(1, len(parts) + 1):
            seen.setdefault("/".join(parts[:n]), None)
    return list(seen)


def make_dirs(dirs: Sequence[str]) -> str:
    """Shell lines that create the missing directories on the way to ``dirs`` with ONE
    ``mkdir`` process, parents first (never ``-p``, never below a symlink or a non-directory:
    a prefix is only listed when no component above it is either). Best effort: whatever it
    could not create, :func:`memoh_dir <PRELUDE>` (run for each directory afterwards) creates or
    refuses with its reason.

    A ``mkdir`` per missing component (what ``memoh_dir`` does alone) cost a process each:
    the mixed tree's first tar batch needed ~150 directories, 0.3 s of its move step.
    """
    prefixes = dir_prefixes(dirs)
    if not prefixes:
        return ":"
    index = {p: k for k, p in enumerate(prefixes)}
    lines = ["set --"]
    for k, p in enumerate(prefixes):
        w = shell_path(p)
        check = (f"if [ -L {w} ] || {{ [ -e {w} ] && [ ! -d {w} ]; }}; then _m{k}=1; "
                 f"else _m{k}=; [ -e {w} ] || set -- \"$@\" {w}; fi")
        parent = p.rpartition("/")[0]
        if parent:
            check = f'if [ -n "$_m{index[parent]}" ]; then _m{k}=1; else {check}; fi'
        lines.append(check)
    lines.append('[ $# -eq 0 ] || mkdir -- "$@" 2>/dev/null || :')
    return "\n".join(lines)


def move_script(staging: str, lay: Layout, members: Sequence[int]) -> str:
    """Move the staged ``members`` (indexes) into place (run by :data:`RUN_STDIN`), then delete
    the staging directory. Prints ``O <i>``/``F <i> <why>`` per member (:func:`parse_records`).

    The missing directories are created first with one ``mkdir`` (:func:`make_dirs`). Per
    destination directory: :func:`memoh_dir <PRELUDE>` (no symlink on the way), then each
    final name is checked (a real directory there is a conflict; a symlink there is removed, so
    the file replaces the link and ``mv`` never follows it), then one ``mv`` for the group's
    files that passed -- one process per directory, not per file.
    """
    wanted = set(members)
    st = quote("./" + staging)
    lines = [PRELUDE]
    used = [d for d, idx in zip(lay.dirs, lay.groups, strict=True)
            if any(i in wanted for i in idx)]
    lines.append(make_dirs(used))
    for d, idx in zip(lay.dirs, lay.groups, strict=True):
        chosen = [i for i in idx if i in wanted]
        if not chosen:
            continue
        target = "./" + d + "/" if d else "./"
        lines.append(f"if memoh_dir {quote(d)}; then\n  set --; _ok=''")
        for i in chosen:
            base = lay.staged[i].split("/", 1)[1]
            final = quote(target + base)
            lines.append(
                f"  if [ -L {final} ]; then rm -f -- {final}; fi\n"
                f"  if [ -d {final} ]; then echo 'F {i} a directory is in the way'; "
                f"else _ok=\"$_ok {i}\"; set -- \"$@\" {quote(f'./{staging}/{lay.staged[i]}')}; fi")
        lines.append(
            f"  if [ $# -eq 0 ]; then :; elif mv -f -- \"$@\" {quote(target)}; then\n"
            "    for _i in $_ok; do echo \"O $_i\"; done\n"
            f"  else for _i in $_ok; do echo \"F $_i {MOVE_FAILED}\"; done\n"
            "  fi\n"
            f"else for _i in {' '.join(str(i) for i in chosen)}; do "
            "echo \"F $_i $_why\"; done\nfi")
    lines.append(f"rm -rf -- {st}")
    lines.append("exit 0")  # another exit code: the shell died, no record is believed
    return "\n".join(lines) + "\n"


#: python3 variant of :func:`move_script` that also applies each file's mode and mtime (to the
#: staged file, in the fresh staging directory, before it is renamed into place): one process
#: for the batch instead of a ``mv`` per destination directory, a ``mkdir`` per missing one and
#: a separate metadata Exec. An ``O <i>`` record proves the file was moved AND got its mode and
#: mtime (to the nanosecond). Never through a symlink: each directory component is checked
#: (``os.path.islink``) and missing ones made one ``os.mkdir`` at a time; a real directory at
#: the final name is a conflict; ``rename(2)`` replaces an old file or symlink there without
#: following it. Records on stdin: :func:`py_move_records`. Mixed tree (c): the move and
#: metadata steps of its 920-file batch took 0.40-0.60 + 0.08-0.13 s (127 ``mv`` processes,
#: then python) and take ~0.1 s as one python process.
#:
#: A destination directory that does not exist yet (a first migration) is not created and
#: filled one ``rename`` per file: its staging group directory, once every staged file in it is
#: one of the records (none failed its check) and has its mode and mtime, is renamed onto it
#: (parents checked and made as above; ``rename(2)`` fails on anything that appeared there
#: meanwhile but an empty directory, and then the files are moved one by one) and given the mode
#: ``mkdir`` would have given it. 3,000 files in 30 new directories: 58 -> ~20 ms of the
#: container's CPU (a ``rename`` across directories is most of a file's cost).
PY_MOVE = r"""import os,sys
L={}
D={}
def mkd(d):
    q=b'.'
    for c in d.split(b'/')[1:]:
        if not c: continue
        q+=b'/'+c
        r=L.get(q)
        if r is None: r=L[q]=os.path.islink(q)
        if r: return 'a symlink is in the way'
        if not os.path.isdir(q):
            if os.path.lexists(q): return 'not a directory on the way'
            try: os.mkdir(q)
            except FileExistsError:
                if os.path.islink(q) or not os.path.isdir(q): return 'not a directory on the way'
            except OSError: return 'cannot create a directory on the way'
    return None
def chk(s,w):
    if w==b'-': return None
    try: st=os.lstat(s)
    except FileNotFoundError: return 'mv failed'
    if st.st_mode&0o170000!=0o100000: g='not a regular file'
    elif w[:1]==b's': g=str(st.st_size)
    else:
        import hashlib
        with open(s,'rb') as h: g=hashlib.sha256(h.read()).hexdigest()
    e=w[1:].decode()
    return None if g==e else 'verification failed in the container: expected %s, found %s'%(e,g)
def meta(s,m,t):
    if m!=b'-':
        os.chmod(s,int(m,8)); t=int(t); os.utime(s,ns=(t,t))
def whole(g,p,rs):
    if p==b'.' or p in D or os.path.lexists(p) or mkd(p.rpartition(b'/')[0]) is not None:
        return False
    try:
        if len(os.listdir(g))!=len(rs): return False
        for r in rs:
            if chk(r[4],r[3]) is not None: return False
        for r in rs: meta(r[4],r[1],r[2])
        os.rename(g,p)
    except OSError:
        return False
    D[p]=None; L[p]=False
    try: os.chmod(p,0o777&~U)
    except OSError: pass
    return True
U=os.umask(0); os.umask(U)
d=sys.stdin.buffer.read().split(b'\0')
G={}
for k in range(len(d)//3):
    h,s,f=d[3*k],d[3*k+1],d[3*k+2]
    i,m,t,w=h.split(b' ')
    G.setdefault((s.rpartition(b'/')[0],f.rpartition(b'/')[0]),[]).append((int(i),m,t,w,s,f))
o=open(1,'w',65536,errors='replace',closefd=False)
for (g,p),rs in G.items():
    if whole(g,p,rs):
        for r in rs: o.write('O %d\n'%r[0])
        continue
    for i,m,t,w,s,f in rs:
        try:
            if p not in D: D[p]=mkd(p)
            x=D[p]
            if x is None: x=chk(s,w)
            if x is None and os.path.isdir(f) and not os.path.islink(f):
                x='a directory is in the way'
            if x is None:
                meta(s,m,t)
                os.rename(s,f)
            o.write('O %d\n'%i if x is None else 'F %d %s\n'%(i,x))
        except OSError as e:
            o.write('F %d %s\n'%(i,e.strerror))
o.flush()
"""


def py_move_command(staging: str, exe: str = "python3", *, records: str | None = None) -> str:
    """The command of :data:`PY_MOVE` for ``staging``: its records on stdin, or read from the
    file ``records`` (a shell word); the staging directory is removed after it, whatever
    happened, and the mover's exit status kept."""
    mover = py_place_command(exe)  # the mover itself
    if records is not None:
        mover += f" < {records}"
    return f"{mover}; _r=$?; rm -rf -- {quote('./' + staging)}; exit $_r"


def verify_move_script(staging: str, exe: str) -> str:
    """The :data:`RUN_MEMBER` of a tar batch checked and moved in the Exec that unpacks it
    (where the container has python3): from the staging directory, back to the destination,
    :func:`py_move_command` with the archive's :data:`MOVES_MEMBER` as its records (each with
    the size or SHA-256 the client read: the mover checks it before the move). One Exec per
    batch instead of two, and no ``stat`` process."""
    records = f"{quote('./' + staging)}/{MOVES_MEMBER}"
    return (f"rm -f ./{RUN_MEMBER}\ncd .. || exit 1\n"
            f"{py_move_command(staging, exe, records=records)}\n")


def py_move_records(staging: str, lay: Layout, members: Sequence[int],
                    actions: Sequence[Action], *, preserve: bool,
                    expect: Mapping[int, int | str] | None = None) -> bytes:
    """The records of :data:`PY_MOVE` (stdin of :func:`py_move_command`, or the archive's
    :data:`MOVES_MEMBER`): ``INDEX MODE MTIME_NS WANT\0STAGED\0FINAL\0`` per member to move
    (``MODE`` ``-``: leave mode and mtime as unpacked; ``WANT`` ``s<size>`` or ``h<sha256>``
    from ``expect``, checked before the move, or ``-``: checked already)."""
    return b"".join(
        _move_record(i, actions[i], None if expect is None else expect[i],
                     f"{staging}/{lay.staged[i]}", preserve=preserve)
        for i in members)


def py_place_command(exe: str = "python3") -> str:
    """The command of :data:`PY_MOVE` for streamed files parked beside their final names
    (records on stdin, :func:`py_place_records`): there is no staging directory to remove."""
    return with_python(f"python3 -S -c {quote(PY_MOVE)}", exe)


def py_place_records(parked: Sequence[tuple[Action, str]], *, preserve: bool) -> bytes:
    """The records of :data:`PY_MOVE` for streamed files parked under a temporary name
    (``(action, temporary path relative to the destination)``, index = position): each is
    checked to hold the ``action.size`` bytes sent, given its mode and mtime (``preserve``) and
    renamed onto ``action.rel``."""
    return b"".join(_move_record(i, action, action.size, part, preserve=preserve)
                    for i, (action, part) in enumerate(parked))


def _move_record(i: int, action: Action, want: int | str | None, staged: str, *,
                 preserve: bool) -> bytes:
    head = f"{i} {action.mode:o} {action.mtime_ns}" if preserve else f"{i} - 0"
    head += " -" if want is None else f" s{want}" if isinstance(want, int) else f" h{want}"
    return (head.encode() + b"\0" + f"./{staged}".encode("utf-8", "surrogateescape") + b"\0"
            + ("./" + action.rel).encode("utf-8", "surrogateescape") + b"\0")
