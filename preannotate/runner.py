"""The service runner: builds a process's shared parts, serves, shuts down in order.

``run(spec, settings)`` is every service's entry point in the distributed mode;
``serve([(spec, settings), ...])`` runs several specs in one process (the
embedded mode, over one in-process bus). ``Runtime`` builds the bus, storage
and job status, creates the topics, runs the services' startup hooks, serves
the ops app (``preannotate.ops``), each service's gRPC and HTTP servers, and
one ``preannotate.worker.RouteWorker`` per route.

Access: in the distributed mode (``bus="kafka"``) a service whose gRPC server
would take calls without a token (no ``PREANNOTATE_TOKENS_FILE``) refuses to
start (``SettingsError``) unless ``PREANNOTATE_AUTH=none`` says so; an open
server is logged as a warning once at start and reported as ``"auth": "none"``
by /readyz (the embedded mode, on 127.0.0.1, is open the same way).

One record, then exit: with ``PREANNOTATE_MAX_RECORDS=N`` (``preannotate run
trainer --once`` sets 1) the process's workers take up at most N records between
them (``preannotate.worker.RecordBudget``), fetch no more, and once the last
one is settled (committed, dead-lettered, or left uncommitted by a stop) the
process shuts down as on SIGTERM and ``run`` returns: one Kubernetes Job per
training (deploy/k8s/components/trainer-jobs). With
``PREANNOTATE_MAX_RECORDS_WAIT_SECONDS`` too, a process that took no record
within that time stops the same way, having taken none (a Job started for a
record another Job took). A process that consumes no topic refuses the setting.

SIGTERM: readiness and gRPC health go NOT_SERVING, the workers stop taking
records and let the current one finish (interruptible routes are asked to stop
and leave it uncommitted), then the servers stop, the shutdown hooks run and
the bus closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from preannotate import topics
from preannotate.auth import TokenAuthInterceptor
from preannotate.bus import Bus, TopicSpec, dlq_topic, make_bus
from preannotate.ops import ops_app
from preannotate.service import Resources, ServiceSpec
from preannotate.settings import ENV_PREFIX, ServiceSettings, SettingsError
from preannotate.status import StatusView, StatusWriter
from preannotate.storage import Storage, open_storage
from preannotate.telemetry.logging import configure, get_logger
from preannotate.worker import RecordBudget, RouteWorker


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
        self.open_grpc = check_access(self.services)
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
        self.budget = record_budget(self.services)
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
        if self.open_grpc:
            self._warn_open()
        for spec, settings in self.services:
            await self._start_grpc(spec, settings)
            await self._start_http(spec, settings)
        for spec, settings in self.services:
            for route in spec.routes:
                worker = RouteWorker(
                    spec.name,
                    route,
                    settings,
                    bus=self.bus,
                    storage=self.storage,
                    status_writer=self.status_writer,
                    status_view=self.status_view,
                    budget=self.budget,
                )
                await worker.start()
                self.workers.append(worker)
        self.ready = True
        self.log.info(
            "started",
            services=[s.name for s, _ in self.services],
            grpc=self.grpc_ports,
            http=self.http_ports,
            metrics=self.metrics_port,
            max_records=self.settings.max_records or None,
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

    def _warn_open(self) -> None:
        distributed = self.settings.bus == "kafka"
        self.log.warning(
            ("PREANNOTATE_AUTH=none: " if distributed else "")
            + "gRPC calls are open to anyone who can reach the port: no tokens file "
            "(set PREANNOTATE_TOKENS_FILE to require bearer tokens)",
            services=self.open_grpc,
            bind_host=self.settings.bind_host,
            mode="distributed" if distributed else "embedded",
        )

    async def _start_ops(self) -> None:
        auth = "none" if self.open_grpc else "tokens"
        app = ops_app(lambda: self.ready, {"auth": auth})
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


def check_access(services: Sequence[tuple[ServiceSpec, ServiceSettings]]) -> list[str]:
    """The services whose gRPC server takes calls without a token.

    Raises ``SettingsError`` for such a service in the distributed mode
    (``bus="kafka"``) unless its settings say ``auth="none"``.
    """
    open_grpc = []
    for spec, settings in services:
        if not spec.grpc or any(
            isinstance(i, TokenAuthInterceptor) for i in spec.grpc_interceptors
        ):
            continue
        if settings.bus == "kafka" and settings.auth == "tokens":
            raise SettingsError(
                f"{spec.name}: refusing to serve gRPC without tokens in the distributed mode: "
                f"set {ENV_PREFIX}TOKENS_FILE to a tokens file (see docs/security.md), or "
                f"{ENV_PREFIX}AUTH=none to run open on purpose"
            )
        open_grpc.append(spec.name)
    return open_grpc


def record_budget(services: Sequence[tuple[ServiceSpec, ServiceSettings]]) -> RecordBudget | None:
    """The budget of ``PREANNOTATE_MAX_RECORDS`` (the first service's settings, as for
    the rest of the process); None when it is 0 (no limit)."""
    limit = services[0][1].max_records
    if not limit:
        return None
    if not any(spec.routes for spec, _ in services):
        names = ", ".join(spec.name for spec, _ in services)
        raise SettingsError(
            f"{ENV_PREFIX}MAX_RECORDS={limit} (or --once): {names} consumes no topic, so it "
            f"would never stop; unset it for this service"
        )
    return RecordBudget(limit)


async def serve(
    services: Sequence[tuple[ServiceSpec, ServiceSettings]],
    *,
    bus: Bus | None = None,
    storage: Storage | None = None,
    stop: asyncio.Event | None = None,
    started: asyncio.Future | None = None,
) -> None:
    """Run ``services`` until ``stop`` is set (or SIGTERM/SIGINT when none is given),
    or until the records of ``PREANNOTATE_MAX_RECORDS`` are settled."""
    runtime = Runtime(services, bus=bus, storage=storage)
    stop = stop or _signal_event()
    try:
        await runtime.start()
        if started is not None and not started.done():
            started.set_result(runtime)
        budget = runtime.budget
        if budget is None:
            await stop.wait()
            return
        wait = runtime.settings.max_records_wait_seconds
        idle = asyncio.create_task(_close_when_idle(budget, wait, runtime.log)) if wait else None
        try:
            await _first_set([stop, budget.spent])
        finally:
            if idle is not None:
                idle.cancel()
        if budget.spent.is_set():
            runtime.log.info(
                "record budget spent; stopping", max_records=runtime.settings.max_records
            )
    finally:
        await runtime.stop()


async def _close_when_idle(budget: RecordBudget, wait: float, log: Any) -> None:
    """Close ``budget`` when no record was taken within ``wait`` seconds."""
    try:
        await asyncio.wait_for(budget.taken.wait(), wait)
    except TimeoutError:
        log.info("no record to take; stopping", waited_seconds=wait)
        budget.close()


async def _first_set(events: Sequence[asyncio.Event]) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


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
