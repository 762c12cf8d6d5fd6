"""Symlinks in the container: the destination's own, found by ``find`` where its listing failed
(:data:`FIND_LINKS_COMMAND`); and the source's, recreated by a shell script or one python3
process for the batch."""

from __future__ import annotations

from collections.abc import Sequence

from .._plan import Action
from .shell import PRELUDE, quote, shell_path

#: The last line of :data:`FIND_LINKS_COMMAND`'s output, printed only once ``find`` succeeded.
LINKS_FOUND = "memoh-links-found"

#: Every symlink under the destination (the working directory), NUL-terminated (any name, in
#: bytes), then :data:`LINKS_FOUND`: POSIX ``find -exec ... {} +`` (GNU and busybox), never over
#: the argument limit (``find`` splits), never following a link. For a destination the server
#: cannot list (Memoh's fails a recursive ListDir on one name that is not UTF-8): without its
#: symlinks, a WriteRaw would go through one (:func:`parse_links_found`).
FIND_LINKS_COMMAND = f"find . -type l -exec printf '%s\\0' {{}} + && echo {LINKS_FOUND}"


def parse_links_found(out: bytes) -> set[str] | None:
    """The symlinks :data:`FIND_LINKS_COMMAND` printed, as paths relative to the destination
    (names not UTF-8 with ``surrogateescape``, as the walk spells them); ``None`` unless the
    output proves that ``find`` went through the whole tree (it ends with :data:`LINKS_FOUND`
    after the last NUL) and every name is one of its ``./`` paths."""
    mark = LINKS_FOUND.encode() + b"\n"
    if not out.endswith(mark):
        return None
    body = out[:-len(mark)]
    if body and not body.endswith(b"\0"):
        return None
    links: set[str] = set()
    for raw in body.split(b"\0")[:-1]:
        if not raw.startswith(b"./") or raw == b"./":
            return None
        links.add(raw[2:].decode("utf-8", "surrogateescape"))
    return links


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


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
        lines.append(f"memoh_link {i} {quote(a.link_target)} {quote(_parent(a.rel))} "
                     f"{shell_path(a.rel)}")
    lines.append("exit 0")  # another exit code: the shell died, no record is believed
    return "\n".join(lines) + "\n"


#: python3 variant of :func:`links_script`: one process for the batch. Records on stdin:
#: ``PATH\0TARGET\0`` per link (:func:`py_link_records`).
PY_LINKS = "python3 -S -c " + quote(r"""import os,sys
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
o=open(1,'w',65536,errors='replace',closefd=False)
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
