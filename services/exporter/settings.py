"""The exporter's settings: CVAT access, unpack limits, dataset options, pools.

Every field is read from ``PREANNOTATE_<FIELD>`` (upper case), e.g.
``PREANNOTATE_CVAT_URL``, ``PREANNOTATE_EXPORT_VAL_FRACTION``. The CVAT fields
carry no ``export_`` prefix because the inference service talks to the same
CVAT with the same variables. The trainer pools (``PREANNOTATE_MACHINE_TYPES``,
``PREANNOTATE_DEFAULT_MACHINE_TYPE``) come from ``ServiceSettings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from preannotate.settings import ServiceSettings

GiB = 1 << 30
MiB = 1 << 20


class ExporterSettings(ServiceSettings):
    """Settings of the exporter (``PREANNOTATE_`` + field name in upper case)."""

    # CVAT.
    cvat_url: str = "http://127.0.0.1:8080"
    cvat_token: SecretStr = SecretStr("")
    #: "bearer": a personal access token (Authorization: Bearer); "token": a
    #: legacy API key (Authorization: Token).
    cvat_auth_scheme: Literal["bearer", "token"] = "bearer"
    #: Organisation slug sent as X-Organization; empty: none (a message's
    #: organisation wins when it names one).
    cvat_organization: str = ""
    cvat_verify_tls: bool = True
    cvat_request_timeout_seconds: float = Field(60.0, gt=0)
    #: How long CVAT may take to prepare one export.
    cvat_export_timeout_seconds: float = Field(3600.0, gt=0)
    cvat_poll_interval_seconds: float = Field(2.0, gt=0)
    #: Tries of one CVAT request that fails with 5xx, a timeout or a broken connection.
    cvat_retry_attempts: int = Field(3, ge=1)
    #: Wait before the second try; doubled for each further try, up to the max.
    cvat_retry_backoff_seconds: float = Field(1.0, ge=0)
    cvat_retry_backoff_max_seconds: float = Field(30.0, ge=0)

    # The archive.
    export_max_archive_bytes: int = Field(20 * GiB, gt=0, description="largest download")
    export_max_bytes: int = Field(40 * GiB, gt=0, description="most bytes unpacked")
    export_max_files: int = Field(500_000, gt=0, description="most files in an archive")
    export_work_dir: Path = Path("var/exporter")
    #: Whether a TaskAnnotated whose cvat.url is file://<zip> is imported from disk.
    export_allow_file_import: bool = True
    #: When set, file:// imports must lie under this folder.
    export_file_import_root: Path | None = None

    # The dataset.
    export_val_fraction: float = Field(0.1, gt=0, lt=1)
    export_keep_negatives: bool = True
    export_shard_max_bytes: int = Field(100 * MiB, gt=0)
    export_shard_max_images: int = Field(0, ge=0, description="0: no limit")

    @field_validator("cvat_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL, e.g. http://cvat:8080")
        return value.rstrip("/")
