"""Job status reports from a worker thread, published on the handler's event loop.

A handler runs its long, blocking work (a training, a dataset conversion) in a
thread (``asyncio.to_thread``), and that thread cannot await ``ctx.report``.
``ThreadReports.send`` hands one report to the event loop and returns at once;
``settle()``, awaited by the handler when the work ends, waits a bounded time
for the reports still on their way.

At most one report is on its way at a time: a report sent while another is in
flight waits, and a newer one replaces it (``coalesced`` counts those). A
status is a snapshot, so only the newest matters; a bus that is slow or down
then sees one write at a time instead of one per training step (a broker
outage used to queue a write, and a log line, per step).

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
        #: Reports replaced by a newer one before they were sent.
        self.coalesced = 0
        self._in_flight: concurrent.futures.Future[None] | None = None
        self._waiting: dict[str, Any] | None = None
        # Re-entrant: a report that finishes before its callback is added runs
        # ``_done`` at once, in the thread that holds the lock.
        self._lock = threading.RLock()

    def send(
        self,
        *,
        message: str,
        progress: events_pb2.Progress | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        """Publish one report (from any thread but the loop's); never raises for the write."""
        fields = {
            "message": message,
            "progress": progress,
            "details": dict(details) if details is not None else None,
        }
        with self._lock:
            if self._in_flight is not None:
                if self._waiting is not None:
                    self.coalesced += 1
                self._waiting = fields
                return
            self._start(fields)

    def _start(self, fields: dict[str, Any]) -> None:
        """Send ``fields`` now (the lock is held)."""
        report = self.ctx.report(stage=self.stage, model=self.model, **fields)
        future = asyncio.run_coroutine_threadsafe(report, self.loop)
        self._in_flight = future
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            if self._in_flight is future:
                self._in_flight = None
                following, self._waiting = self._waiting, None
                if following is not None and not future.cancelled():
                    self._start(following)
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
        deadline = self.loop.time() + self.settle_seconds
        while True:
            with self._lock:
                current = self._in_flight
            if current is None:
                return
            left = deadline - self.loop.time()
            if left > 0:
                await asyncio.wait([asyncio.wrap_future(current)], timeout=left)
                if current.done():
                    continue  # its failure was logged and counted by _done
            with self._lock:
                dropped = 1 + (self._waiting is not None)
                self._waiting = None
            current.cancel()
            self.ctx.log.warning("status reports dropped: still unsent", count=dropped)
            return
