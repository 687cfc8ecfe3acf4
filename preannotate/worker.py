"""The record worker: one route's topic consumed, each record handled once.

A ``RouteWorker`` is a member of its route's consumer group. For each record it:

1. decodes it (a record that does not decode goes to ``<topic>.dlq``);
2. with ``Route.once``, looks the (job id, stage) up in the ledger: a
   redelivered record whose work is done is only re-published;
3. calls the handler with a ``RecordContext``; if it runs longer than
   ``keepalive_seconds`` it pauses the partitions and keeps polling, so the
   member never leaves its group;
4. on success writes the job's status, records the outcome in the ledger,
   publishes it and commits, all inside the consumer's ``settle`` block (a
   rebalance waits for it); ``Unavailable`` backs off (capped, exponential) and
   retries until ``retry_deadline_seconds`` after its first failure, other
   retryable errors ``retry_attempts`` times; any other error goes to the DLQ
   once with the error in its headers, the job is marked FAILED, and the
   consumer carries on.

When a rebalance takes the partition of the record in flight, the handler is
asked to stop (``ctx.stop_requested()``, as at shutdown) and nothing more is
written for the record: no status, ledger entry, event or commit; the
partition's new owner runs it. On ``stop`` the worker takes no new record and
lets the current one finish (interruptible handlers are asked to stop and leave
it uncommitted). With a ``RecordBudget`` (``PREANNOTATE_MAX_RECORDS``,
``preannotate run --once``) the workers of a process take up at most that many
records between them, and a worker polls no more once the budget is taken. The
worker gets the bus, storage and job status it needs; starting and stopping
workers in order is ``preannotate.runner``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import structlog
from google.protobuf.message import Message

from preannotate import events, topics
from preannotate.bus.base import Bus, CommitFailed, Record
from preannotate.errors import (
    BadEvent,
    Cancelled,
    Interrupted,
    PreannotateError,
    Unavailable,
    is_retryable,
)
from preannotate.handler import Outcome, Route
from preannotate.keys import check_name
from preannotate.ledger import Entry, Ledger
from preannotate.settings import ServiceSettings
from preannotate.status import StatusView, StatusWriter, snapshot, stage_name
from preannotate.storage.base import Storage
from preannotate.telemetry import metrics
from preannotate.telemetry.logging import get_logger
from preannotate.v1 import events_pb2

#: The longest wait between two tries of a failing record.
MAX_BACKOFF_SECONDS = 30.0
#: Characters of an error quoted in a "retrying" job status.
RETRY_TEXT_CHARS = 240

T = TypeVar("T")


def retry_text(exc: BaseException, attempt: int, tries: int | None, delay: float) -> str:
    """The job status while a record waits for its next try: what failed, which try
    comes next (of how many, unless a deadline decides) and when, e.g. "CVAT
    unreachable (connection refused): ...; try 3 of 5 in 8 s"."""
    what = " ".join(str(exc).split()) or type(exc).__name__
    if len(what) > RETRY_TEXT_CHARS:
        what = what[: RETRY_TEXT_CHARS - 3] + "..."
    of = f" of {tries}" if tries else ""
    return f"{what}; try {attempt + 1}{of} in {round(delay, 2):g} s"


class RecordBudget:
    """How many records the workers of one process may take up, all routes together.

    ``spent`` is set once the last allowed record is settled (committed, dead-lettered
    or left uncommitted at a stop or revoke), whatever its outcome, or at ``close``
    when none is in flight.
    """

    def __init__(self, records: int) -> None:
        if records < 1:
            raise ValueError(f"a record budget is at least 1, not {records}")
        self.left = records
        self.open = 0
        self.spent = asyncio.Event()
        #: Set when the first record is taken.
        self.taken = asyncio.Event()

    def take(self) -> bool:
        """Take one record; False when none is left (the record stays uncommitted)."""
        if self.left == 0:
            return False
        self.left -= 1
        self.open += 1
        self.taken.set()
        return True

    def close(self) -> None:
        """Take no more records; spent once those in flight are settled."""
        self.left = 0
        if self.open == 0:
            self.spent.set()

    def settled(self) -> None:
        self.open -= 1
        if self.left == 0 and self.open == 0:
            self.spent.set()


class RecordContext:
    """What a handler gets for one record (see ``preannotate.handler.Context``)."""

    def __init__(
        self,
        worker: RouteWorker,
        record: Record,
        message: Message,
        log: Any,
        revoked: asyncio.Event,
    ) -> None:
        self.worker = worker
        self.service = worker.service
        self.bus = worker.bus
        self.storage = worker.storage
        self.record = record
        self.message = message
        self.log = log
        self.closed = False
        #: Set when a rebalance takes this record's partition from the worker.
        self.revoked = revoked

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
        if self.closed or self.revoked.is_set() or not self.worker.route.status:
            return  # settled or revoked (a late line must not undo it), or an observer route
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
        """True when the service is shutting down or the record's partition went
        to another member (interruptible routes stop early)."""
        return self.worker.stopping.is_set() or self.revoked.is_set()

    async def publish(self, topic: str, message: Message) -> str:
        if self.revoked.is_set():
            raise Interrupted("this record's partition moved to another worker")
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
        budget: RecordBudget | None = None,
    ) -> None:
        self.service = service
        self.budget = budget
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
        #: Records handed out by the consumer and not yet taken up.
        self._queue: deque[Record] = deque()
        #: The partition of the record in flight and the event its loss sets.
        self._in_flight: tuple[tuple[str, int], asyncio.Event] | None = None
        self.consumer.on_lost(self._on_lost)

    async def start(self) -> None:
        metrics.start_route(self.service, self.route.topic)
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

    def _on_lost(self, lost: set[tuple[str, int]]) -> None:
        """A rebalance took ``lost``: drop their records, stop the one in flight."""
        self._queue = deque(r for r in self._queue if (r.topic, r.partition) not in lost)
        if self._in_flight is not None and self._in_flight[0] in lost:
            self._in_flight[1].set()
            self.log.warning("partition of the record in flight revoked; stopping it")
        else:
            self.log.info("partitions revoked", partitions=sorted(lost))

    async def _loop(self) -> None:
        while not self.stopping.is_set():
            if self.budget is not None and self.budget.left == 0:
                break  # the process has taken all it may: fetch no more
            if not self._queue:
                self._queue.extend(await self.consumer.poll(timeout=0.5))
                self._export_lag()
                continue
            record = self._queue.popleft()
            if not self.consumer.owns(record):
                continue  # revoked: the new owner has it
            if self.budget is not None and not self.budget.take():
                break  # another route of the process took the last one
            try:
                await self.process(record)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one record
                self.log.exception("record not settled", offset=record.offset)
            finally:
                if self.budget is not None:
                    self.budget.settled()
        # records still queued are left uncommitted: the next owner gets them

    def _export_lag(self) -> None:
        for (topic, partition), n in self.consumer.lag().items():
            metrics.CONSUMER_LAG.labels(self.service, topic, str(partition)).set(n)

    async def process(self, record: Record) -> None:
        topic = self.route.topic
        metrics.EVENTS_CONSUMED.labels(self.service, topic).inc()
        revoked = asyncio.Event()
        self._in_flight = ((record.topic, record.partition), revoked)
        try:
            try:
                message = events.decode(record)
                check_name(self.namespace(message), "namespace")
            except BadEvent as exc:
                await self._dead_letter(record, exc, None, revoked)
                return
            with structlog.contextvars.bound_contextvars(
                job_id=message.job_id, event_id=record.event_id, topic=topic
            ):
                log = get_logger()
                await self._process(record, message, log, revoked)
        finally:
            self._in_flight = None

    @contextlib.asynccontextmanager
    async def _settle(
        self, record: Record, revoked: asyncio.Event, log: Any
    ) -> AsyncIterator[bool]:
        """The consumer's ``settle`` block; yields False (and logs) for a record
        whose partition this worker lost, even if it was assigned back since."""
        async with self.consumer.settle(record) as owned:
            if not owned or revoked.is_set():
                log.warning(
                    "partition revoked; nothing published, the record is left to its new owner",
                    offset=record.offset,
                    partition=record.partition,
                )
                yield False
            else:
                yield True

    async def _process(
        self, record: Record, message: Message, log: Any, revoked: asyncio.Event
    ) -> None:
        topic = self.route.topic
        namespace = self.namespace(message)
        if self.route.once:
            done = await asyncio.to_thread(self.ledger.read, namespace, message.job_id, self.stage)
            if done is not None:
                async with self._settle(record, revoked, log) as owned:
                    if owned:
                        log.info("duplicate: stage already done for this job; re-publishing only")
                        metrics.EVENTS_DUPLICATE.labels(self.service, topic).inc()
                        await self._publish(done)
                        await self._commit(record, log)
                return
        if self.route.status and self.cancel_requested(message.job_id):
            log.info("job was cancelled before this stage started; skipping")
            await self._cancelled(record, message, "cancelled by request", revoked, log)
            return

        attempt = 0
        unavailable_since: float | None = None  # the first Unavailable of this record
        while True:
            attempt += 1
            ctx = RecordContext(self, record, message, log, revoked)
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
                if revoked.is_set():
                    log.info("stopped: partition revoked; left for its new owner", error=str(exc))
                    return
                if isinstance(exc, Interrupted) or (self.stopping.is_set() and is_retryable(exc)):
                    log.info("interrupted by shutdown; left for redelivery", error=str(exc))
                    return
                if isinstance(exc, Cancelled):
                    await self._cancelled(record, message, str(exc) or "cancelled", revoked, log)
                    return
                if isinstance(exc, Unavailable) and unavailable_since is None:
                    unavailable_since = time.monotonic()
                delay = self._retry_delay(exc, attempt, unavailable_since)
                if delay is not None:
                    log.warning(
                        "retryable failure; backing off",
                        error=str(exc),
                        attempt=attempt,
                        delay=round(delay, 3),
                    )
                    tries = None if unavailable_since is not None else self.settings.retry_attempts
                    await self._status(
                        message,
                        events_pb2.JOB_STATE_RUNNING,
                        retry_text(exc, attempt, tries, delay),
                    )
                    await self._keepalive(self._backoff(delay, message.job_id, revoked))
                    if revoked.is_set() or self.stopping.is_set():
                        log.info("retry abandoned: stopping or partition revoked; left uncommitted")
                        return
                    if self.route.status and self.cancel_requested(message.job_id):
                        await self._cancelled(record, message, "cancelled by request", revoked, log)
                        return
                    continue
                if not isinstance(exc, PreannotateError):
                    log.error("handler crashed", exc_info=exc)
                await self._dead_letter(record, exc, message, revoked)
                return
            ctx.closed = True
            metrics.HANDLER_IN_FLIGHT.labels(self.service, topic).dec()
            metrics.HANDLER_SECONDS.labels(self.service, topic).observe(
                time.perf_counter() - started
            )
            break

        outcome = outcome or Outcome.nothing()
        entries = [Entry(e.topic, e.message, str(uuid.uuid4())) for e in outcome.emits]
        async with self._settle(record, revoked, log) as owned:
            if not owned:
                return
            # the status and the ledger entry go out together; both before the events
            durable = [self._final_status(message, outcome)]
            if self.route.once:
                durable.append(
                    asyncio.to_thread(
                        self.ledger.write, namespace, message.job_id, self.stage, entries
                    )
                )
            await asyncio.gather(*durable)
            await self._publish(entries)
            await self._commit(record, log)

    def _retry_delay(
        self, exc: BaseException, attempt: int, unavailable_since: float | None
    ) -> float | None:
        """Seconds to wait before trying ``exc``'s record again; None: give up.

        ``Unavailable`` is retried until ``retry_deadline_seconds`` after its first
        failure (a dependency restarting); other retryable errors
        ``retry_attempts`` times. The wait doubles from ``retry_backoff_seconds``
        up to ``MAX_BACKOFF_SECONDS``.
        """
        if not is_retryable(exc):
            return None
        backoff = min(
            MAX_BACKOFF_SECONDS, self.settings.retry_backoff_seconds * 2 ** min(attempt - 1, 20)
        )
        if isinstance(exc, Unavailable) and unavailable_since is not None:
            left = self.settings.retry_deadline_seconds - (time.monotonic() - unavailable_since)
            return min(backoff, left) if left > 0 else None
        return backoff if attempt < self.settings.retry_attempts else None

    async def _backoff(self, delay: float, job_id: str, revoked: asyncio.Event) -> None:
        """Wait ``delay`` seconds; end early on stop, revoke or a cancel request."""
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        waiters = {
            asyncio.ensure_future(self.stopping.wait()),
            asyncio.ensure_future(revoked.wait()),
        }
        try:
            while (left := end - loop.time()) > 0:
                if self.route.status and self.cancel_requested(job_id):
                    return
                done, _ = await asyncio.wait(
                    waiters, timeout=min(left, 1.0), return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    return
        finally:
            for waiter in waiters:
                waiter.cancel()

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
                        self._queue.extend(extra)  # none expected while paused; kept if any
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

    async def _cancelled(
        self, record: Record, message: Message, text: str, revoked: asyncio.Event, log: Any
    ) -> None:
        async with self._settle(record, revoked, log) as owned:
            if owned:
                await self._status(message, events_pb2.JOB_STATE_CANCELLED, text)
                await self._commit(record, log)

    async def _dead_letter(
        self,
        record: Record,
        exc: BaseException,
        message: Message | None,
        revoked: asyncio.Event,
    ) -> None:
        async with self._settle(record, revoked, self.log) as owned:
            if not owned:
                return
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
