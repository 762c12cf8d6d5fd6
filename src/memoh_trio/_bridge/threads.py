"""Worker threads for blocking file I/O, awaited from asyncio code with working cancellation.

trio-asyncio's ``loop.run_in_executor`` runs the function through ``trio.to_thread.run_sync``
in a Trio task and resolves an asyncio future from it. Cancelling that future only asks the
Trio task to stop; a thread cannot be interrupted, so the task finishes normally and the
future resolves with the *result*: the asyncio task that was awaiting it wakes up as if it had
not been cancelled, and the cancellation is lost. (Seen here: a WriteRaw handler whose
connection died while a chunk was being written carried on waiting for the next chunk
forever, and its temporary file stayed until shutdown; ``tests/test_faults.py``,
``test_proxy_cut_mid_copy``.)

:func:`run` submits to a plain pool of daemon threads instead (:class:`_DaemonPool`) and wraps
the ``concurrent.futures`` result with ``asyncio.wrap_future``: cancelling the asyncio future
cancels the awaiting task at once, while the thread finishes its call in the background.
Callers that share state with the thread (``memoh_trio._fs.RawWriter``) guard it with a lock.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: Threads for file reads and writes (the default of ``ThreadPoolExecutor``).
MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)


class _DaemonPool:
    """``ThreadPoolExecutor.submit`` with daemon threads (same reuse: a thread is started only
    when none is idle, up to ``max_workers``).

    ``ThreadPoolExecutor`` joins its threads when the interpreter exits, so one thread stuck in
    a read on a hung filesystem kept the process alive after its run was cancelled (SIGTERM:
    the run stopped, the process never exited; ``tests/test_trust.py``,
    ``test_signal_ends_the_run_while_a_read_hangs``). Nothing here needs a thread to finish at
    exit: a cancelled call's result is not wanted.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._jobs = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._count = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        fut: Future[T] = Future()
        self._jobs.put((fut, fn, args))
        if self._idle.acquire(timeout=0):
            return fut
        with self._lock:
            if self._count < self._max:
                self._count += 1
                threading.Thread(target=self._work, name=f"{self._name}_{self._count}",
                                 daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            fut, fn, args = self._jobs.get()
            if fut.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
            del fut, fn, args  # no reference to a finished job while idle
            self._idle.release()


_pool: _DaemonPool | None = None
_pool_lock = threading.Lock()


def _get_pool() -> _DaemonPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _DaemonPool(MAX_WORKERS, "memoh-trio-io")
        return _pool


def run(fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """Run ``fn(*args)`` in a worker thread; await the returned future from asyncio code."""
    return asyncio.wrap_future(_get_pool().submit(fn, *args))
