"""What the stand-in's background requests share: the requests by id, the pace of
their steps, injected failures, and the asyncio tasks that run them (cancelled on
``close``). ``export.Exports`` and ``creation.Creations`` are the two kinds."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class Background(Generic[R]):
    def __init__(self) -> None:
        self.requests: dict[str, R] = {}
        #: Seconds a request stays queued, and then started, before it ends.
        self.step_seconds = 0.05
        #: task id -> message: that task's next request fails with it.
        self.failures: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background on the running loop."""
        job = asyncio.get_running_loop().create_task(work)
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for job in list(self._tasks):
            job.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
