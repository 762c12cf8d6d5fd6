"""Modes and mtimes applied in the container (grouped ``chmod``/``touch``, or one python3
process), and the final ``sync``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .._plan import Action
from .probe import Precision
from .shell import PRELUDE, quote, shell_path

#: Printed by :data:`SYNC_COMMAND` once ``sync`` succeeded (a global sync: the migrator flushes
#: with :func:`memoh_trio._scripts.flush.flush_command`; kept for comparisons and tests).
SYNCED = "memoh-synced"
#: The final ``sync``, proving it ran.
SYNC_COMMAND = f"sync && echo {SYNCED}"


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
        lines.append(f"if memoh_safe {quote(a.rel)}; then _p{i}=1; else _p{i}=; "
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
    lines.append("exit 0")  # another exit code: the shell died, no record is believed
    return "\n".join(lines) + "\n"


#: python3 variant of :func:`meta_script`: one process for the batch, nanosecond mtimes.
#: Records on stdin: ``MODE MTIME_NS PATH\0`` per entry (:func:`py_meta_records`).
#: ``-S``: no ``site`` import, which halves the interpreter's start-up (measured 160 -> 80 ms
#: under a pyenv shim, 18 ms for /usr/bin/python3 -S); the script needs only os and sys.
PY_META = "python3 -S -c " + quote(r"""import os,sys
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
o=open(1,'w',65536,errors='replace',closefd=False)
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
