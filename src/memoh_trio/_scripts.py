"""Every shell script the migrator runs in the container, and the parser of its output. No I/O.

Rule 1 (as in h11's ``_state.py``): whatever runs container-side is built here, from plain data,
and whatever it prints is read back here; the transfer methods (:mod:`memoh_trio._migrate`) only
send the scripts and act on the parsed results. Tested against a real ``/bin/sh`` without a
container or a socket.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Literal

from ._plan import Action
from ._tarbatch import Layout

Check = Literal["size", "sha256"]

#: The commands a container needs for the tar path (probed once per run).
REQUIRED_COMMANDS = ("tar", "stat", "mv", "mkdir", "rm")
#: Exit code of the extract script when ``tar`` itself failed.
TAR_FAILED_EXIT = 70


def _q(path: str) -> str:
    return shlex.quote(path)


def probe_script(check: Check) -> str:
    """Exit 0 iff the container has every command the tar path needs."""
    cmds = REQUIRED_COMMANDS + (("sha256sum",) if check == "sha256" else ())
    return " && ".join(f"command -v {c} >/dev/null 2>&1" for c in cmds)


def extract_script(staging: str, lay: Layout, check: Check, *, preserve: bool = True) -> str:
    """Unpack stdin into ``./staging``, then list each staged file (``size name`` or
    ``sha256sum`` lines) in member order. Exit :data:`TAR_FAILED_EXIT` (staging removed) when
    tar fails; a staged file that is missing simply has no line."""
    s = _q("./" + staging)
    names = " ".join(_q(n) for n in lay.staged)
    lister = "sha256sum" if check == "sha256" else "stat -c '%s %n'"
    # -p: exact modes; -m: do not restore mtimes; -o: do not restore owners (GNU and busybox).
    flags = "-x -p -o" if preserve else "-x -m -o"
    return (
        f"mkdir -- {s} || exit 1\n"
        f"if ! tar {flags} -f - -C {s}; then rm -rf -- {s}; exit {TAR_FAILED_EXIT}; fi\n"
        f"cd -- {s} || exit 1\n"
        f"{lister} -- {names}\n"
        "exit 0\n"
    )


_SIZE = re.compile(rb"(\d+) ")
_HEX = re.compile(rb"(\\?)([0-9a-fA-F]{64})  ")


def _gnu_escape(name: bytes) -> bytes:
    return name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")


def parse_listing(output: bytes, staged: Sequence[str], check: Check) -> dict[int, int | str]:
    """Read :func:`extract_script`'s listing: ``{member index: size or lowercase hex}``.

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


def move_script(staging: str, lay: Layout, members: Sequence[int]) -> str:
    """Move the staged ``members`` (indexes) into place: one ``mv`` per destination directory
    (after a ``mkdir -p`` when it does not exist yet), then delete the staging directory. Prints
    ``F <group> <error>`` for each group that failed (read by :func:`parse_failures`).

    A group that succeeds costs one process (``mv``), two when its directory is new: a subshell
    capturing each group's messages made it three (measured: ~3.4 ms per group, 0.3 s for the
    65 directories of one batch of the mixed tree). Messages go to a file in the staging
    directory, read only when the group failed.
    """
    wanted = set(members)
    err = _q(f"./{staging}/.err")  # staged groups are named by number: no clash
    lines = []
    for g, (d, idx) in enumerate(zip(lay.dirs, lay.groups, strict=True)):
        chosen = [i for i in idx if i in wanted]
        if not chosen:
            continue
        target = _q("./" + d + "/" if d else "./")
        srcs = " ".join(_q(f"./{staging}/{lay.staged[i]}") for i in chosen)
        lines.append(
            f"if {{ [ -d {target} ] || mkdir -p -- {target}; }} 2>{err} && "
            f"mv -f -- {srcs} {target} 2>{err}; then :; else "
            f"printf 'F %d %s\\n' {g} \"$(tr '\\n' ' ' < {err})\"; fi"
        )
    lines.append(f"rm -rf -- {_q('./' + staging)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- per-entry scripts


def shell_path(rel: str) -> str:
    """A relative path as a shell word that can never be read as an option."""
    return shlex.quote("./" + rel)


def link_lines(batch: Sequence[Action]) -> list[str]:
    """One line per symlink to recreate (its parent directory created first)."""
    lines = []
    for a in batch:
        assert a.link_target is not None
        parent = a.rel.rpartition("/")[0]
        mk = f"mkdir -p -- {shell_path(parent)} && " if parent else ""
        lines.append(f"{mk}ln -sfn -- {shlex.quote(a.link_target)} {shell_path(a.rel)}")
    return lines


def meta_lines(batch: Sequence[Action]) -> list[str]:
    """One line per entry applying its permission bits and mtime."""
    lines = []
    for a in batch:
        secs, ns = divmod(a.mtime_ns, 1_000_000_000)
        p = shell_path(a.rel)
        lines.append(f"chmod {a.mode:o} -- {p} && touch -c -m -d @{secs}.{ns:09d} -- {p}")
    return lines


def per_entry_script(lines: Sequence[str]) -> str:
    """A script running each line; prints ``F <index> <error>`` for each line that failed."""
    return "\n".join(
        f"out=$( {{ {line} ; }} 2>&1 ) || "
        f"printf 'F %d %s\\n' {i} \"$(printf %s \"$out\" | tr '\\n' ' ')\""
        for i, line in enumerate(lines)
    )


def parse_failures(output: bytes) -> dict[int, str]:
    """``{index: error}`` from the ``F <index> <error>`` lines of a per-entry script."""
    failed: dict[int, str] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0] == "F" and parts[1].isdigit():
            failed[int(parts[1])] = (parts[2] if len(parts) > 2 else "").strip() or "failed"
    return failed


#: Probe for python3 in the container (exit 0 iff present).
PYTHON_PROBE = "command -v python3 >/dev/null 2>&1"

#: Applies "MODE MTIME_NS PATH\0" records from stdin; prints "F index reason" per failure.
#: ``-S``: no ``site`` import, which halves the interpreter's start-up (measured 160 -> 80 ms
#: under a pyenv shim, 18 ms for /usr/bin/python3 -S); the script needs only os and sys.
PY_META = "python3 -S -c " + shlex.quote(
    "import os,sys\n"
    "data=sys.stdin.buffer.read().split(b'\\0')\n"
    "for i,r in enumerate(data[:-1]):\n"
    "    m,t,p=r.split(b' ',2)\n"
    "    try:\n"
    "        os.chmod(p,int(m,8),follow_symlinks=False) if not os.path.islink(p) else None\n"
    "        t=int(t); os.utime(p,ns=(t,t),follow_symlinks=False)\n"
    "    except OSError as e:\n"
    "        print('F',i,e.strerror,flush=True)\n"
)


def py_meta_records(batch: Sequence[Action]) -> bytes:
    """The stdin of :data:`PY_META` for ``batch``."""
    return b"".join(
        b"%o %d %s\0" % (a.mode, a.mtime_ns, ("./" + a.rel).encode("utf-8", "surrogateescape"))
        for a in batch
    )


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
