"""Click command groups of the ``voltguard`` CLI, and what the serving commands share."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any


async def until_signal(server: Coroutine[Any, Any, None]) -> None:
    """Run ``server`` until SIGTERM or SIGINT cancels it, and let it clean up.

    The servers (ingress, API) stop accepting, flush their producer and return on
    cancellation; this waits for that, so the command exits only after the flush.
    """
    task = asyncio.create_task(server)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
