"""SHA-256 of container files: one file (``sha256sum``), or many in one process."""

from __future__ import annotations

from collections.abc import Sequence

from .shell import shell_path


def sha256_command(path: str) -> str:
    """Hash one container file (relative to the server's working directory); exit 3, nothing
    opened, unless it is a regular file (not a symlink: ``sha256sum`` would block opening a
    FIFO, or read a device, or follow a link out of the tree)."""
    p = shell_path(path)
    return f"[ -f {p} ] && [ ! -h {p} ] || exit 3; exec sha256sum -- {p}"


def parse_sha256(output: bytes) -> str | None:
    """The lowercase hex digest from ``sha256sum`` output, or ``None``."""
    word = output.split(b" ", 1)[0].decode("ascii", "replace").lstrip("\\")
    return word.lower() if len(word) == 64 else None


#: Reads ``./rel`` paths from stdin, one a line, and hashes them all with one ``sha256sum``
#: (missing or unreadable files are simply absent from the output; so is anything but a regular
#: file, never opened: see :func:`sha256_command`).
SHA256_MANY_SCRIPT = (
    'set --\nwhile IFS= read -r p; do [ -f "$p" ] && [ ! -h "$p" ] && set -- "$@" "$p"; done\n'
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
