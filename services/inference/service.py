"""``build(settings)``: the inference service as the runner runs it.

Routes: ``model.converted`` (registers models) is heard by every replica
(``broadcast``: no consumer group, read from the end; each replica keeps its
own registry and loaded models, and one that starts later reads the serving
manifests in storage) and leaves the job's status alone (``status=False``:
the converter's stage already ended the job); ``once=False``, since each
replica must act on it. ``annotation.requested`` (pre-annotates) is shared by
the group, once per job. gRPC:
``preannotate.v1.InferenceService`` on ``inference_grpc_port`` with the shared
interceptors (errors mapped to status codes; bearer tokens checked when
``tokens_file`` is set). HTTP: the Nuclio dashboard API on ``nuclio_port``. The core
(``InferenceApp``) starts in ``startup``, when the runner hands over storage
and bus.
"""

from __future__ import annotations

from preannotate import topics
from preannotate.auth import server_interceptors
from preannotate.handler import Route
from preannotate.service import GrpcService, ServiceSpec
from preannotate.v1 import events_pb2, inference_pb2_grpc
from services.inference.app import SERVICE, InferenceApp
from services.inference.handlers import InferenceHandlers
from services.inference.nuclio import NuclioApi
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings

GRPC_SERVICE = "preannotate.v1.InferenceService"


def build(settings: InferenceSettings, app: InferenceApp | None = None) -> ServiceSpec:
    app = app or InferenceApp(settings)
    handlers = InferenceHandlers(app)
    return ServiceSpec(
        name=SERVICE,
        routes=[
            Route(
                topics.MODEL_CONVERTED,
                handlers.handle_model_converted,
                stage=events_pb2.JOB_STAGE_CONVERT,
                once=False,
                broadcast=True,
                status=False,
            ),
            Route(
                topics.ANNOTATION_REQUESTED,
                handlers.handle_annotation_requested,
                stage=events_pb2.JOB_STAGE_ANNOTATE,
            ),
        ],
        startup=app.start,
        shutdown=app.stop,
        grpc=[
            GrpcService(
                servicer=InferenceServicer(app),
                add_to_server=inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                name=GRPC_SERVICE,
            )
        ],
        grpc_port=settings.inference_grpc_port,
        grpc_interceptors=server_interceptors(settings.tokens_file),
        http_routes=[NuclioApi(app).routes()],
        http_port=settings.nuclio_port,
    )
