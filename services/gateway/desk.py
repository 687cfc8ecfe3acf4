"""The job desk: how the gateway starts a job, once, whatever asks twice.

Both doors (CVAT webhooks and TrainingService) end here. A job id is derived
from the request (the delivery, or the caller's request_id), so asking again
finds the same job: ``submit`` looks in the job.status view (which a restarted
gateway rebuilds from the compacted topic) and in the memory of this process's
recent submissions. A new job has its event published first and its QUEUED
status written next: if publishing fails nothing is known of the job, the
caller hears UNAVAILABLE and may ask again; if only the status write fails the
job goes on (its next stage reports on it). A job published twice (a retry
after such a failure) is acted on once: every stage keeps a ledger per job id.
A job id held by another namespace (or kind of job) is refused, never reused.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

from google.protobuf.message import Message

from preannotate import events
from preannotate.errors import Unavailable
from preannotate.status import StatusView, StatusWriter, check_claim, claim_job_id
from preannotate.storage import Storage
from preannotate.telemetry.logging import get_logger
from preannotate.v1.events_pb2 import JobStatus

SOURCE = "gateway"


class RecentJobs:
    """Job ids submitted by this process in the last ``window`` seconds (at most ``limit``)."""

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self.limit = limit
        self._items: OrderedDict[str, tuple[float, JobStatus]] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._items:
            key, (stamp, _) = next(iter(self._items.items()))
            if now - stamp <= self.window and len(self._items) <= self.limit:
                break
            del self._items[key]

    def get(self, job_id: str) -> JobStatus | None:
        now = time.monotonic()
        self._expire(now)
        item = self._items.get(job_id)
        return None if item is None else item[1]

    def put(self, job_id: str, status: JobStatus) -> None:
        now = time.monotonic()
        self._items[job_id] = (now, status)
        self._items.move_to_end(job_id)
        self._expire(now)

    def forget(self, job_id: str) -> None:
        self._items.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Submission:
    job_id: str
    status: JobStatus
    #: False when the request was known already (a retry or a duplicate delivery).
    created: bool


class JobDesk:
    """Starts jobs: publishes their first event and writes their first status."""

    def __init__(
        self,
        *,
        bus,
        status_view: StatusView,
        status_writer: StatusWriter,
        recent: RecentJobs,
        storage: Storage | None = None,
    ) -> None:
        self.bus = bus
        #: Where a new job id is held for its namespace (``claim_job_id``); None: views only.
        self.storage = storage
        self.view = status_view
        self.writer = status_writer
        self.recent = recent
        self.log = get_logger(component="desk")

    def known(self, job_id: str) -> JobStatus | None:
        """The job's latest status if it exists (the view first, then this process's memory)."""
        return self.view.get(job_id) or self.recent.get(job_id)

    async def submit(self, status: JobStatus, topic: str, event: Message) -> Submission:
        """Publish the job's first event, then its first status; once per job id."""
        job_id = status.job_id
        known = self.known(job_id)
        if known is not None:
            check_claim(known, job_id, status.namespace, status.kind)
            return Submission(job_id, known, created=False)
        self.recent.put(job_id, status)  # before any await: a concurrent duplicate sees it
        if self.storage is not None:
            try:  # another namespace naming the same new id at this instant loses here
                await asyncio.to_thread(
                    claim_job_id, self.storage, job_id, status.namespace, status.kind
                )
            except BaseException:
                self.recent.forget(job_id)
                raise
        try:
            await events.publish(self.bus, topic, event, source=SOURCE)
        except Exception as exc:
            self.recent.forget(job_id)
            self.log.error("could not queue a job", job_id=job_id, topic=topic, error=str(exc))
            raise Unavailable(
                f"could not queue job {job_id} on {topic} ({type(exc).__name__}); "
                "send the same request again"
            ) from exc
        try:
            await self.writer.write(status)
        except Exception as exc:  # the job is queued; its next stage will report on it
            self.log.warning(
                "job queued, its first status not written", job_id=job_id, error=str(exc)
            )
        if self.view.get(job_id) is None:  # show it now; the bus brings it back later
            await self.view.apply(_copy(status))
        self.log.info("job queued", job_id=job_id, topic=topic, namespace=status.namespace)
        return Submission(job_id, self.known(job_id) or status, created=True)

    async def write(self, status: JobStatus) -> JobStatus:
        """Write a later status of a job (a cancel request) and show it at once."""
        await self.writer.write(status)
        await self.view.apply(_copy(status))
        return self.view.get(status.job_id) or status


def _copy(status: JobStatus) -> JobStatus:
    out = JobStatus()
    out.CopyFrom(status)
    return out
