"""TrainingService over gRPC: parse the request, call the domain core, map the result.

Errors are ``preannotate.errors`` raised by the core; ``preannotate.grpc_errors``
turns them into status codes. ``preannotate.auth.caller()`` gives each call's
namespaces (every namespace when no tokens are configured). PromoteModel and
RollbackModel change what serves for everyone: they need the namespace's
admin role, and the promotion log records the caller.
"""

from __future__ import annotations

import asyncio

from preannotate import auth
from preannotate.keys import check_name, check_version
from preannotate.v1 import common_pb2, training_pb2, training_pb2_grpc
from services.gateway import models
from services.gateway.jobs import JobFactory, check_namespace


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    """``app`` has ``jobs`` (the domain core, ready once the runner started) and ``settings``."""

    def __init__(self, app) -> None:
        self.app = app

    @property
    def jobs(self) -> JobFactory:
        return self.app.jobs

    @property
    def default_namespace(self) -> str:
        return self.app.settings.namespace

    async def CreateAnnotationModel(self, request, context):
        sub = await self.jobs.create(request, auth.caller(), self.default_namespace)
        return training_pb2.CreateAnnotationModelResponse(job_id=sub.job_id, status=sub.status)

    async def GetJob(self, request, context):
        return self.jobs.get(request.job_id, auth.caller())

    async def WatchJob(self, request, context):
        async for status in self.jobs.watch(request.job_id, auth.caller()):
            yield status

    async def ListJobs(self, request, context):
        jobs = self.jobs.list(auth.caller(), request.namespace, list(request.states))
        return training_pb2.ListJobsResponse(jobs=jobs)

    async def CancelJob(self, request, context):
        return await self.jobs.cancel(request.job_id, auth.caller())

    async def ListModels(self, request, context):
        namespace = check_namespace(request.namespace, self.default_namespace, auth.caller())
        return common_pb2.ListModelsResponse(models=await self.jobs.list_models(namespace))

    async def ListModelTypes(self, request, context):
        return training_pb2.ListModelTypesResponse(model_types=self.jobs.catalog.model_types())

    def _admin(self, request, action: str) -> tuple[str, str, str]:
        """(namespace, model name, caller), once the caller holds the namespace's admin role."""
        access = auth.caller()
        namespace = check_namespace(request.namespace, self.default_namespace, access)
        name = check_name(request.name, "model name")
        access.check_admin(namespace, f"{action} {namespace}/{name}")
        return namespace, name, access.caller

    async def PromoteModel(self, request, context):
        namespace, name, by = self._admin(request, "promoting a version of")
        version = check_version(int(request.version))
        return await asyncio.to_thread(
            models.promote,
            self.jobs.storage,
            namespace,
            name,
            version,
            by=by,
            reason=request.reason,
        )

    async def RollbackModel(self, request, context):
        namespace, name, by = self._admin(request, "rolling back")
        return await asyncio.to_thread(
            models.rollback, self.jobs.storage, namespace, name, by=by, reason=request.reason
        )
