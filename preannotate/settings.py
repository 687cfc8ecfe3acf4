"""Typed settings from the environment: the part every service shares.

Each service has one frozen settings class in ``services/<name>/settings.py``
that extends ``ServiceSettings``; every field is read from an environment
variable named ``PREANNOTATE_<FIELD>`` (``PREANNOTATE_KAFKA_BOOTSTRAP``, ...).
The defaults work on one machine: Kafka on 127.0.0.1:9092 and a local folder
for storage. ``load()`` validates at start and names the variable that is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "PREANNOTATE_"


class ServiceSettings(BaseSettings):
    """What every service needs: bus, storage, telemetry."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # The bus: a real Kafka cluster, or the in-process bus of the embedded mode.
    bus: Literal["kafka", "memory"] = "kafka"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_partitions: int = Field(3, ge=1, description="partitions of topics created at start")
    kafka_replication: int = Field(1, ge=1)
    kafka_client_id: str = "preannotate"
    # Put before every topic name on the cluster (e.g. "staging." or a test's
    # own prefix); the code always sees the plain names.
    kafka_topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_fetch_max_wait_ms: int = Field(100, ge=0)
    # How long a handler may run before the runner pauses its partitions and
    # keeps polling (so a job of hours never leaves the consumer group).
    keepalive_seconds: float = Field(2.0, gt=0)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    session_timeout_ms: int = Field(10_000, ge=1000)
    retry_attempts: int = Field(
        5, ge=1, description="tries of a retryable failure other than Unavailable before DLQ"
    )
    retry_backoff_seconds: float = Field(1.0, ge=0)
    retry_deadline_seconds: float = Field(
        600.0,
        ge=0,
        description="Seconds a record failing with Unavailable (a dependency down or "
        "restarting) is retried, from its first such failure, before it goes to the DLQ; the "
        "wait between tries doubles from PREANNOTATE_RETRY_BACKOFF_SECONDS up to 30 s.",
    )

    # Storage: an S3 bucket, or a local folder.
    storage: Literal["s3", "local"] = "local"
    storage_root: Path = Path("var/storage")
    s3_endpoint: str = ""
    s3_bucket: str = "preannotate"
    s3_region: str = "us-east-1"
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_create_bucket: bool = True
    # Whether the store honours conditional writes (If-None-Match: *); False, or a
    # 501 answer, uses the fallback of preannotate.storage.conditional.
    s3_conditional_writes: bool = True

    # Telemetry.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    # Every server of the service (gRPC, HTTP, /metrics) binds this address.
    bind_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    shutdown_grace_seconds: float = Field(60.0, ge=0)
    max_records: int = Field(
        0,
        ge=0,
        description="Records the process takes up before it shuts down and exits 0 (0: no "
        "limit). 1 (`preannotate run trainer --once`) runs one training per Kubernetes Job; "
        "a record that goes to the DLQ or is left uncommitted at SIGTERM counts.",
    )
    max_records_wait_seconds: float = Field(
        0.0,
        ge=0,
        description="With PREANNOTATE_MAX_RECORDS: seconds the process waits for its first "
        "record before it exits 0 without one (0: it waits for ever), so a Job started for a "
        "record another Job took ends.",
    )

    namespace: str = "default"

    # Access to gRPC in the distributed mode (PREANNOTATE_BUS=kafka): "tokens"
    # refuses to start a gRPC service without PREANNOTATE_TOKENS_FILE; "none"
    # lets it start open, with a warning at start and "auth": "none" in /readyz.
    # The embedded mode (preannotate up) binds 127.0.0.1 and is open.
    auth: Literal["tokens", "none"] = "tokens"

    # Pretrained weights (preannotate.weights; docs/weights.md): fetched once per
    # deployment into storage under weights/<model-type>/. A mirror is a base URL
    # (the published file's name is appended); per-model-type URLs win over it.
    weights_mirror: str = ""
    # Model type -> URL of its weights file (JSON); wins over the mirror.
    weights_urls: dict[str, str] = Field(default_factory=dict)
    # Seconds a weights download may wait for the server before it fails.
    weights_timeout_seconds: float = Field(60.0, gt=0)

    # Trainer pools, "name=gpus" comma-separated: each is one consumer group on
    # its own topic train.jobs.<name>. A request that names none goes to the
    # default pool.
    machine_types: str = "cpu=0"
    default_machine_type: str = "cpu"

    @field_validator("weights_mirror")
    @classmethod
    def _check_weights_mirror(cls, value: str) -> str:
        if value and not _is_http_url(value):
            raise ValueError("a base URL starting with http:// or https://, or empty")
        return value.rstrip("/")

    @field_validator("weights_urls")
    @classmethod
    def _check_weights_urls(cls, value: dict[str, str]) -> dict[str, str]:
        from preannotate.catalog import default_catalog

        catalog = default_catalog()
        for model_type, url in value.items():
            if model_type not in catalog:
                raise ValueError(
                    f"unknown model type {model_type!r}; choose among {', '.join(catalog.names())}"
                )
            if not _is_http_url(url):
                raise ValueError(f"{model_type}: {url!r} is not an http:// or https:// URL")
        return value

    @field_validator("machine_types")
    @classmethod
    def _check_machine_types(cls, value: str) -> str:
        parse_pools(value)
        return value

    @model_validator(mode="after")
    def _check_default_pool(self):
        pools = self.pools()
        if self.default_machine_type not in pools:
            raise ValueError(
                f"{ENV_PREFIX}DEFAULT_MACHINE_TYPE {self.default_machine_type!r} is not one of "
                f"{ENV_PREFIX}MACHINE_TYPES {sorted(pools)}"
            )
        return self

    def pools(self) -> dict[str, int]:
        """The trainer pools and their GPU counts, e.g. {"cpu": 0, "gpu-4": 4}."""
        return parse_pools(self.machine_types)


def _is_http_url(value: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def parse_pools(text: str) -> dict[str, int]:
    from preannotate.keys import check_name

    pools: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, gpus = item.partition("=")
        name = check_name(name.strip(), "machine type")
        try:
            count = int(gpus) if gpus.strip() else 0
        except ValueError:
            raise ValueError(f"machine type {name!r}: GPU count {gpus!r} is not a number") from None
        if count < 0:
            raise ValueError(f"machine type {name!r}: GPU count must be 0 or more")
        pools[name] = count
    if not pools:
        raise ValueError("no machine types: give at least one, e.g. 'cpu=0'")
    return pools


S = TypeVar("S", bound=BaseSettings)


class SettingsError(SystemExit):
    """Raised at start when a variable is missing or wrong; the message names it."""


def load(cls: type[S], **overrides) -> S:
    """Build ``cls`` from the environment, naming the variable of any bad value."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            if field:
                lines.append(f"{prefix}{field.upper()}: {err['msg']} (got {err.get('input')!r})")
            else:
                lines.append(err["msg"])
        raise SettingsError("bad settings:\n  " + "\n  ".join(lines)) from None
