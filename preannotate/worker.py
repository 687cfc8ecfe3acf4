"""The record worker: one route's topic consumed, each record handled once.

A ``RouteWorker`` is a member of its route's consumer group. For each record it:

1. decodes it (a record that does not decode goes to ``<topic>.dlq``);
2. with ``Route.once``, looks the (job id, stage) up in the ledger: a
   redelivered record whose work is done is only re-published;
3. calls the handler with a ``RecordContext``; if it runs longer than
   ``keepalive_seconds`` it pauses the partitions and keeps polling, so the
   member never leaves its group;
4. on success writes the job's status, records the outcome in the ledger,
   publishes it and commits; a retryable error backs off and retries; any
   other error goes to the DLQ once with the error in its headers, the job is
   marked FAILED, and the consumer carries on.

On ``stop`` it takes no new record and lets the current one finish
(interruptible handlers are asked to stop and leave it uncommitted). The
worker gets the bus, storage and job status it needs; starting and stopping
workers in order is ``preannotate.runner``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import structlog
from google.protobuf.message import Message

from preannotate import events, topics
from preannotate.bus.base import Bus, CommitFailed, Record
from preannotate.errors import BadEvent, Cancelled, Interrupted, PreannotateError, is_retryable
from preannotate.handler import Outcome, Route
from preannotate.keys import check_name
from preannotate.ledger import Entry, Ledger
from preannotate.settings import ServiceSettings
from preannotate.status import StatusView, StatusWriter, snapshot, stage_name
from preannotate.storage.base import Storage
from preannotate.telemetry import metrics
from preannotate.telemetry.logging import get_logger
from preannotate.v1 import events_pb2

MAX_BACKOFF_SECONDS = 60.0

T = TypeVar("T")


class RecordContext:
    """What a handler gets for one record (see ``preannotate.handler.Context``)."""

    def __init__(self, worker: RouteWorker, record: Record, message: Message, log: Any) -> None:
        self.worker = worker
        self.service = worker.service
        self.bus = worker.bus
        self.storage = worker.storage
        self.record = record
        self.message = message
        self.log = log
        self.closed = False

    async def report(
        self,
        *,
        stage: int,
        state: int = events_pb2.JOB_STATE_RUNNING,
        message: str = "",
        progress: events_pb2.Progress | None = None,
        details: dict[str, str] | None = None,
        model: Any | None = None,
    ) -> None:
        if self.closed or not self.worker.route.status:
            return  # settled (a late progress line must not undo it), or an observer route
        await self.worker.status_writer.write(
            snapshot(
                self.message,
                stage=stage,
                state=state,
                text=message,
                progress=progress,
                details=details,
                model=model,
            )
        )

    def cancel_requested(self) -> bool:
        return self.worker.cancel_requested(self.message.job_id)

    def stop_requested(self) -> bool:
        """True when the service is shutting down (interruptible routes stop early)."""
        return self.worker.stopping.is_set()

    async def publish(self, topic: str, message: Message) -> str:
        event_id = await events.publish(self.bus, topic, message, source=self.service)
        metrics.EVENTS_PUBLISHED.labels(self.service, topic).inc()
        return event_id


class RouteWorker:
    """Consumes one route's topic as a member of the route's group."""

    def __init__(
        self,
        service: str,
        route: Route,
        settings: ServiceSettings,
        *,
        bus: Bus,
        storage: Storage,
        status_writer: StatusWriter,
        status_view: StatusView | None = None,
    ) -> None:
        self.service = service
        self.route = route
        self.settings = settings
        self.bus = bus
        self.storage = storage
        self.status_writer = status_writer
        self.status_view = status_view
        self.ledger = Ledger(storage)
        self.group = route.group or f"preannotate-{service}"
        self.stage = stage_name(route.stage)
        self.consumer = (
            bus.consumer([route.topic], None, from_beginning=False)
            if route.broadcast
            else bus.consumer([route.topic], self.group)
        )
        self.stopping = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.log = get_logger(topic=route.topic, group=self.group)
        self._stash: list[Record] = []

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._loop(), name=f"{self.service}:{self.route.topic}")

    async def stop(self, grace: float) -> None:
        self.stopping.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), grace)
            except TimeoutError:
                self.log.warning("record still running after the grace period; leaving it")
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
        await self.consumer.stop()

    def cancel_requested(self, job_id: str) -> bool:
        return self.status_view is not None and self.status_view.cancel_requested(job_id)

    def namespace(self, message: Message) -> str:
        """The message's namespace, or the service's when the message names none."""
        return getattr(message, "namespace", "") or self.settings.namespace

    async def _loop(self) -> None:
        while not self.stopping.is_set():
            if self._stash:
                records, self._stash = self._stash, []
            else:
                records = await self.consumer.poll(timeout=0.5)
                self._export_lag()
            for record in records:
                if self.stopping.is_set():
                    break  # left uncommitted: the next owner gets it
                if not self.consumer.owns(record):
                    continue  # revoked mid-batch: the new owner has it
                try:
                    await self.process(record)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the loop must outlive any one record
                    self.log.exception("record not settled", offset=record.offset)

    def _export_lag(self) -> None:
        for (topic, partition), n in self.consumer.lag().items():
            metrics.CONSUMER_LAG.labels(self.service, topic, str(partition)).set(n)

    async def process(self, record: Record) -> None:
        topic = self.route.topic
        metrics.EVENTS_CONSUMED.labels(self.service, topic).inc()
        try:
            message = events.decode(record)
            check_name(self.namespace(message), "namespace")
        except BadEvent as exc:
            await self._dead_letter(record, exc, None)
            return
        with structlog.contextvars.bound_contextvars(
            job_id=message.job_id, event_id=record.event_id, topic=topic
        ):
            log = get_logger()
            await self._process(record, message, log)

    async def _process(self, record: Record, message: Message, log: Any) -> None:
        topic = self.route.topic
        namespace = self.namespace(message)
        if self.route.once:
            done = await asyncio.to_thread(self.ledger.read, namespace, message.job_id, self.stage)
            if done is not None:
                log.info("duplicate: stage already done for this job; re-publishing only")
                metrics.EVENTS_DUPLICATE.labels(self.service, topic).inc()
                await self._publish(done)
                await self._commit(record, log)
                return
        if self.route.status and self.cancel_requested(message.job_id):
            log.info("job was cancelled before this stage started; skipping")
            await self._status(message, events_pb2.JOB_STATE_CANCELLED, "cancelled by request")
            await self._commit(record, log)
            return

        attempt = 0
        while True:
            attempt += 1
            ctx = RecordContext(self, record, message, log)
            started = time.perf_counter()
            metrics.HANDLER_IN_FLIGHT.labels(self.service, topic).inc()
            try:
                outcome = await self._keepalive(self.route.handler(message, ctx))
            except BaseException as exc:
                ctx.closed = True
                metrics.HANDLER_IN_FLIGHT.labels(self.service, topic).dec()
                metrics.EVENTS_FAILED.labels(self.service, topic, type(exc).__name__).inc()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if isinstance(exc, Interrupted) or (self.stopping.is_set() and is_retryable(exc)):
                    log.info("interrupted by shutdown; left for redelivery", error=str(exc))
                    return
                if isinstance(exc, Cancelled):
                    await self._status(
                        message, events_pb2.JOB_STATE_CANCELLED, str(exc) or "cancelled"
                    )
                    await self._commit(record, log)
                    return
                if is_retryable(exc) and attempt < self.settings.retry_attempts:
                    delay = min(
                        MAX_BACKOFF_SECONDS,
                        self.settings.retry_backoff_seconds * 2 ** (attempt - 1),
                    )
                    log.warning(
                        "retryable failure; backing off",
                        error=str(exc),
                        attempt=attempt,
                        delay=delay,
                    )
                    await self._keepalive(asyncio.sleep(delay))
                    continue
                if not isinstance(exc, PreannotateError):
                    log.error("handler crashed", exc_info=exc)
                await self._dead_letter(record, exc, message)
                return
            ctx.closed = True
            metrics.HANDLER_IN_FLIGHT.labels(self.service, topic).dec()
            metrics.HANDLER_SECONDS.labels(self.service, topic).observe(
                time.perf_counter() - started
            )
            break

        outcome = outcome or Outcome.nothing()
        entries = [Entry(e.topic, e.message, str(uuid.uuid4())) for e in outcome.emits]
        # the status and the ledger entry go out together; both before the events
        durable = [self._final_status(message, outcome)]
        if self.route.once:
            durable.append(
                asyncio.to_thread(self.ledger.write, namespace, message.job_id, self.stage, entries)
            )
        await asyncio.gather(*durable)
        await self._publish(entries)
        await self._commit(record, log)

    async def _keepalive(self, aw: Awaitable[T]) -> T:
        """Await ``aw``; past ``keepalive_seconds`` pause and keep polling until it ends."""
        task = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.settings.keepalive_seconds)
            if not done:
                self.consumer.pause()
                try:
                    while not task.done():
                        await asyncio.wait({task}, timeout=1.0)
                        extra = await self.consumer.poll(timeout=0)
                        self._stash.extend(extra)  # none expected while paused; kept if any
                finally:
                    self.consumer.resume()
            return task.result()
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def _final_status(self, message: Message, outcome: Outcome) -> None:
        if not self.route.status:
            return
        if outcome.final_state is not None:
            await self._status(message, outcome.final_state, outcome.final_message)
            return
        for emit in outcome.emits:
            if emit.topic == topics.JOB_STATUS:
                continue
            nxt = topics.stage_consuming(emit.topic)
            if nxt is None:
                await self._status(
                    message, events_pb2.JOB_STATE_SUCCEEDED, outcome.final_message or "done"
                )
            else:
                await self.status_writer.write(
                    snapshot(
                        message,
                        stage=nxt,
                        state=events_pb2.JOB_STATE_QUEUED,
                        text=outcome.final_message or f"{self.stage} done; queued on {emit.topic}",
                        model=getattr(emit.message, "model", None)
                        if emit.message.DESCRIPTOR.fields_by_name.get("model")
                        and emit.message.HasField("model")
                        else None,
                    )
                )
            return

    async def _status(self, message: Message, state: int, text: str) -> None:
        if not self.route.status:
            return
        await self.status_writer.write(
            snapshot(message, stage=self.route.stage, state=state, text=text)
        )

    async def _publish(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            await events.publish(
                self.bus, e.topic, e.message, source=self.service, event_id=e.event_id
            )
            metrics.EVENTS_PUBLISHED.labels(self.service, e.topic).inc()

    async def _commit(self, record: Record, log: Any) -> None:
        try:
            await self.consumer.commit(record)
        except CommitFailed as exc:
            log.warning("commit refused: partition moved to another member", error=str(exc))

    async def _dead_letter(
        self, record: Record, exc: BaseException, message: Message | None
    ) -> None:
        self.log.error(
            "dead-lettering record",
            offset=record.offset,
            partition=record.partition,
            error=f"{type(exc).__name__}: {exc}",
        )
        await self.bus.dead_letter(record, exc, group=self.group)
        metrics.EVENTS_DEAD_LETTERED.labels(self.service, self.route.topic).inc()
        if message is not None:
            text = (
                str(exc)
                if isinstance(exc, PreannotateError)
                else (f"internal error in {self.service} ({type(exc).__name__}); see its logs")
            )
            await self._status(message, events_pb2.JOB_STATE_FAILED, text)
        await self._commit(record, self.log)
