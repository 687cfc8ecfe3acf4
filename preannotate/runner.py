"""The service runner: wires handlers to topics, serves gRPC and HTTP, shuts down in order.

``run(spec, settings)`` is every service's entry point in the distributed mode;
``serve([(spec, settings), ...])`` runs several specs in one process (the
embedded mode, over one in-process bus). For each record the runner:

1. decodes it (a record that does not decode goes to ``<topic>.dlq``);
2. with ``Route.once``, looks the (job id, stage) up in the ledger: a
   redelivered record whose work is done is only re-published;
3. calls the handler; if it runs longer than ``keepalive_seconds`` it pauses
   the partitions and keeps polling, so the member never leaves its group;
4. on success writes the job's status, records the outcome in the ledger,
   publishes it and commits; a retryable error backs off and retries; any
   other error goes to the DLQ once with the error in its headers, the job is
   marked FAILED, and the consumer carries on.

SIGTERM: stop taking records, let the current one finish (interruptible
routes are asked to stop and leave it uncommitted), commit, stop the servers,
close the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web
from google.protobuf.message import Message

from preannotate import events, topics
from preannotate.bus import Bus, CommitFailed, Record, TopicSpec, dlq_topic, make_bus
from preannotate.errors import BadEvent, Cancelled, Interrupted, PreannotateError, is_retryable
from preannotate.handler import Outcome, Route
from preannotate.keys import check_name
from preannotate.ledger import Entry, Ledger
from preannotate.service import Resources, ServiceSpec
from preannotate.settings import ServiceSettings
from preannotate.status import StatusView, StatusWriter, snapshot, stage_name
from preannotate.storage import Storage, open_storage
from preannotate.telemetry import metrics
from preannotate.telemetry.logging import configure, get_logger
from preannotate.v1 import events_pb2

MAX_BACKOFF_SECONDS = 60.0


class RecordContext:
    """What a handler gets for one record (see ``preannotate.handler.Context``)."""

    def __init__(self, worker: RouteWorker, record: Record, message: Message, log) -> None:
        self.worker = worker
        self.service = worker.service
        self.bus = worker.runtime.bus
        self.storage = worker.runtime.storage
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
        await self.worker.runtime.status_writer.write(
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
        view = self.worker.runtime.status_view
        return view is not None and view.cancel_requested(self.message.job_id)

    def stop_requested(self) -> bool:
        """True when the service is shutting down (interruptible routes stop early)."""
        return self.worker.stopping.is_set()

    async def publish(self, topic: str, message: Message) -> str:
        event_id = await events.publish(self.bus, topic, message, source=self.service)
        metrics.EVENTS_PUBLISHED.labels(self.service, topic).inc()
        return event_id


class RouteWorker:
    """Consumes one route's topic as a member of the route's group."""

    def __init__(self, runtime: Runtime, spec: ServiceSpec, route: Route, settings) -> None:
        self.runtime = runtime
        self.service = spec.name
        self.route = route
        self.settings = settings
        self.group = route.group or f"preannotate-{spec.name}"
        self.stage = stage_name(route.stage)
        self.consumer = (
            runtime.bus.consumer([route.topic], None, from_beginning=False)
            if route.broadcast
            else runtime.bus.consumer([route.topic], self.group)
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
        lag = getattr(self.consumer, "lag", None)
        if lag is None:
            return
        for (topic, partition), n in lag().items():
            metrics.CONSUMER_LAG.labels(self.service, topic, str(partition)).set(n)

    async def process(self, record: Record) -> None:
        topic = self.route.topic
        metrics.EVENTS_CONSUMED.labels(self.service, topic).inc()
        try:
            message = events.decode(record)
            check_name(getattr(message, "namespace", "") or "default", "namespace")
        except BadEvent as exc:
            await self._dead_letter(record, exc, None)
            return
        with structlog.contextvars.bound_contextvars(
            job_id=message.job_id, event_id=record.event_id, topic=topic
        ):
            log = get_logger()
            await self._process(record, message, log)

    async def _process(self, record: Record, message: Message, log) -> None:
        topic = self.route.topic
        namespace = getattr(message, "namespace", "") or "default"
        ledger = Ledger(self.runtime.storage)
        if self.route.once:
            done = await asyncio.to_thread(ledger.read, namespace, message.job_id, self.stage)
            if done is not None:
                log.info("duplicate: stage already done for this job; re-publishing only")
                metrics.EVENTS_DUPLICATE.labels(self.service, topic).inc()
                await self._publish(done)
                await self._commit(record, log)
                return
        view = self.runtime.status_view
        if self.route.status and view is not None and view.cancel_requested(message.job_id):
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
                asyncio.to_thread(ledger.write, namespace, message.job_id, self.stage, entries)
            )
        await asyncio.gather(*durable)
        await self._publish(entries)
        await self._commit(record, log)

    async def _keepalive(self, aw):
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
                await self.runtime.status_writer.write(
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
        await self.runtime.status_writer.write(
            snapshot(message, stage=self.route.stage, state=state, text=text)
        )

    async def _publish(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            await events.publish(
                self.runtime.bus, e.topic, e.message, source=self.service, event_id=e.event_id
            )
            metrics.EVENTS_PUBLISHED.labels(self.service, e.topic).inc()

    async def _commit(self, record: Record, log) -> None:
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
        await self.runtime.bus.dead_letter(record, exc, group=self.group)
        metrics.EVENTS_DEAD_LETTERED.labels(self.service, self.route.topic).inc()
        if message is not None:
            text = (
                str(exc)
                if isinstance(exc, PreannotateError)
                else (f"internal error in {self.service} ({type(exc).__name__}); see its logs")
            )
            await self._status(message, events_pb2.JOB_STATE_FAILED, text)
        await self._commit(record, self.log)


class Runtime:
    """The process's shared parts: bus, storage, status, servers."""

    def __init__(
        self,
        services: Sequence[tuple[ServiceSpec, ServiceSettings]],
        *,
        bus: Bus | None = None,
        storage: Storage | None = None,
        status_view: bool = True,
    ) -> None:
        if not services:
            raise ValueError("no services to run")
        self.services = list(services)
        first = self.services[0][1]
        self.settings = first
        self.bus = bus or make_bus(first)
        self._own_bus = bus is None
        self.storage = storage or open_storage(first)
        self.status_writer = StatusWriter(self.bus, "+".join(s.name for s, _ in self.services))
        self.status_view = (
            StatusView(self.bus, export_metrics=any(s.name == "gateway" for s, _ in self.services))
            if status_view
            else None
        )
        self.workers: list[RouteWorker] = []
        self.grpc_servers: dict[str, Any] = {}
        self.grpc_ports: dict[str, int] = {}
        self.http_runners: list[web.AppRunner] = []
        self.http_ports: dict[str, int] = {}
        self.metrics_port: int | None = None
        self.ready = False
        self.health: dict[str, Any] = {}
        self.log = get_logger(component="runner")

    def topic_specs(self) -> list[TopicSpec]:
        parts = self.settings.kafka_partitions
        pools: set[str] = set()
        for _spec, s in self.services:
            pools.update(s.pools())
        names = set(topics.all_topics(sorted(pools)))
        for spec, _ in self.services:
            names.update(r.topic for r in spec.routes)
        out = []
        for name in sorted(names):
            out.append(TopicSpec(name, parts, compacted=name in topics.COMPACTED))
            out.append(TopicSpec(dlq_topic(name), parts))
        return out

    async def start(self) -> None:
        if self._own_bus:
            await self.bus.start()
        await self.bus.ensure_topics(self.topic_specs())
        if self.status_view is not None:
            await self.status_view.start()
        resources = Resources(
            bus=self.bus,
            storage=self.storage,
            status_view=self.status_view,
            status_writer=self.status_writer,
        )
        for spec, _settings in self.services:
            if spec.startup is not None:
                await spec.startup(resources)
        await self._start_ops()
        for spec, settings in self.services:
            await self._start_grpc(spec, settings)
            await self._start_http(spec, settings)
        for spec, settings in self.services:
            for route in spec.routes:
                worker = RouteWorker(self, spec, route, settings)
                await worker.start()
                self.workers.append(worker)
        self.ready = True
        self.log.info(
            "started",
            services=[s.name for s, _ in self.services],
            grpc=self.grpc_ports,
            http=self.http_ports,
            metrics=self.metrics_port,
        )

    async def stop(self) -> None:
        """Shut down in order: health, consumers (finish, commit), servers, hooks, bus."""
        self.ready = False
        for health in self.health.values():
            await health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_seconds
        await asyncio.gather(*(w.stop(grace) for w in self.workers), return_exceptions=True)
        for server in self.grpc_servers.values():
            await server.stop(5)
        for runner in self.http_runners:
            await runner.cleanup()
        for spec, _ in self.services:
            if spec.shutdown is not None:
                try:
                    await spec.shutdown()
                except Exception:
                    self.log.exception("shutdown hook failed", service=spec.name)
        if self.status_view is not None:
            await self.status_view.stop()
        if self._own_bus:
            await self.bus.stop()
        self.log.info("stopped")

    async def _start_ops(self) -> None:
        async def metrics_view(_request):
            body, content_type = metrics.exposition()
            return web.Response(body=body, headers={"Content-Type": content_type})

        async def healthz(_request):
            return web.json_response({"status": "alive"})

        async def readyz(_request):
            return web.json_response(
                {"status": "ready" if self.ready else "not ready"},
                status=200 if self.ready else 503,
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics_view)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        self.metrics_port = await self._serve_app(app, self.settings.metrics_port)

    async def _serve_app(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.bind_host, port)
        await site.start()
        self.http_runners.append(runner)
        return runner.addresses[0][1]

    async def _start_http(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        if not spec.http_routes:
            return
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for table in spec.http_routes:
            app.add_routes(table)
        self.http_ports[spec.name] = await self._serve_app(app, spec.http_port or 0)

    async def _start_grpc(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        if not spec.grpc:
            return
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_health.v1._async import HealthServicer
        from grpc_reflection.v1alpha import reflection

        server = grpc.aio.server(
            interceptors=list(spec.grpc_interceptors),
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        for svc in spec.grpc:
            svc.add_to_server(svc.servicer, server)
            names.append(svc.name)
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
        address = f"{settings.bind_host}:{spec.grpc_port or 0}"
        if spec.grpc_tls:
            cert, key = spec.grpc_tls
            with open(cert, "rb") as c, open(key, "rb") as k:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        await server.start()
        for name in ["", *names]:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.grpc_servers[spec.name] = server
        self.grpc_ports[spec.name] = port
        self.health[spec.name] = health


async def serve(
    services: Sequence[tuple[ServiceSpec, ServiceSettings]],
    *,
    bus: Bus | None = None,
    storage: Storage | None = None,
    stop: asyncio.Event | None = None,
    started: asyncio.Future | None = None,
) -> None:
    """Run ``services`` until ``stop`` is set (or SIGTERM/SIGINT when none is given)."""
    runtime = Runtime(services, bus=bus, storage=storage)
    stop = stop or _signal_event()
    try:
        await runtime.start()
        if started is not None and not started.done():
            started.set_result(runtime)
        await stop.wait()
    finally:
        await runtime.stop()


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
    return event


def run(spec: ServiceSpec, settings: ServiceSettings) -> None:
    """Run one service in this process until SIGTERM or SIGINT."""
    configure(spec.name, settings.log_level, settings.log_format)
    asyncio.run(serve([(spec, settings)]))
