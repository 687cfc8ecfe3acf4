"""What a service handler is, and what it gets.

A service wires each topic it consumes to one handler with a ``Route``; the
runner gives each route a worker (``preannotate.worker``) that consumes,
decodes, calls the handler, publishes what it returns, and commits. A handler::

    async def handle(message: DatasetExported, ctx: Context) -> Outcome:
        ...                      # domain work; ctx.report(...) for progress
        return Outcome.emit(topics.MODEL_TRAINED, ModelTrained(...))

Raising ``errors.PreannotateError`` subclasses decides what happens: a
retryable error (``Unavailable``) backs off and retries; any other goes to the
topic's DLQ once and marks the job FAILED with the message; ``Cancelled`` marks
it CANCELLED. With ``Route.once`` (the default) the runner records the outcome
of each (job id, stage) in storage before publishing it, so a redelivered
record is recognised and only re-publishes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message

from preannotate.bus.base import Bus, Record
from preannotate.storage.base import Storage
from preannotate.v1 import events_pb2


@dataclass(frozen=True)
class Emit:
    topic: str
    message: Message


@dataclass(frozen=True)
class Outcome:
    """Events to publish once the handler's output is durable."""

    emits: tuple[Emit, ...] = ()
    #: The job's status after this stage (None: the runner leaves it as the
    #: handler last reported it).
    final_state: int | None = None
    final_message: str = ""

    @classmethod
    def emit(cls, topic: str, message: Message, **kwargs: Any) -> Outcome:
        return cls(emits=(Emit(topic, message),), **kwargs)

    @classmethod
    def nothing(cls) -> Outcome:
        return cls()


class Context(Protocol):
    """Per-record services for a handler."""

    service: str
    bus: Bus
    storage: Storage
    record: Record
    log: Any  # a structlog BoundLogger with service, job_id and event_id bound

    async def report(
        self,
        *,
        stage: events_pb2.JobStage.ValueType,
        state: events_pb2.JobState.ValueType = events_pb2.JOB_STATE_RUNNING,
        message: str = "",
        progress: events_pb2.Progress | None = None,
        details: dict[str, str] | None = None,
        model: Any | None = None,
    ) -> None:
        """Publish a JobStatus snapshot for this record's job on job.status."""

    def cancel_requested(self) -> bool:
        """Whether a user asked to cancel this record's job."""

    def stop_requested(self) -> bool:
        """Whether the service is shutting down: a long handler may stop early
        (checkpoint, then raise ``errors.Interrupted``) and the record is left
        for redelivery."""

    async def publish(self, topic: str, message: Message) -> str:
        """Publish now (not recorded for redelivery): for side events only."""


Handler = Callable[[Message, Context], Awaitable["Outcome | None"]]


@dataclass(frozen=True)
class Route:
    """One topic wired to one handler."""

    topic: str
    handler: Handler
    #: The job stage this route performs (for status and the once-ledger).
    stage: events_pb2.JobStage.ValueType
    #: Record each job's outcome and act on a redelivered record only once.
    once: bool = True
    #: Consumer group; default ``preannotate-<service>``.
    group: str | None = None
    #: Every process hears every record (no group; read from the end, nothing
    #: committed): for per-process state such as the models an inference
    #: replica has loaded.
    broadcast: bool = False
    #: Whether this route's outcomes and failures update the job's status
    #: (off for routes that only observe a job, like registering its model).
    status: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
