"""Job status reports from a worker thread, published on the handler's event loop.

A handler runs its long, blocking work (a training, a dataset conversion) in a
thread (``asyncio.to_thread``), and that thread cannot await ``ctx.report``.
``ThreadReports.send`` hands one report to the event loop and returns at once;
``settle()``, awaited by the handler when the work ends, waits a bounded time
for the reports still on their way.

One rule for a report that cannot be written (the bus is down, the status
topic refuses it): it does not stop the work. A status line is not worth a
training of hours or an export; the job's outcome (its event, its final
status) is published by the runner, which has its own retries. The failure is
logged (``status report failed``, with the error) and counted: ``failed`` here
and the Prometheus counter ``preannotate_status_reports_failed_total{service}``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from preannotate.handler import Context
from preannotate.telemetry.metrics import STATUS_REPORTS_FAILED
from preannotate.v1 import events_pb2

#: How long ``settle()`` waits for the reports still on their way.
SETTLE_SECONDS = 10.0


class ThreadReports:
    """Sends ``ctx.report`` calls of one stage (and model) from a worker thread."""

    def __init__(
        self,
        ctx: Context,
        loop: asyncio.AbstractEventLoop,
        *,
        stage: events_pb2.JobStage.ValueType,
        model: Any | None = None,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.ctx, self.loop = ctx, loop
        self.stage, self.model = stage, model
        self.settle_seconds = settle_seconds
        self.failed = 0
        self._pending: set[concurrent.futures.Future[None]] = set()
        self._lock = threading.Lock()

    def send(
        self,
        *,
        message: str,
        progress: events_pb2.Progress | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        """Publish one report (from any thread but the loop's); never raises for the write."""
        report = self.ctx.report(
            stage=self.stage,
            model=self.model,
            message=message,
            progress=progress,
            details=dict(details) if details is not None else None,
        )
        future = asyncio.run_coroutine_threadsafe(report, self.loop)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            return
        with self._lock:
            self.failed += 1
        STATUS_REPORTS_FAILED.labels(service=self.ctx.service).inc()
        self.ctx.log.warning(
            "status report failed",
            error=f"{type(error).__name__}: {error}",
            failed=self.failed,
        )

    async def settle(self) -> None:
        """Wait (at most ``settle_seconds``) for the reports sent; never raises for them.

        Reports still unsent then are dropped (cancelled) and logged.
        """
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return
        waiting = [asyncio.wrap_future(f) for f in pending]
        done, late = await asyncio.wait(waiting, timeout=self.settle_seconds)
        for future in done:  # their failures were logged and counted by _done
            if not future.cancelled():
                future.exception()
        if late:
            for future in late:
                future.cancel()
            self.ctx.log.warning("status reports dropped: still unsent", count=len(late))
