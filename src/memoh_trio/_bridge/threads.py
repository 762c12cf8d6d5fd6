"""Worker threads for blocking file I/O, awaited from asyncio code with working cancellation.

trio-asyncio's ``loop.run_in_executor`` runs the function through ``trio.to_thread.run_sync``
in a Trio task and resolves an asyncio future from it. Cancelling that future only asks the
Trio task to stop; a thread cannot be interrupted, so the task finishes normally and the
future resolves with the *result*: the asyncio task that was awaiting it wakes up as if it had
not been cancelled, and the cancellation is lost. (Seen here: a WriteRaw handler whose
connection died while a chunk was being written carried on waiting for the next chunk
forever, and its temporary file stayed until shutdown; ``tests/test_faults.py``,
``test_proxy_cut_mid_copy``.)

:func:`run` submits to a plain ``concurrent.futures`` pool instead and wraps the result with
``asyncio.wrap_future``: cancelling the asyncio future cancels the awaiting task at once, while
the thread finishes its call in the background. Callers that share state with the thread
(``memoh_trio._fs.RawWriter``) guard it with a lock.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

#: Threads for file reads and writes (the default of ``ThreadPoolExecutor``).
MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="memoh-trio-io")
        return _pool


def run(fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """Run ``fn(*args)`` in a worker thread; await the returned future from asyncio code."""
    return asyncio.wrap_future(_get_pool().submit(fn, *args))
