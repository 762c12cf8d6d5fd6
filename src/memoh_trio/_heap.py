"""Giving freed heap memory back to the system (glibc's ``malloc_trim``), where there is one.

CPython allocates a large ``bytes`` object with ``malloc``. glibc serves the first ones with
``mmap`` and returns them to the system when freed, but then raises its mmap threshold to the
size just freed (up to 32 MiB), so later 16 MiB messages come from the heap, and a heap freed in
the middle stays with the process: after 32 concurrent 16 MiB WriteFile calls the server held
572 MB it no longer used. ``malloc_trim(0)`` returns the free pages of every arena.

A cancelled call's message can also sit in a reference cycle (its task's exception, traceback
and frames), which only a full collection frees: 35 clients killed in the middle of 16 MiB
uploads left 12 MiB each in memory until then. :func:`trim` collects first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim() -> bool:
    """Free what only reference cycles hold, then return free heap pages to the system; False
    where the C library cannot do the latter."""
    gc.collect()
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
