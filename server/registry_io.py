"""The one bounded thread pool the server's registry I/O runs on: reference lookups (and Hub
imports behind them) and adapter fetches.

Not asyncio's default pool, which tokenization and every ``to_thread`` share: a burst of lookups
for unknown names, or a registry that hangs, would otherwise take the threads a tenant's
completion needs. Bounded, so a slow registry queues requests here instead of growing threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
REGISTRY_THREADS = 8
THREAD_PREFIX = "loramux-registry"
_POOL = ThreadPoolExecutor(REGISTRY_THREADS, thread_name_prefix=THREAD_PREFIX)


async def registry_io(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the registry pool."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, fn, *args)
