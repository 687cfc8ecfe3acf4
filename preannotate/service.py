"""What a service is, for the runner: its routes, servers and hooks.

Each ``services/<name>/service.py`` has ``build(settings) -> ServiceSpec``; the
distributed entry point (``preannotate run <name>``) runs one spec in its own
process over Kafka, the embedded mode (``preannotate up``) runs all five in one
process over the in-process bus. The spec holds no clients: the runner hands
the bus and storage to ``startup`` and to every handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from preannotate.bus.base import Bus
from preannotate.handler import Route
from preannotate.storage.base import Storage


@dataclass
class Resources:
    """What the runner built and shares with a service's hooks."""

    bus: Bus
    storage: Storage
    #: The job.status view (preannotate.status.StatusView), fed by the runner.
    status_view: Any = None
    #: Publishes a JobStatus snapshot (preannotate.status.StatusWriter).
    status_writer: Any = None


@dataclass
class GrpcService:
    """A servicer and the generated ``add_*Servicer_to_server`` that mounts it."""

    servicer: Any
    add_to_server: Callable[[Any, Any], None]
    #: Full service name for health and reflection, e.g. "preannotate.v1.TrainingService".
    name: str


@dataclass
class ServiceSpec:
    name: str
    routes: list[Route] = field(default_factory=list)
    #: Awaited once the bus and storage are up, before consuming starts.
    startup: Callable[[Resources], Awaitable[None]] | None = None
    #: Awaited after consuming has stopped.
    shutdown: Callable[[], Awaitable[None]] | None = None
    grpc: list[GrpcService] = field(default_factory=list)
    grpc_port: int | None = None
    #: aiohttp route tables served on ``http_port`` (webhooks, Nuclio API).
    http_routes: list[Any] = field(default_factory=list)
    http_port: int | None = None
    #: gRPC server interceptors (auth), applied to this service's server.
    grpc_interceptors: list[Any] = field(default_factory=list)
    #: Paths of TLS cert and key for the gRPC server; None for plaintext.
    grpc_tls: tuple[str, str] | None = None
