"""TrainingService over gRPC: parse the request, call the domain core, map the result.

Errors are ``preannotate.errors`` raised by the core; ``preannotate.grpc_errors``
turns them into status codes. ``preannotate.auth.caller()`` gives each call's
namespaces (every namespace when no tokens are configured).
"""

from __future__ import annotations

from preannotate import auth
from preannotate.v1 import common_pb2, training_pb2, training_pb2_grpc
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
