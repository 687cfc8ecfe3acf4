"""The gateway's settings: webhook secret and policy, access tokens, TLS, ports.

Every field is read from ``PREANNOTATE_<FIELD>`` (upper case), e.g.
``PREANNOTATE_WEBHOOK_SECRET``, ``PREANNOTATE_TOKENS_FILE``. ``tokens_file``
and the TLS files carry no ``gateway_`` prefix: the inference service reads the
same variables for its own gRPC server. The trainer pools
(``PREANNOTATE_MACHINE_TYPES``, ``PREANNOTATE_DEFAULT_MACHINE_TYPE``) and the
default namespace come from ``ServiceSettings``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from preannotate.cvat import CvatSettings


class GatewaySettings(CvatSettings):
    """Settings of the gateway (``PREANNOTATE_`` + field name in upper case); the CVAT
    connection fields (``PREANNOTATE_CVAT_*``, ``preannotate.cvat.CvatSettings``) are
    what the webhook desk asks CVAT with whether a delivery's task is in its project."""

    # CVAT webhooks (HTTP).
    #: The secret given to CVAT when the webhook was created; deliveries must be
    #: signed with it (X-Signature-256). Empty: every delivery is refused (401).
    webhook_secret: SecretStr = SecretStr("")
    #: YAML file: which CVAT projects to watch and what to train or annotate.
    #: Unset: deliveries are verified and answered, and nothing is started.
    webhook_policy_file: Path | None = None
    #: How long a delivery is remembered, so that CVAT's retry of it makes no second job.
    webhook_dedup_seconds: float = Field(24 * 3600.0, gt=0)
    webhook_dedup_max: int = Field(100_000, ge=100)
    #: Largest webhook body accepted.
    webhook_max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: Score threshold of pre-annotations started by ``create:task``; 0: the model's own
    #: suggestion (inference's ``inference_default_threshold`` where it has none).
    webhook_annotation_threshold: float = Field(0.0, ge=0, le=1)

    # Access to gRPC (TrainingService; the inference service reads the same).
    #: YAML file of bearer tokens and their namespaces (see preannotate.auth).
    #: Unset: calls are open (one machine), and the log says so at start.
    tokens_file: Path | None = None
    #: PEM certificate chain and private key: both set turns TLS on.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # Ports (0 picks a free one).
    gateway_grpc_port: int = Field(50051, ge=0, le=65535)
    gateway_http_port: int = Field(8090, ge=0, le=65535)

    @model_validator(mode="after")
    def _check_tls(self):
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "set both tls_cert_file and tls_key_file (PREANNOTATE_TLS_CERT_FILE, "
                "PREANNOTATE_TLS_KEY_FILE) for TLS, or neither"
            )
        for path in (self.tls_cert_file, self.tls_key_file, self.tokens_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a readable file")
        if self.webhook_policy_file is not None and not self.webhook_policy_file.is_file():
            raise ValueError(f"webhook policy file {self.webhook_policy_file} does not exist")
        return self

    def tls(self) -> tuple[str, str] | None:
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return str(self.tls_cert_file), str(self.tls_key_file)
