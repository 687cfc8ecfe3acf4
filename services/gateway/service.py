"""The gateway as the runner sees it: TrainingService (gRPC) and the CVAT webhook (HTTP).

It consumes no topic: what it knows of jobs comes from the runner's job.status
view. ``build`` reads and checks the policy and tokens files (a bad one stops
the start with its message) and builds no clients.
"""

from __future__ import annotations

from preannotate.auth import server_interceptors
from preannotate.service import GrpcService, ServiceSpec
from preannotate.v1 import training_pb2, training_pb2_grpc
from services.gateway import http
from services.gateway.app import GatewayApp, load_checked_policy
from services.gateway.servicer import TrainingServicer
from services.gateway.settings import GatewaySettings
from services.gateway.training import Catalog

NAME = "gateway"
TRAINING_SERVICE = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


def build(settings: GatewaySettings) -> ServiceSpec:
    catalog = Catalog(settings.pools(), settings.default_machine_type)
    policy = load_checked_policy(settings, catalog)
    interceptors = server_interceptors(settings.tokens_file)
    app = GatewayApp(settings, catalog, policy)
    return ServiceSpec(
        name=NAME,
        startup=app.startup,
        shutdown=app.shutdown,
        grpc=[
            GrpcService(
                servicer=TrainingServicer(app),
                add_to_server=training_pb2_grpc.add_TrainingServiceServicer_to_server,
                name=TRAINING_SERVICE,
            )
        ],
        grpc_port=settings.gateway_grpc_port,
        grpc_interceptors=interceptors,
        grpc_tls=settings.tls(),
        http_routes=[http.routes(app, settings.webhook_max_bytes)],
        http_port=settings.gateway_http_port,
    )
