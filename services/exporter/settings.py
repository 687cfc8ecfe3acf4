"""The exporter's settings: CVAT access, unpack limits, dataset options, pools.

Every field is read from ``PREANNOTATE_<FIELD>`` (upper case), e.g.
``PREANNOTATE_CVAT_URL``, ``PREANNOTATE_EXPORT_VAL_FRACTION``. The CVAT
connection fields are ``preannotate.cvat.CvatSettings``'s, shared with the
inference service (one set of variables for both). The trainer pools (``PREANNOTATE_MACHINE_TYPES``,
``PREANNOTATE_DEFAULT_MACHINE_TYPE``) come from ``ServiceSettings``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from preannotate.cvat import CvatSettings
from preannotate.cvat.refs import check_file_root

GiB = 1 << 30
MiB = 1 << 20


class ExporterSettings(CvatSettings):
    """Settings of the exporter (``PREANNOTATE_`` + field name in upper case); the
    CVAT connection fields come from ``preannotate.cvat.CvatSettings``."""

    # CVAT's export flow.
    #: How long CVAT may take to prepare one export.
    cvat_export_timeout_seconds: float = Field(3600.0, gt=0)
    cvat_poll_interval_seconds: float = Field(2.0, gt=0)

    # The archive.
    export_max_archive_bytes: int = Field(20 * GiB, gt=0, description="largest download")
    export_max_bytes: int = Field(40 * GiB, gt=0, description="most bytes unpacked")
    export_max_files: int = Field(500_000, gt=0, description="most files in an archive")
    export_work_dir: Path = Path("var/exporter")
    #: Whether a TaskAnnotated whose cvat.url is file://<zip> is imported from
    #: disk (off by default; on in the embedded mode); needs
    #: PREANNOTATE_EXPORT_FILE_IMPORT_ROOT.
    export_allow_file_import: bool = False
    #: The folder file:// imports must lie in (after resolving symbolic links
    #: and ..); required when PREANNOTATE_EXPORT_ALLOW_FILE_IMPORT is on.
    export_file_import_root: Path | None = None

    # The dataset.
    export_val_fraction: float = Field(0.1, gt=0, lt=1)
    export_keep_negatives: bool = True
    export_shard_max_bytes: int = Field(100 * MiB, gt=0)
    export_shard_max_images: int = Field(0, ge=0, description="0: no limit")

    # Limits on what an archive declares.
    #: Most pixels (width x height) an image of an archive may have; a larger
    #: declared or actual size is refused before any mask is allocated.
    export_max_image_pixels: int = Field(100_000_000, gt=0)

    @model_validator(mode="after")
    def _check_file_root(self) -> ExporterSettings:
        check_file_root(
            self.export_allow_file_import,
            self.export_file_import_root,
            "PREANNOTATE_EXPORT_ALLOW_FILE_IMPORT",
            "PREANNOTATE_EXPORT_FILE_IMPORT_ROOT",
        )
        return self
