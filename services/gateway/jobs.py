"""The gateway's domain core: start training and annotation jobs, follow and cancel them.

``JobFactory`` is what both transports call (``webhooks`` and ``servicer``):
it checks a training request against the catalog (``training``), builds the
first event and status of the job and hands them to the ``JobDesk``. It
imports neither grpc nor aiohttp. A job's status records who asked for it
(``details["requested_by"]``) and who cancelled it (``"cancelled_by"``);
CancelJob by anyone but the requester needs the namespace's admin role.
A request naming a CVAT task passes ``task_scope`` first (the caller's token
may be limited to CVAT projects or organisations; the app gives the check that
asks CVAT, ``preannotate.cvat.scope.check_task``).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from preannotate import topics
from preannotate.auth import Access
from preannotate.errors import FailedPrecondition, InvalidArgument, NotFound
from preannotate.status import TERMINAL, check_claim, state_name
from preannotate.storage import Storage
from preannotate.v1 import common_pb2, events_pb2, training_pb2
from preannotate.v1.events_pb2 import JobStatus
from services.gateway import models
from services.gateway.desk import JobDesk, Submission
from services.gateway.policy import ProjectPolicy
from services.gateway.training import Catalog, TrainingRequest, check_base_model_exists


def request_job_id(namespace: str, request_id: str) -> str:
    """The job id of a caller's idempotency key (the same key: the same job)."""
    digest = hashlib.sha256(f"{namespace}|{request_id}".encode()).hexdigest()
    return "job-" + digest[:24]


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:24]


#: Refuses (``PermissionDenied``) a CVAT task the caller's token may not name.
TaskScope = Callable[[Access, common_pb2.CvatRef], Awaitable[None]]


async def any_task(access: Access, ref: common_pb2.CvatRef) -> None:
    """The ``TaskScope`` of a gateway that checks nothing (tokens without CVAT limits)."""


class JobFactory:
    def __init__(
        self,
        *,
        desk: JobDesk,
        storage: Storage,
        catalog: Catalog,
        annotation_threshold: float = 0.0,
        task_scope: TaskScope = any_task,
    ) -> None:
        self.desk = desk
        self.storage = storage
        self.catalog = catalog
        self.annotation_threshold = annotation_threshold
        self.task_scope = task_scope

    # --- lookups ----------------------------------------------------------------

    def known(self, job_id: str) -> JobStatus | None:
        return self.desk.known(job_id)

    async def newest_ready_model(self, namespace: str, name: str) -> common_pb2.ModelRef | None:
        """The promoted version exported for serving (``models.serving_model``)."""
        return await asyncio.to_thread(models.serving_model, self.storage, namespace, name)

    async def list_models(self, namespace: str) -> list[common_pb2.Model]:
        return await asyncio.to_thread(models.list_models, self.storage, namespace)

    # --- starting jobs ------------------------------------------------------------

    async def create(
        self,
        request: training_pb2.CreateAnnotationModelRequest,
        access: Access,
        default_namespace: str,
    ) -> Submission:
        """TrainingService.CreateAnnotationModel: check everything, then queue (once per request_id)."""
        namespace = check_namespace(request.namespace, default_namespace, access)
        job_id = request_job_id(namespace, request.request_id) if request.request_id else ""
        known = self.known(job_id) if job_id else None
        if known is not None:
            check_claim(known, job_id, namespace, events_pb2.JOB_KIND_TRAINING)
            return Submission(job_id, known, created=False)
        if not request.HasField("cvat") or request.cvat.task_id <= 0:
            raise InvalidArgument("cvat.task_id is required: the CVAT task to train from")
        checked = self.catalog.check_request(
            namespace=namespace,
            task_id=request.cvat.task_id,
            model_type=request.model_type,
            arguments=request.arguments,
            base_model=request.base_model,
            machine_type=request.machine_type,
            gpus=request.gpus,
            model_name=request.model_name,
        )
        for name in ("url", "job_id", "project_id", "organization"):
            setattr(checked.cvat, name, getattr(request.cvat, name))
        await self.task_scope(access, checked.cvat)
        return await self.train(
            checked, job_id=job_id or new_job_id(), trigger="grpc", requested_by=access.caller
        )

    async def train(
        self,
        request: TrainingRequest,
        *,
        job_id: str,
        trigger: str,
        requested_by: str,
    ) -> Submission:
        """Queue a checked training request on task.annotated (once per job id)."""
        if self.known(job_id) is None and request.training.HasField("base_model"):
            await asyncio.to_thread(
                check_base_model_exists, self.storage, request.training.base_model
            )
        event = events_pb2.TaskAnnotated(
            job_id=job_id,
            namespace=request.namespace,
            trigger=trigger,
            requested_by=requested_by,
        )
        event.cvat.CopyFrom(request.cvat)
        event.training.CopyFrom(request.training)
        event.requested_at.GetCurrentTime()
        status = JobStatus(
            job_id=job_id,
            namespace=request.namespace,
            kind=events_pb2.JOB_KIND_TRAINING,
            stage=events_pb2.JOB_STAGE_EXPORT,
            state=events_pb2.JOB_STATE_QUEUED,
            message=f"queued: export of {_what(request.cvat)}, "
            f"then training on {request.training.machine_type}",
        )
        status.cvat.CopyFrom(request.cvat)
        status.training.CopyFrom(request.training)
        status.details.update(request.details)
        status.details["trigger"] = trigger
        status.details["requested_by"] = requested_by
        return await self.desk.submit(status, topics.TASK_ANNOTATED, event)

    async def train_from_policy(
        self,
        policy: ProjectPolicy,
        *,
        job_id: str,
        task_id: int,
        cvat_job_id: int,
        requested_by: str,
    ) -> Submission:
        request = self.catalog.check_request(
            namespace=policy.namespace,
            task_id=task_id,
            model_type=policy.model_type,
            arguments=policy.arguments,
            base_model=policy.base_model,
            machine_type=policy.machine_type,
            gpus=0,
            model_name=policy.model_name,
        )
        request.cvat.job_id = cvat_job_id
        request.cvat.project_id = policy.project_id
        request.cvat.organization = policy.organization
        return await self.train(
            request, job_id=job_id, trigger="webhook", requested_by=requested_by
        )

    async def retrain_from_policy(
        self,
        policy: ProjectPolicy,
        *,
        job_id: str,
        task_id: int,
        base_version: int | None,
        requested_by: str,
        details: dict[str, str],
    ) -> Submission:
        """Queue a project's retrain (``services.gateway.retrain``) on every completed job
        of the project (the event names the project, not a task), from ``base_version``
        of the policy's model (None: the policy's ``base_model``, for a first training);
        ``task_id`` (the task that made it due) goes in the details."""
        base = f"{policy.model_name}/{base_version}" if base_version else policy.base_model
        request = self.catalog.check_request(
            namespace=policy.namespace,
            task_id=0,
            project_id=policy.project_id,
            model_type=policy.model_type,
            arguments=policy.arguments,
            base_model=base,
            machine_type=policy.machine_type,
            gpus=0,
            model_name=policy.model_name,
        )
        request.cvat.organization = policy.organization
        request.details.update(details)
        request.details["retrain_due_to_task"] = str(task_id)
        return await self.train(
            request, job_id=job_id, trigger="retrain", requested_by=requested_by
        )

    async def annotate_from_policy(
        self,
        policy: ProjectPolicy,
        *,
        job_id: str,
        task_id: int,
        model: common_pb2.ModelRef,
    ) -> Submission:
        """Queue a pre-annotation of a new task on annotation.requested (once per job id)."""
        threshold = self.annotation_threshold if policy.threshold is None else policy.threshold
        event = events_pb2.AnnotationRequested(
            job_id=job_id,
            namespace=policy.namespace,
            threshold=threshold,
            mode=events_pb2.ANNOTATE_MODE_APPEND,
            trigger="webhook",
            review_issues=policy.review_issues,
        )
        event.label_thresholds.update(policy.label_thresholds)
        event.cvat.task_id = task_id
        event.cvat.project_id = policy.project_id
        event.cvat.organization = policy.organization
        event.model.CopyFrom(model)
        status = JobStatus(
            job_id=job_id,
            namespace=policy.namespace,
            kind=events_pb2.JOB_KIND_ANNOTATION,
            stage=events_pb2.JOB_STAGE_ANNOTATE,
            state=events_pb2.JOB_STATE_QUEUED,
            message=f"queued: pre-annotation of CVAT task {task_id} with "
            f"{model.name} version {model.version}",
        )
        status.cvat.CopyFrom(event.cvat)
        status.model.CopyFrom(model)
        status.details["trigger"] = "webhook"
        return await self.desk.submit(status, topics.ANNOTATION_REQUESTED, event)

    # --- following jobs -----------------------------------------------------------

    def get(self, job_id: str, access: Access) -> JobStatus:
        status = self.known(job_id) if job_id else None
        if status is None or not access.allows(status.namespace):
            raise NotFound(f"no job {job_id!r} in the namespaces you may see")
        return status

    def list(self, access: Access, namespace: str = "", states=()) -> list[JobStatus]:
        return self.desk.view.list(access.visible(namespace), states)

    async def watch(self, job_id: str, access: Access) -> AsyncIterator[JobStatus]:
        self.get(job_id, access)
        async for status in self.desk.view.watch(job_id):
            yield status

    async def cancel(self, job_id: str, access: Access) -> JobStatus:
        """Ask the job to stop: its requester may, anyone else needs the namespace's admin role."""
        current = self.get(job_id, access)
        requester = current.details.get("requested_by", "")
        if access.caller != requester:
            who = requester or "an unrecorded caller"
            access.check_admin(current.namespace, f"cancelling job {job_id} (asked for by {who})")
        if current.state in TERMINAL:
            raise FailedPrecondition(
                f"job {job_id} has ended ({state_name(current.state)}); there is nothing to cancel"
            )
        if current.state == events_pb2.JOB_STATE_CANCELLING:
            return current
        status = JobStatus()
        status.CopyFrom(current)
        status.state = events_pb2.JOB_STATE_CANCELLING
        status.message = f"cancel requested by {access.caller}; stopping at the next step"
        status.details["cancelled_by"] = access.caller
        status.ClearField("updated_at")
        return await self.desk.write(status)


def _what(cvat: common_pb2.CvatRef) -> str:
    if cvat.task_id <= 0 and cvat.project_id > 0:
        return f"the completed jobs of CVAT project {cvat.project_id}"
    return f"CVAT task {cvat.task_id}"


def check_namespace(value: str, default: str, access: Access) -> str:
    """The request's namespace (or the default), checked for form and for access."""
    from preannotate.keys import check_name

    namespace = check_name(value or default, "namespace")
    return access.check(namespace)
