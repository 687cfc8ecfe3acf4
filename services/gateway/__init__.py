"""The gateway service: CVAT webhooks (HTTP) and TrainingService (gRPC) -> task.annotated.

Modules: ``settings`` (GatewaySettings), ``service`` (build), ``app`` (wiring),
``webhooks`` + ``http`` (the webhook door), ``servicer`` (the gRPC door),
``jobs`` (the domain core), ``training`` (request checks against the catalog),
``desk`` (one job per job id), ``models`` (ready models from storage),
``policy`` (the webhook policy file), ``cli`` (client commands). See README.md.
No TensorFlow is imported here.
"""
