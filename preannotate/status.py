"""Job status: snapshots written to the compacted ``job.status`` topic, and the
view that reads them back.

Each record is the whole latest state of one job (key = job id), so after
compaction the topic still tells every job's state, and a restarted gateway
rebuilds its view by reading the topic from the beginning.

A job id belongs to the namespace of its first snapshot: the view ignores a
later one naming another namespace (``merge``), and ``StatusView.claim``
refuses a caller-chosen job id that another namespace (or another kind of
job) already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable

from google.protobuf.message import Message

from preannotate import events, keys, topics
from preannotate.bus.base import Bus
from preannotate.errors import AlreadyExists, BadEvent
from preannotate.storage import Storage
from preannotate.telemetry import metrics
from preannotate.telemetry.logging import get_logger
from preannotate.v1 import events_pb2
from preannotate.v1.events_pb2 import JobStatus

TERMINAL = frozenset(
    {
        events_pb2.JOB_STATE_SUCCEEDED,
        events_pb2.JOB_STATE_FAILED,
        events_pb2.JOB_STATE_CANCELLED,
    }
)


def stage_name(stage: int) -> str:
    return events_pb2.JobStage.Name(stage).removeprefix("JOB_STAGE_").lower()


def state_name(state: int) -> str:
    return events_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def snapshot(
    message: Message,
    *,
    stage: int,
    state: int,
    text: str = "",
    progress: events_pb2.Progress | None = None,
    details: dict[str, str] | None = None,
    model=None,
    kind: int | None = None,
) -> JobStatus:
    """A JobStatus for the job of ``message``, with what the event knows."""
    status = JobStatus(
        job_id=message.job_id,
        namespace=getattr(message, "namespace", ""),
        stage=stage,
        state=state,
        message=text,
    )
    if kind is None:
        kind = (
            events_pb2.JOB_KIND_ANNOTATION
            if isinstance(message, (events_pb2.AnnotationRequested, events_pb2.TaskPreannotated))
            else events_pb2.JOB_KIND_TRAINING
        )
    status.kind = kind
    for field in ("cvat", "training"):
        if message.DESCRIPTOR.fields_by_name.get(field) and message.HasField(field):
            getattr(status, field).CopyFrom(getattr(message, field))
    if model is not None:
        status.model.CopyFrom(model)
    elif message.DESCRIPTOR.fields_by_name.get("model") and message.HasField("model"):
        status.model.CopyFrom(message.model)
    if progress is not None:
        status.progress.CopyFrom(progress)
    if details:
        status.details.update(details)
    return status


class StatusWriter:
    """Publishes JobStatus snapshots for one service."""

    def __init__(self, bus: Bus, source: str) -> None:
        self.bus = bus
        self.source = source

    async def write(self, status: JobStatus) -> None:
        status.source = self.source
        status.updated_at.GetCurrentTime()
        if not status.HasField("created_at"):
            status.created_at.CopyFrom(status.updated_at)
        await events.publish(self.bus, topics.JOB_STATUS, status, source=self.source)


def merge(old: JobStatus | None, new: JobStatus) -> JobStatus | None:
    """The view's state after ``new``; None when ``new`` must be ignored.

    A job that ended stays ended unless a later stage starts (a redelivered
    record cannot take it back); a job never moves to another namespace;
    facts of earlier snapshots (task, training spec, creation time, details)
    carry over when the new one lacks them.
    """
    if old is None:
        return new
    if moves_namespace(old, new):
        return None
    if old.state in TERMINAL and new.state not in TERMINAL and new.stage <= old.stage:
        return None
    merged = JobStatus()
    merged.CopyFrom(new)
    if old.HasField("created_at"):
        merged.created_at.CopyFrom(old.created_at)
    for field in ("cvat", "training", "model"):
        if old.HasField(field) and not new.HasField(field):
            getattr(merged, field).CopyFrom(getattr(old, field))
    details = dict(old.details)
    details.update(new.details)
    merged.details.clear()
    merged.details.update(details)
    if not merged.namespace:
        merged.namespace = old.namespace
    if old.state == events_pb2.JOB_STATE_CANCELLING and new.state not in TERMINAL:
        merged.state = events_pb2.JOB_STATE_CANCELLING  # progress goes on until it stops
        merged.message = old.message
    return merged


def check_claim(known: JobStatus | None, job_id: str, namespace: str, kind: int) -> None:
    """Refuse (AlreadyExists) a ``job_id`` that ``known`` (its status, if any) shows
    held by another namespace or by another kind of job; the same namespace and
    kind may name it again (a retry of the same job). The answer does not say
    which namespace holds it."""
    if known is None:
        return
    if known.namespace != namespace or (known.kind and kind and known.kind != kind):
        raise AlreadyExists(
            f"job id {job_id!r} is taken by another job; choose another job_id, "
            "or leave it empty for a new one"
        )


def claim_job_id(storage: Storage, job_id: str, namespace: str, kind: int) -> None:
    """Hold ``job_id`` for ``namespace`` in storage, or refuse it as ``check_claim`` does.

    The status views know a job once its first status is read back; two callers
    naming one new id at the same instant would both pass them. The record at
    ``keys.job_claim_key`` is created once (``Storage.put_if_absent``, a
    compare-and-swap), so exactly one namespace holds the id; the same namespace
    and kind may name it again. Blocking (async callers use ``asyncio.to_thread``).
    """
    key = keys.job_claim_key(job_id)
    record = {"namespace": namespace, "kind": events_pb2.JobKind.Name(kind)}
    if storage.put_if_absent(key, json.dumps(record, sort_keys=True).encode("utf-8")):
        return
    held = json.loads(storage.get(key))
    holder = JobStatus(job_id=job_id, namespace=str(held.get("namespace", "")))
    kinds = events_pb2.JobKind.keys()
    if held.get("kind") in kinds:
        holder.kind = events_pb2.JobKind.Value(held["kind"])
    check_claim(holder, job_id, namespace, kind)


def moves_namespace(old: JobStatus, new: JobStatus) -> bool:
    """Whether ``new`` would put the job of ``old`` in another namespace."""
    return bool(old.namespace and new.namespace and old.namespace != new.namespace)


class StatusView:
    """Every job's latest status, read from job.status from the beginning."""

    def __init__(self, bus: Bus, *, export_metrics: bool = False) -> None:
        self.bus = bus
        self.export_metrics = export_metrics
        self.jobs: dict[str, JobStatus] = {}
        self._changed = asyncio.Condition()
        self._consumer = None
        self._task: asyncio.Task | None = None
        self.caught_up = asyncio.Event()
        self.log = get_logger(component="status-view")

    async def start(self, wait_caught_up: float = 30.0) -> None:
        self._consumer = self.bus.consumer([topics.JOB_STATUS], None, from_beginning=True)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="status-view")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.caught_up.wait(), wait_caught_up)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            records = await self._consumer.poll(timeout=0.5)
            if not records:
                self.caught_up.set()
                continue
            for record in records:
                try:
                    status = events.decode(record)
                except BadEvent as exc:
                    self.log.warning("bad job.status record skipped", error=str(exc))
                    continue
                await self.apply(status)

    async def apply(self, status: JobStatus) -> None:
        old = self.jobs.get(status.job_id)
        merged = merge(old, status)
        if merged is None:
            if old is not None and moves_namespace(old, status):
                self.log.warning(
                    "job.status record ignored: it would move the job to another namespace",
                    job_id=status.job_id,
                    namespace=old.namespace,
                    record_namespace=status.namespace,
                    source=status.source,
                )
            return
        self.jobs[status.job_id] = merged
        if self.export_metrics:
            if old is not None:
                metrics.JOBS.labels(stage_name(old.stage), state_name(old.state)).dec()
            metrics.JOBS.labels(stage_name(merged.stage), state_name(merged.state)).inc()
        async with self._changed:
            self._changed.notify_all()

    def get(self, job_id: str) -> JobStatus | None:
        return self.jobs.get(job_id)

    def claim(self, job_id: str, namespace: str, kind: int) -> None:
        """``check_claim`` against this view."""
        check_claim(self.jobs.get(job_id), job_id, namespace, kind)

    def list(
        self, namespaces: Iterable[str] | None = None, states: Iterable[int] = ()
    ) -> list[JobStatus]:
        ns = set(namespaces) if namespaces is not None else None
        wanted = set(states)
        out = [
            s
            for s in self.jobs.values()
            if (ns is None or s.namespace in ns) and (not wanted or s.state in wanted)
        ]
        return sorted(out, key=lambda s: (s.created_at.seconds, s.created_at.nanos, s.job_id))

    def cancel_requested(self, job_id: str) -> bool:
        s = self.jobs.get(job_id)
        return s is not None and s.state in (
            events_pb2.JOB_STATE_CANCELLING,
            events_pb2.JOB_STATE_CANCELLED,
        )

    async def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Yield the job's status now and at every change, until it ends."""
        last = None
        while True:
            current = self.jobs.get(job_id)
            if current is not None and current != last:
                last = JobStatus()
                last.CopyFrom(current)
                yield last
                if current.state in TERMINAL:
                    return
            async with self._changed:
                if self.jobs.get(job_id) == last:
                    await self._changed.wait()
