"""Small Trio helpers shared by the client and the migrator."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

T = TypeVar("T")


async def with_helpers(
    main: Callable[[], Awaitable[T]], helpers: Sequence[Callable[[], Awaitable[None]]]
) -> T:
    """Run ``main`` while ``helpers`` run beside it; cancel them when ``main`` ends.

    ``main``'s exception comes out as itself, not wrapped in an ExceptionGroup by the nursery
    (helpers never raise ``Exception``).
    """
    if not helpers:
        return await main()
    error: Exception | None = None
    result: Any = None
    async with trio.open_nursery() as nursery:
        for helper in helpers:
            nursery.start_soon(helper)
        try:
            result = await main()
        except Exception as exc:
            error = exc
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return result  # type: ignore[no-any-return]
