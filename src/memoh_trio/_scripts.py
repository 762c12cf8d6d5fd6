"""Every shell script the migrator runs in the container, and the parser of its output. No I/O.

Rule 1 (as in h11's ``_state.py``): whatever runs container-side is built here, from plain data,
and whatever it prints is read back here; the transfer methods (:mod:`memoh_trio._migrate`) only
send the scripts and act on the parsed results. Tested against real shells (dash, bash, busybox
``sh`` with busybox applets) without a container or a socket.

How a script reaches the container (real containers, issue 10):

* The ``Exec`` command (the first message, ``/bin/sh -c COMMAND``) is always short and fixed:
  Linux caps one argument at 128 KiB (``MAX_ARG_STRLEN``), and a script listing 1,000 paths
  does not fit. The variable part travels as stdin: a generated script read by ``sh -s``
  (:data:`RUN_STDIN`), records read by a fixed python3 program, or a tar archive whose
  ``.memoh-run`` member is the listing script (:func:`extract_command`).
* No silent step: every per-entry script prints one record per entry, ``O <i>`` (done) or
  ``F <i> <why>`` (failed), and the parsers fail every entry that has no record. A server that
  drops stdin (Memoh's drops the stdin of the first message) runs an empty script, which prints
  nothing: every entry fails, the run cannot end "migrated".
* Never through a symlink: before a directory is written into, a link created, a mode or mtime
  applied, each component of the path is checked with ``[ -L ]`` (python: ``os.path.islink``);
  a symlink on the way, or a real directory where a file or link must go, fails that entry and
  touches nothing. Missing directories are created one component at a time (no ``mkdir -p``,
  which walks through links).
* POSIX ``sh`` and the intersection of GNU coreutils and busybox options only; mtimes to the
  nanosecond where the container can (python3, or GNU ``touch -d @S.N``), whole seconds where it
  cannot (busybox ``touch -d @S``); see :func:`meta_method`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ._plan import Action
from ._tarbatch import Layout

Check = Literal["size", "sha256"]
Precision = Literal["ns", "s"]
MetaMethod = Literal["python", "shell-ns", "shell-s"]

#: Exit code of the extract command when ``tar`` itself failed (staging removed).
TAR_FAILED_EXIT = 70
#: Exit code of the extract command when the archive had no listing script.
NO_RUN_EXIT = 71
#: Name of the listing script inside a tar batch (group directories are numbers: no clash).
RUN_MEMBER = ".memoh-run"
#: The fixed command that runs a generated script sent as stdin.
RUN_STDIN = "exec sh -s"
#: Printed by :data:`SYNC_COMMAND` once ``sync`` succeeded.
SYNCED = "memoh-synced"
#: The final ``sync``, proving it ran.
SYNC_COMMAND = f"sync && echo {SYNCED}"


def _q(s: str) -> str:
    return shlex.quote(s)


#: Exit status of a command whose shell could not enter the destination directory.
CD_FAILED_EXIT = 96


def in_dir(dest: str, command: str) -> str:
    """``command`` run in the destination directory ``dest`` (relative to the server's working
    directory; "" = that directory itself).

    The script enters it with ``cd`` rather than through Exec's ``work_dir``: Memoh's server
    takes a relative ``work_dir`` from its own process's working directory, not from its data
    directory, so ``work_dir="sub"`` fails there (``chdir sub: no such file or directory``).
    """
    if not dest:
        return command
    return f"cd -- {_q('./' + dest)} || exit {CD_FAILED_EXIT}\n{command}"


def shell_path(rel: str) -> str:
    """A relative path as a shell word that can never be read as an option."""
    return _q("./" + rel)


# --------------------------------------------------------------------------- capabilities

#: The commands the tar path needs.
TAR_COMMANDS = ("tar", "stat", "mv", "mkdir", "rm")
_PROBED_COMMANDS = (*TAR_COMMANDS, "sha256sum", "ln", "chmod", "touch", "sync")
_PROBE_PATH = "./.memoh-probe-absent"  # touch -c never creates it

#: Whether python3 runs (its start-up is most of the probe's time: 60-80 ms behind a pyenv
#: shim, so the migrator asks it in its own Exec, beside the copy, off the critical path).
#: It also prints the interpreter's own path, which the scripts then run directly
#: (:func:`with_python`): behind a pyenv shim (a bash script that runs ``pyenv``) each python3
#: start took 60 ms, 5 ms without it.
PY_PROBE_COMMAND = ("python3 -S -c 'import sys; print(\"python3 ok\"); "
                    "print(\"python3 exe\", sys.executable)' 2>/dev/null; echo probed")
#: The probe without python3 (a few ms): what the copy needs before it starts.
SHELL_PROBE_COMMAND = (
    f"for c in {' '.join(_PROBED_COMMANDS)}; do "
    "command -v \"$c\" >/dev/null 2>&1 && echo \"has $c\"; done; "
    "tar --version 2>/dev/null | grep 'GNU tar' >/dev/null 2>&1 && echo 'tar gnu'; "
    f"touch -c -m -d @1.000000001 -- {_PROBE_PATH} 2>/dev/null && echo 'touch ns'; "
    f"touch -c -m -d @1 -- {_PROBE_PATH} 2>/dev/null && echo 'touch s'; "
    "echo probed"
)
#: One Exec, fixed and small, that reports what the container has (read by :func:`parse_probe`).
PROBE_COMMAND = SHELL_PROBE_COMMAND.removesuffix("echo probed") + PY_PROBE_COMMAND


@dataclass(frozen=True)
class Capabilities:
    """What the container's userland offers (from one :data:`PROBE_COMMAND`)."""

    commands: frozenset[str] = frozenset()
    gnu_tar: bool = False
    touch_ns: bool = False
    touch_s: bool = False
    python3: bool = False
    probed: bool = False  # the probe ran to its end
    python_exe: str = "python3"  # how to run python3: its absolute path when it said so

    def tar_ok(self, check: Check) -> bool:
        """Whether tar batches can run (with ``sha256sum`` for ``check="sha256"``)."""
        need = TAR_COMMANDS + (("sha256sum",) if check == "sha256" else ())
        return self.probed and all(c in self.commands for c in need)

    @property
    def precision(self) -> Precision | None:
        """The mtime precision the container allows (``None``: it cannot set mtimes)."""
        if self.python3 or self.touch_ns:
            return "ns"
        return "s" if self.touch_s else None


def parse_probe(output: bytes) -> Capabilities:
    """Read :data:`PROBE_COMMAND`'s output (nothing is assumed that was not printed)."""
    lines = output.decode("utf-8", "replace").splitlines()
    exe = next((ln[12:] for ln in lines if ln.startswith("python3 exe /")), "python3")
    return Capabilities(python_exe=exe,
        commands=frozenset(ln[4:] for ln in lines if ln.startswith("has ")),
        gnu_tar="tar gnu" in lines, touch_ns="touch ns" in lines, touch_s="touch s" in lines,
        python3="python3 ok" in lines, probed="probed" in lines)


#: Batches of at most this many entries use the shell even where python3 exists (when the
#: shell keeps the same precision): python's start-up (20 ms for /usr/bin/python3 -S, 80+ ms
#: behind a pyenv shim) costs more than a few processes.
SHELL_META_MAX = 8


def meta_method(caps: Capabilities, n: int, *, use_python: bool = True,
                shell_max: int = SHELL_META_MAX) -> MetaMethod:
    """How to apply modes and mtimes to a batch of ``n`` entries (pure): python3 (nanoseconds)
    for large batches or where ``touch`` cannot take nanoseconds, else ``touch -d @S.N``, else
    whole seconds (``touch -d @S``, busybox)."""
    python = use_python and caps.python3
    if python and (n > shell_max or not caps.touch_ns):
        return "python"
    if caps.touch_ns:
        return "shell-ns"
    if python:
        return "python"
    return "shell-s"


def method_precision(method: MetaMethod) -> Precision:
    return "s" if method == "shell-s" else "ns"


# --------------------------------------------------------------------------- records

_RECORD = re.compile(r"^([OF]) (\d+)(?: (.*))?$")
#: Why a staged file failed when its group's ``mv`` failed.
MOVE_FAILED = "mv failed"
#: Why an entry failed when its script printed nothing for it.
NO_RECORD = "the container printed no record for it (the step did not run)"


def parse_records(output: bytes, n: int) -> dict[int, str | None]:
    """``{index: None (done) or why it failed}`` for indexes ``0..n-1`` from ``O``/``F`` lines.

    An index with no record, or with a failure record, fails; a record for an index out of
    range is ignored. Never accepts a short or missing record.
    """
    seen: dict[int, str | None] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        m = _RECORD.match(line)
        if not m:
            continue
        i = int(m.group(2))
        if i >= n:
            continue
        if m.group(1) == "F":
            seen[i] = (m.group(3) or "").strip() or "failed"
        else:
            seen.setdefault(i, None)
    return {i: seen.get(i, NO_RECORD) for i in range(n)}


def failures(output: bytes, n: int, stderr: bytes = b"") -> dict[int, str]:
    """The failed entries of :func:`parse_records`. When a single entry failed, its reason is
    followed by the first line the container printed on stderr (the tool's own message)."""
    err = next((ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines()
                if ln.strip()), "")
    out = {i: why for i, why in parse_records(output, n).items() if why is not None}
    if len(out) == 1 and err:
        ((i, why),) = out.items()
        if why != NO_RECORD:
            out[i] = f"{why} ({err[:300]})"
    if out and all(why == NO_RECORD for why in out.values()) and err:
        out = {i: f"{why}: {err[:300]}" for i, why in out.items()}
    return out


# --------------------------------------------------------------------------- shell prelude

#: Shell functions shared by the generated scripts (POSIX sh; builtins only, no fork).
#: ``memoh_dir REL``: REL is a real directory reached through real directories (missing ones are
#: created, one ``mkdir`` each, never ``-p``); ``memoh_safe REL``: REL exists and no component of
#: it is a symlink. Both set ``_why`` when they fail.
PRELUDE = r"""memoh_dir() {
  _p=.; _r=$1
  while [ -n "$_r" ]; do
    _c=${_r%%/*}
    case $_r in */*) _r=${_r#*/} ;; *) _r= ;; esac
    case $_c in ''|.) continue ;; esac
    _p=$_p/$_c
    if [ -L "$_p" ]; then _why="a symlink is in the way"; return 1; fi
    if [ ! -d "$_p" ]; then
      if [ -e "$_p" ]; then _why="not a directory on the way"; return 1; fi
      _why="cannot create a directory on the way"
      # another step may have created it meanwhile: fine if it is a real directory
      mkdir -- "$_p" 2>/dev/null || { [ -d "$_p" ] && [ ! -L "$_p" ]; } || return 1
    fi
  done
  return 0
}
memoh_safe() {
  _p=.; _r=$1
  while [ -n "$_r" ]; do
    _c=${_r%%/*}
    case $_r in */*) _r=${_r#*/} ;; *) _r= ;; esac
    case $_c in ''|.) continue ;; esac
    _p=$_p/$_c
    if [ -L "$_p" ]; then _why="a symlink is in the way"; return 1; fi
  done
  [ -e "$_p" ] || { _why="missing in the container"; return 1; }
}
"""


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


# --------------------------------------------------------------------------- tar batches


def extract_command(staging: str) -> str:
    """The fixed command of a tar batch: unpack stdin into ``./staging`` and run the archive's
    own :data:`RUN_MEMBER` (built by :func:`listing_script`) there.

    Exit :data:`TAR_FAILED_EXIT` when tar fails, :data:`NO_RUN_EXIT` when the archive had no
    listing script (stdin dropped or cut); the staging directory is removed in both cases.
    """
    s = _q("./" + staging)
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
    names = " ".join(_q(n) for n in lay.staged)
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
    st = _q("./" + staging)
    lines = [PRELUDE]
    used = [d for d, idx in zip(lay.dirs, lay.groups, strict=True)
            if any(i in wanted for i in idx)]
    lines.append(make_dirs(used))
    for d, idx in zip(lay.dirs, lay.groups, strict=True):
        chosen = [i for i in idx if i in wanted]
        if not chosen:
            continue
        target = "./" + d + "/" if d else "./"
        lines.append(f"if memoh_dir {_q(d)}; then\n  set --; _ok=''")
        for i in chosen:
            base = lay.staged[i].split("/", 1)[1]
            final = _q(target + base)
            lines.append(
                f"  if [ -L {final} ]; then rm -f -- {final}; fi\n"
                f"  if [ -d {final} ]; then echo 'F {i} a directory is in the way'; "
                f"else _ok=\"$_ok {i}\"; set -- \"$@\" {_q(f'./{staging}/{lay.staged[i]}')}; fi")
        lines.append(
            f"  if [ $# -eq 0 ]; then :; elif mv -f -- \"$@\" {_q(target)}; then\n"
            "    for _i in $_ok; do echo \"O $_i\"; done\n"
            f"  else for _i in $_ok; do echo \"F $_i {MOVE_FAILED}\"; done\n"
            "  fi\n"
            f"else for _i in {' '.join(str(i) for i in chosen)}; do "
            "echo \"F $_i $_why\"; done\nfi")
    lines.append(f"rm -rf -- {st}")
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
d=sys.stdin.buffer.read().split(b'\0')
o=sys.stdout
for k in range(len(d)//3):
    h,s,f=d[3*k],d[3*k+1],d[3*k+2]
    i,m,t=h.split(b' ')
    i=int(i)
    try:
        p=f.rpartition(b'/')[0]
        if p not in D: D[p]=mkd(p)
        w=D[p]
        if w is None and os.path.isdir(f) and not os.path.islink(f): w='a directory is in the way'
        if w is None:
            if m!=b'-':
                os.chmod(s,int(m,8)); t=int(t); os.utime(s,ns=(t,t))
            os.rename(s,f)
        o.write('O %d\n'%i if w is None else 'F %d %s\n'%(i,w))
    except OSError as e:
        o.write('F %d %s\n'%(i,e.strerror))
o.flush()
"""


def py_move_command(staging: str, exe: str = "python3") -> str:
    """The command of :data:`PY_MOVE` for ``staging``: the staging directory is removed after
    it, whatever happened, and the mover's exit status kept."""
    return (f"{with_python(f'python3 -S -c {_q(PY_MOVE)}', exe)}; _r=$?; "
            f"rm -rf -- {_q('./' + staging)}; exit $_r")


def with_python(command: str, exe: str) -> str:
    """``command`` (``python3 ...``) run by the interpreter ``exe`` (from the probe)."""
    if exe == "python3" or not command.startswith("python3 "):
        return command
    return _q(exe) + command[len("python3"):]


def py_move_records(staging: str, lay: Layout, members: Sequence[int],
                    actions: Sequence[Action], *, preserve: bool) -> bytes:
    """The stdin of :func:`py_move_command`: ``INDEX MODE MTIME_NS\0STAGED\0FINAL\0`` per
    member to move (``MODE`` ``-``: leave mode and mtime as unpacked)."""
    out = []
    for i in members:
        a = actions[i]
        head = f"{i} {a.mode:o} {a.mtime_ns}" if preserve else f"{i} - 0"
        out.append(head.encode() + b"\0"
                   + f"./{staging}/{lay.staged[i]}".encode("utf-8", "surrogateescape") + b"\0"
                   + ("./" + a.rel).encode("utf-8", "surrogateescape") + b"\0")
    return b"".join(out)


# --------------------------------------------------------------------------- symlinks


def links_script(batch: Sequence[Action]) -> str:
    """Recreate the symlinks of ``batch`` (run by :data:`RUN_STDIN`); ``O``/``F`` per entry.

    Parents through :func:`memoh_dir <PRELUDE>`; a real directory at the link's path is a
    conflict; an old symlink or file there is replaced by a link made under a temporary name and
    renamed over it (``mv`` of a non-directory onto a non-directory: atomic, never followed).
    """
    lines = [PRELUDE, r"""memoh_link() {
  if ! memoh_dir "$3"; then echo "F $1 $_why"; return; fi
  if [ -d "$4" ] && [ ! -L "$4" ]; then echo "F $1 a directory is in the way"; return; fi
  if [ ! -e "$4" ] && [ ! -L "$4" ]; then
    if ln -s -- "$2" "$4"; then echo "O $1"; else echo "F $1 cannot create the symlink"; fi
    return
  fi
  _t="./$3/.memoh-link-$1-$$"
  rm -f -- "$_t"
  if [ -L "$4" ]; then rm -f -- "$4"; fi
  if ln -s -- "$2" "$_t" && mv -f -- "$_t" "$4"; then echo "O $1"
  else rm -f -- "$_t"; echo "F $1 cannot create the symlink"; fi
}"""]
    for i, a in enumerate(batch):
        assert a.link_target is not None
        lines.append(f"memoh_link {i} {_q(a.link_target)} {_q(_parent(a.rel))} "
                     f"{shell_path(a.rel)}")
    return "\n".join(lines) + "\n"


#: python3 variant of :func:`links_script`: one process for the batch. Records on stdin:
#: ``PATH\0TARGET\0`` per link (:func:`py_link_records`).
PY_LINKS = "python3 -S -c " + _q(r"""import os,sys
L={}
def lk(q):
    r=L.get(q)
    if r is None: r=L[q]=os.path.islink(q)
    return r
def mkd(p):
    q=b'.'
    for c in p.split(b'/')[1:-1]:
        q+=b'/'+c
        if lk(q): return 'a symlink is in the way'
        if not os.path.isdir(q):
            if os.path.lexists(q): return 'not a directory on the way'
            try: os.mkdir(q)
            except FileExistsError:
                if os.path.islink(q) or not os.path.isdir(q): return 'not a directory on the way'
            L[q]=False
    return None
d=sys.stdin.buffer.read().split(b'\0')
o=sys.stdout
for i in range(len(d)//2):
    p,t=d[2*i],d[2*i+1]
    try:
        w=mkd(p)
        if w is None and os.path.isdir(p) and not os.path.islink(p): w='a directory is in the way'
        if w is None:
            if os.path.lexists(p):
                n=p.rpartition(b'/')[0]+b'/.memoh-link-%d-%d'%(i,os.getpid())
                os.symlink(t,n)
                try: os.replace(n,p)
                except OSError:
                    os.unlink(n); raise
            else: os.symlink(t,p)
            L[p]=True
        o.write('O %d\n'%i if w is None else 'F %d %s\n'%(i,w))
    except OSError as e:
        o.write('F %d %s\n'%(i,e.strerror))
o.flush()
""")


def py_link_records(batch: Sequence[Action]) -> bytes:
    """The stdin of :data:`PY_LINKS` for ``batch``."""
    out = []
    for a in batch:
        assert a.link_target is not None
        out.append(("./" + a.rel).encode("utf-8", "surrogateescape") + b"\0"
                   + a.link_target.encode("utf-8", "surrogateescape") + b"\0")
    return b"".join(out)


# --------------------------------------------------------------------------- modes and mtimes


def _touch_time(mtime_ns: int, precision: Precision) -> str:
    secs, ns = divmod(mtime_ns, 1_000_000_000)
    return f"@{secs}.{ns:09d}" if precision == "ns" else f"@{secs}"


#: Paths per grouped ``chmod``/``touch`` command: well below Linux's 2 MiB for all arguments.
GROUP_ARG_BYTES = 128 * 1024


def _groups(batch: Sequence[Action], key: Callable[[Action], str]) -> list[tuple[str, list[int]]]:
    """Indexes of ``batch`` grouped by ``key`` (first-seen order), each group cut so its paths
    stay within :data:`GROUP_ARG_BYTES`."""
    by: dict[str, list[list[int]]] = {}
    size: dict[str, int] = {}
    for i, a in enumerate(batch):
        k = key(a)
        n = len(a.rel.encode("utf-8", "surrogateescape")) + 8
        chunks = by.setdefault(k, [[]])
        if chunks[-1] and size.get(k, 0) + n > GROUP_ARG_BYTES:
            chunks.append([])
            size[k] = 0
        chunks[-1].append(i)
        size[k] = size.get(k, 0) + n
    return [(k, c) for k, cs in by.items() for c in cs]


def meta_script(batch: Sequence[Action], precision: Precision) -> str:
    """Apply each entry's permission bits and mtime (run by :data:`RUN_STDIN`); ``O``/``F`` per
    entry. Each path is checked first (:func:`memoh_safe <PRELUDE>`): ``chmod`` and ``touch``
    follow symlinks, so nothing is done to a path with a symlink on the way or at its end.
    ``precision="s"``: whole seconds (busybox ``touch`` rejects ``@S.N``).

    One ``chmod`` per mode and one ``touch`` per mtime among the entries that passed (a process
    each, ~1 ms; per entry it was two: 2.2 s per 1,000 entries under busybox); when a grouped
    command fails, each of its entries is retried alone to find which."""
    lines = [PRELUDE]
    paths = [shell_path(a.rel) for a in batch]
    for i, a in enumerate(batch):
        lines.append(f"if memoh_safe {_q(a.rel)}; then _p{i}=1; else _p{i}=; "
                     f'echo "F {i} $_why"; fi')

    def grouped(cmd: str, what: str, key: Callable[[Action], str]) -> None:
        for k, idx in _groups(batch, key):
            lines.append("set --")
            lines.extend(f'[ -z "$_p{i}" ] || set -- "$@" {paths[i]}' for i in idx)
            lines.append(f'if [ $# -gt 0 ] && ! {cmd} {k} -- "$@" 2>/dev/null; then')
            lines.extend(f'  [ -z "$_p{i}" ] || {cmd} {k} -- {paths[i]} || '
                         f'{{ echo "F {i} {what} failed"; _p{i}=; }}' for i in idx)
            lines.append("fi")

    grouped("chmod", "chmod", lambda a: f"{a.mode:o}")
    grouped("touch -c -m -d", "touch", lambda a: _touch_time(a.mtime_ns, precision))
    lines.extend(f'[ -z "$_p{i}" ] || echo "O {i}"' for i in range(len(batch)))
    return "\n".join(lines) + "\n"


#: python3 variant of :func:`meta_script`: one process for the batch, nanosecond mtimes.
#: Records on stdin: ``MODE MTIME_NS PATH\0`` per entry (:func:`py_meta_records`).
#: ``-S``: no ``site`` import, which halves the interpreter's start-up (measured 160 -> 80 ms
#: under a pyenv shim, 18 ms for /usr/bin/python3 -S); the script needs only os and sys.
PY_META = "python3 -S -c " + _q(r"""import os,sys
L={}
def bad(p):
    q=b'.'
    for c in p.split(b'/')[1:]:
        if not c: continue
        q+=b'/'+c
        r=L.get(q)
        if r is None: r=L[q]=os.path.islink(q)
        if r: return True
    return False
d=sys.stdin.buffer.read().split(b'\0')
o=sys.stdout
for i,r in enumerate(d[:-1]):
    m,t,p=r.split(b' ',2)
    try:
        if bad(p): o.write('F %d a symlink is in the way\n'%i); continue
        if not os.path.lexists(p): o.write('F %d missing in the container\n'%i); continue
        os.chmod(p,int(m,8)); t=int(t); os.utime(p,ns=(t,t))
        o.write('O %d\n'%i)
    except OSError as e:
        o.write('F %d %s\n'%(i,e.strerror))
o.flush()
""")


def py_meta_records(batch: Sequence[Action]) -> bytes:
    """The stdin of :data:`PY_META` for ``batch``."""
    return b"".join(
        b"%o %d %s\0" % (a.mode, a.mtime_ns, ("./" + a.rel).encode("utf-8", "surrogateescape"))
        for a in batch
    )


# --------------------------------------------------------------------------- single commands


def sha256_command(path: str) -> str:
    """Hash one container file (relative to the server's working directory)."""
    return f"sha256sum -- {shell_path(path)}"


def parse_sha256(output: bytes) -> str | None:
    """The lowercase hex digest from ``sha256sum`` output, or ``None``."""
    word = output.split(b" ", 1)[0].decode("ascii", "replace").lstrip("\\")
    return word.lower() if len(word) == 64 else None


# --------------------------------------------------------------------------- sha256 of many files

#: Reads ``./rel`` paths from stdin, one a line, and hashes them all with one ``sha256sum``
#: (missing or unreadable files are simply absent from the output).
SHA256_MANY_SCRIPT = (
    'set --\nwhile IFS= read -r p; do set -- "$@" "$p"; done\n'
    '[ "$#" -eq 0 ] || sha256sum -- "$@" 2>/dev/null\nexit 0'
)


def sha256_many(rels: Sequence[str]) -> tuple[str, bytes]:
    """The script and its stdin hashing ``rels`` (relative to the working directory) in the
    container. Names with a newline or a backslash cannot be listed this way: leave them out.
    Parse the output with :func:`parse_sha256_many`."""
    assert not any("\n" in r or "\\" in r for r in rels), "unlistable name"
    return SHA256_MANY_SCRIPT, b"".join(("./" + r).encode("utf-8", "surrogateescape") + b"\n"
                                        for r in rels)


def parse_sha256_many(output: bytes) -> dict[str, str]:
    """``{rel: lowercase hex digest}`` from :func:`sha256_many`'s output."""
    out: dict[str, str] = {}
    for line in output.split(b"\n"):
        digest, sep, name = line.partition(b"  ")
        if not sep or len(digest) != 64 or not name.startswith(b"./"):
            continue
        out[name[2:].decode("utf-8", "surrogateescape")] = digest.decode("ascii").lower()
    return out
