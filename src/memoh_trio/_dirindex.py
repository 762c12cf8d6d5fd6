"""A recursive listing kept compact: one ``int`` per path (pure, no I/O).

Resume's quick check needs, for each path at the destination, its type, size and mtime second.
Kept as :class:`~memoh_trio.FileEntry` objects with their mode and time strings, a listing of
300,000 files held ~106 MiB in the client (tracemalloc: the objects 32 MiB, paths 29.5, mod_time
strings 19.7, mode strings 16.9, the dict 7.3); here each name is a key of its directory's dict,
whose value packs the rest into one int: about 107 bytes a file plus its name's length (measured
in ``tests/test_dirindex.py::test_growth_per_file``).

Layout of a value (bits, low to high): 0 directory, 1 regular file, 2 symlink, 3..42 the mtime
field (0: unknown; else whole seconds + 2**39 + 1), 43.. the size (0 where the server sent a
negative one: such an entry is not regular, so never vouched for).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import NamedTuple

#: One decoded ``FileEntry``: ``(path, is_dir, size, mode, mod_time)`` (as :mod:`._wire`).
Entry = tuple[str, bool, int, str, str]

_DIR, _REG, _LINK = 1, 2, 4
_MT_SHIFT, _MT_BITS = 3, 40
_MT_OFFSET = 1 << (_MT_BITS - 1)
_MT_MASK = (1 << _MT_BITS) - 1
_SIZE_SHIFT = _MT_SHIFT + _MT_BITS
#: Go's FileMode letters a regular file may carry before its nine permission characters
#: (set-uid, set-gid, sticky); any other letter names another type.
_REGULAR_LETTERS = frozenset("-ugt")


def mode_is_regular(mode: str) -> bool:
    """Whether a Go ``FileMode.String()`` names a regular file (no type letter: not ``d``,
    ``L``, ``D``, ``c``, ``p``, ``S``, ``?``...)."""
    return len(mode) >= 9 and set(mode[:-9]) <= _REGULAR_LETTERS


def mtime_seconds(mod_time: str) -> int | None:
    """Whole seconds of a ListDir ``mod_time`` (RFC 3339), ``None`` if unparsable."""
    try:
        return math.floor(datetime.fromisoformat(mod_time.replace("Z", "+00:00")).timestamp())
    except (ValueError, OverflowError, OSError):
        return None


class Listed(NamedTuple):
    """One path of a :class:`DirIndex`, unpacked."""

    is_dir: bool
    is_regular: bool
    is_link: bool
    size: int
    mtime_seconds: int | None


def pack(is_dir: bool, size: int, mode: str, mod_time: str) -> int:
    """The packed value of one listed entry (see the module docstring)."""
    flags = _DIR if is_dir else 0
    if size < 0:
        size = 0
    elif not is_dir and mode_is_regular(mode):
        flags |= _REG
    if mode.startswith("L"):
        flags |= _LINK
    seconds = mtime_seconds(mod_time)
    field = 0 if seconds is None else seconds + _MT_OFFSET + 1
    if not 0 < field <= _MT_MASK:
        field = 0
    return (size << _SIZE_SHIFT) | (field << _MT_SHIFT) | flags


def unpack(value: int) -> Listed:
    field = (value >> _MT_SHIFT) & _MT_MASK
    return Listed(bool(value & _DIR), bool(value & _REG), bool(value & _LINK),
                  value >> _SIZE_SHIFT, field - _MT_OFFSET - 1 if field else None)


class DirIndex:
    """Paths of a recursive listing (relative, no leading ``/``), each with its packed facts;
    kept by directory, then name (a directory's path is held once, not in each of its files':
    ~38 bytes a file less for the session files of a bot)."""

    __slots__ = ("_dirs", "_len")

    def __init__(self) -> None:
        self._dirs: dict[str, dict[str, int]] = {}
        self._len = 0

    @classmethod
    def from_entries(cls, entries: Iterable[Entry]) -> DirIndex:
        index = cls()
        dirs = index._dirs
        for path, is_dir, size, mode, mod_time in entries:
            parent, _, name = path.strip("/").rpartition("/")
            names = dirs.get(parent)
            if names is None:
                names = dirs[parent] = {}
            names[name] = pack(is_dir, size, mode, mod_time)
        index._len = sum(map(len, dirs.values()))
        return index

    def _value(self, rel: str) -> int | None:
        parent, _, name = rel.rpartition("/")
        names = self._dirs.get(parent)
        return None if names is None else names.get(name)

    def get(self, rel: str) -> Listed | None:
        value = self._value(rel)
        return None if value is None else unpack(value)

    def unchanged(self, rel: str, size: int, mtime_ns: int) -> bool:
        """rsync's quick check: a regular file of this size and mtime second is there (a
        symlink whose text has the same length, a FIFO or device where an empty file goes,
        are not it)."""
        value = self._value(rel)
        if value is None or not value & _REG or value >> _SIZE_SHIFT != size:
            return False
        field = (value >> _MT_SHIFT) & _MT_MASK
        return field != 0 and field - _MT_OFFSET - 1 == mtime_ns // 1_000_000_000

    def links(self) -> set[str]:
        """The symlinks listed."""
        return {rel for rel, value in self._items() if value & _LINK}

    def discard(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        names = self._dirs.get(parent)
        if names is not None and names.pop(name, None) is not None:
            self._len -= 1

    def _items(self) -> Iterator[tuple[str, int]]:
        for parent, names in self._dirs.items():
            if parent:
                for name, value in names.items():
                    yield f"{parent}/{name}", value
            else:
                yield from names.items()

    def __contains__(self, rel: object) -> bool:
        return isinstance(rel, str) and self._value(rel) is not None

    def __iter__(self) -> Iterator[str]:
        return (rel for rel, _ in self._items())

    def __len__(self) -> int:
        return self._len
