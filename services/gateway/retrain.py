"""Continuous training: retrain a project's model as its CVAT jobs are completed.

A watched project with ``trigger: project`` (``retrain_after_jobs: N`` or
``retrain_after_frames: N`` in the policy) retrains its model after every N
completed CVAT jobs (or N frames in completed jobs).

Counting. At each ``update:job`` delivery that turns a job ``completed`` the
gateway asks CVAT how far the project is (``GET /api/jobs?project_id=P&state=completed``,
every page: the number of completed jobs and the frames they hold). The
retrain *generation* is that number divided by N; generation g asks for a
retrain once. The count lives in CVAT, not in the gateway: a restarted gateway,
a second replica, a lost or redelivered delivery and a job completed twice
(reopened) all read the same truth, and nothing has to be incremented (the
store has a conditional create, no conditional update).

Records (``preannotate.layout``: ``<ns>/models/<name>/retrain/``), each created
once with ``put_if_absent``, so of two replicas one writes and both agree:

- ``requested/<g>.json``: generation g was reached (count, the CVAT job and
  task that reached it, who);
- ``started/<g>.json``: the retrain of generation g was queued, from which base
  version (decided once, here, so a resubmission starts from the same one).

Coalescing (never two retrains of one model at once): the retrain of the
highest started generation is the current one; its job id is derived from
(namespace, model, generation), so every replica names the same job. While its
job has not ended (``job.status``), a newly requested generation waits; when it
ends (succeeded, failed or cancelled) the gateway starts the *highest* requested
generation and skips those between: a retrain requested while one runs replaces
the one queued. So at most one runs and one waits. A started record whose job
the status view does not know (a crash between the record and the queueing) is
queued again under the same job id, which every stage handles once.

A retrain starts from the model's promoted version
(``preannotate.promotion.base_version``: the newest finished version when the
model has no promotion log; the policy's ``base_model`` for the model's first
training) and trains on every completed job of the project (the event names the
project, not a task: ``services/exporter/project.py``); the task of the job that
made it due is only recorded. Blocking storage calls run in threads.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from preannotate import layout, promotion
from preannotate.cvat.client import CvatClient
from preannotate.cvat.settings import CvatConnection, CvatSettings
from preannotate.errors import InvalidArgument
from preannotate.status import TERMINAL
from preannotate.storage import Storage
from services.gateway.jobs import JobFactory
from services.gateway.policy import Policy, ProjectPolicy

log = structlog.get_logger(component="retrain")

REQUESTED, STARTED = layout.RETRAIN_KINDS
#: Answers: a retrain was queued now; one waits behind a running one; not due yet.
OUTCOME_STARTED = "accepted"
OUTCOME_QUEUED = "queued"
OUTCOME_COUNTED = "counted"


@dataclass(frozen=True)
class Annotated:
    """How far a project is: its completed CVAT jobs and the frames they hold."""

    jobs: int
    frames: int


#: ``policy -> Annotated``, asked of CVAT at each completed job.
ProjectProgress = Callable[[ProjectPolicy], Awaitable[Annotated]]


def job_frames(job: dict[str, Any]) -> int:
    count = job.get("frame_count")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    start, stop = job.get("start_frame"), job.get("stop_frame")
    return stop - start + 1 if isinstance(start, int) and isinstance(stop, int) else 0


def cvat_progress(settings: CvatSettings) -> ProjectProgress:
    """``ProjectProgress`` that lists the project's completed jobs with the service's token."""

    async def ask(policy: ProjectPolicy) -> Annotated:
        config = CvatConnection.from_settings(settings, policy.organization)
        params = {"project_id": policy.project_id, "state": "completed", "type": "annotation"}
        async with CvatClient(config) as client:
            jobs = await client.paged("/api/jobs", params)
        return Annotated(len(jobs), sum(job_frames(j) for j in jobs))

    return ask


def progress_checker(settings: CvatSettings, policy: Policy) -> ProjectProgress | None:
    """The ``ProjectProgress`` the policy needs (None when no project retrains)."""
    if not any(p.retrains for p in policy.projects):
        return None
    if not settings.cvat_token.get_secret_value():
        raise InvalidArgument(
            "the webhook policy has projects with trigger: project, and the gateway counts "
            "their completed jobs in CVAT: set PREANNOTATE_CVAT_URL and PREANNOTATE_CVAT_TOKEN "
            "(a token that can list the watched projects' jobs)"
        )
    return cvat_progress(settings)


def generation(policy: ProjectPolicy, annotated: Annotated) -> tuple[int, str]:
    """(the retrain generation the project has reached, how far it is, in words)."""
    if policy.retrain_after_jobs:
        n, done, unit = policy.retrain_after_jobs, annotated.jobs, "completed jobs"
    elif policy.retrain_after_frames:
        n, done, unit = policy.retrain_after_frames, annotated.frames, "frames in completed jobs"
    else:
        raise ValueError(f"project {policy.project_id} does not retrain (trigger: project)")
    return done // n, f"{done} {unit}, a retrain every {n}"


def retrain_job_id(namespace: str, name: str, generation: int) -> str:
    """The job id of a model's retrain of ``generation``: the same in every replica."""
    digest = hashlib.sha256(f"retrain|{namespace}|{name}|{generation}".encode()).hexdigest()
    return "rt-" + digest[:24]


@dataclass(frozen=True)
class RetrainAnswer:
    #: OUTCOME_STARTED, OUTCOME_QUEUED or OUTCOME_COUNTED.
    outcome: str
    generation: int
    #: The retrain queued now, or the one running (queued: the waiting one runs after it).
    job_id: str = ""
    reason: str = ""


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Retrainer:
    """Asks for, coalesces and starts a watched project's retrains (the module's rules)."""

    def __init__(self, *, storage: Storage, jobs: JobFactory, progress: ProjectProgress) -> None:
        self.storage = storage
        self.jobs = jobs
        self.progress = progress
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._followers: dict[str, asyncio.Task[None]] = {}

    def _lock(self, policy: ProjectPolicy) -> asyncio.Lock:
        return self._locks.setdefault((policy.namespace, policy.model_name), asyncio.Lock())

    async def _records(self, policy: ProjectPolicy, kind: str) -> dict[int, dict[str, Any]]:
        return await asyncio.to_thread(
            layout.read_retrain_records, self.storage, policy.namespace, policy.model_name, kind
        )

    async def _create(self, policy: ProjectPolicy, kind: str, g: int, record: dict) -> bool:
        return await asyncio.to_thread(
            layout.create_retrain_record,
            self.storage,
            policy.namespace,
            policy.model_name,
            kind,
            g,
            record,
        )

    async def job_completed(
        self, policy: ProjectPolicy, *, task_id: int, cvat_job_id: int, requested_by: str
    ) -> RetrainAnswer:
        """A job of the project turned completed: ask for a retrain when one is due."""
        annotated = await self.progress(policy)
        g, how_far = generation(policy, annotated)
        async with self._lock(policy):
            requested = await self._records(policy, REQUESTED)
            if g >= 1 and g > max(requested, default=0):
                record = {
                    "completed_jobs": annotated.jobs,
                    "frames": annotated.frames,
                    "task_id": task_id,
                    "cvat_job_id": cvat_job_id,
                    "requested_by": requested_by,
                    "requested_at": _now(),
                }
                if await self._create(policy, REQUESTED, g, record):
                    log.info(
                        "retrain requested",
                        model=f"{policy.namespace}/{policy.model_name}",
                        generation=g,
                        progress=how_far,
                    )
            answer = await self._start_pending(policy)
        if answer is not None:
            return answer
        return RetrainAnswer(OUTCOME_COUNTED, g, reason=f"{how_far}: no retrain due")

    async def start_pending(self, policy: ProjectPolicy) -> RetrainAnswer | None:
        """Start the newest requested retrain if none runs (None: nothing waits)."""
        async with self._lock(policy):
            return await self._start_pending(policy)

    async def _start_pending(self, policy: ProjectPolicy) -> RetrainAnswer | None:
        requested = await self._records(policy, REQUESTED)
        started = await self._records(policy, STARTED)
        top = max(started, default=0)
        newest = max(requested, default=0)
        if top:
            job_id = retrain_job_id(policy.namespace, policy.model_name, top)
            status = self.jobs.known(job_id)
            if status is None:  # recorded, never queued (or not seen yet): queue it again
                await self._submit(policy, top, started[top])
                return RetrainAnswer(OUTCOME_STARTED, top, job_id)
            if status.state not in TERMINAL:
                self._follow(policy, job_id)
                if newest > top:
                    return RetrainAnswer(
                        OUTCOME_QUEUED,
                        newest,
                        job_id,
                        f"retrain {newest} waits for retrain {top} ({job_id}), which runs",
                    )
                return None
        if newest <= top:
            return None
        base = await asyncio.to_thread(
            promotion.base_version, self.storage, policy.namespace, policy.model_name
        )
        record = {
            **requested[newest],
            "base_version": base,
            "replaces": [g for g in sorted(requested) if top < g < newest],
            "started_at": _now(),
        }
        if not await self._create(policy, STARTED, newest, record):
            record = (await self._records(policy, STARTED))[newest]  # another replica's
        job_id = await self._submit(policy, newest, record)
        log.info(
            "retrain started",
            model=f"{policy.namespace}/{policy.model_name}",
            generation=newest,
            job_id=job_id,
            base_version=record.get("base_version"),
            replaces=record.get("replaces"),
        )
        return RetrainAnswer(OUTCOME_STARTED, newest, job_id)

    async def _submit(self, policy: ProjectPolicy, g: int, record: dict[str, Any]) -> str:
        job_id = retrain_job_id(policy.namespace, policy.model_name, g)
        base = record.get("base_version")
        details = {
            "retrain_generation": str(g),
            "retrain_completed_jobs": str(record.get("completed_jobs", "")),
            "retrain_frames": str(record.get("frames", "")),
        }
        if record.get("replaces"):
            details["retrain_replaces"] = ",".join(map(str, record["replaces"]))
        await self.jobs.retrain_from_policy(
            policy,
            job_id=job_id,
            task_id=int(record["task_id"]),
            base_version=int(base) if base else None,
            requested_by=str(record.get("requested_by") or "cvat"),
            details=details,
        )
        self._follow(policy, job_id)
        return job_id

    def _follow(self, policy: ProjectPolicy, job_id: str) -> None:
        """Start the next retrain when ``job_id`` ends (one follower per job)."""
        current = self._followers.get(job_id)
        if current is not None and not current.done():
            return
        self._followers[job_id] = asyncio.create_task(self._after(policy, job_id))

    async def _after(self, policy: ProjectPolicy, job_id: str) -> None:
        async for _ in self.jobs.desk.view.watch(job_id):
            pass
        try:
            await self.start_pending(policy)
        except Exception as exc:  # the next delivery or restart tries again
            log.error("could not start the waiting retrain", job_id=job_id, error=str(exc))
        finally:
            self._followers.pop(job_id, None)

    async def resume(self, policy: Policy) -> None:
        """At start: start what waits, follow what runs (every retraining project)."""
        for project in policy.projects:
            if not project.retrains:
                continue
            try:
                await self.start_pending(project)
            except Exception as exc:
                log.error(
                    "could not resume the project's retrains",
                    project=project.project_id,
                    error=str(exc),
                )

    async def close(self) -> None:
        tasks = list(self._followers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()
