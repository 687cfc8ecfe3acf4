"""Where a task's COCO 1.0 archive comes from: CVAT, or a local file.

``msg.cvat.url``:

- empty, or the configured ``PREANNOTATE_CVAT_URL`` (same scheme, host and
  port): CVAT's export flow (``preannotate.cvat.export``) with the configured
  token; a message that names another CVAT is refused, so the token never
  travels to a server nobody configured;
- ``file:///path/export.zip``: a zip in CVAT's COCO 1.0 layout on this
  machine (the quickstart's path, data that comes from no CVAT server);
  off by default, allowed while ``PREANNOTATE_EXPORT_ALLOW_FILE_IMPORT`` is on
  (the embedded mode), and only under ``PREANNOTATE_EXPORT_FILE_IMPORT_ROOT``
  (required then). A refusal says the same whether the file exists or not.

Either way the handler gets a zip path and treats it the same: safe unpack,
then conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from preannotate.cvat import connect, file_ref_path, is_file_ref
from preannotate.cvat.export import ExportLimits, StatusCallback, export_task
from preannotate.errors import InvalidArgument, NotFound
from preannotate.v1 import common_pb2
from services.exporter.settings import ExporterSettings


@dataclass(frozen=True)
class Archive:
    path: Path
    #: For the manifest: {"kind": "cvat"|"file", ...}.
    source: dict[str, str | int]
    #: For messages: "CVAT task 12" or "file /data/export.zip".
    describe: str


def export_limits(settings: ExporterSettings) -> ExportLimits:
    return ExportLimits(
        timeout=settings.cvat_export_timeout_seconds,
        poll_interval=settings.cvat_poll_interval_seconds,
        max_archive_bytes=settings.export_max_archive_bytes,
    )


def is_file_source(cvat: common_pb2.CvatRef) -> bool:
    return is_file_ref(cvat.url)


def local_archive(url: str, settings: ExporterSettings) -> Path:
    """The zip a ``file://`` URL names, once it passes the settings' rules."""
    if not settings.export_allow_file_import:
        raise InvalidArgument(
            f"{url!r}: importing local files is off in this deployment "
            "(PREANNOTATE_EXPORT_ALLOW_FILE_IMPORT); name a CVAT task instead"
        )
    resolved = file_ref_path(
        url, settings.export_file_import_root, "PREANNOTATE_EXPORT_FILE_IMPORT_ROOT"
    )
    if not resolved.is_file():
        raise NotFound(f"{url!r}: no such file")
    size = resolved.stat().st_size
    if size > settings.export_max_archive_bytes:
        raise InvalidArgument(
            f"{url!r} is {size} bytes, more than the limit of {settings.export_max_archive_bytes} "
            "(PREANNOTATE_EXPORT_MAX_ARCHIVE_BYTES)"
        )
    return resolved


async def fetch_archive(
    cvat: common_pb2.CvatRef,
    settings: ExporterSettings,
    work: Path,
    *,
    on_status: StatusCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Archive:
    """The task's archive on local disk (downloaded into ``work`` when from CVAT)."""
    if is_file_source(cvat):
        path = local_archive(cvat.url, settings)
        return Archive(path, {"kind": "file", "url": cvat.url}, f"file {path}")
    async with connect(settings, cvat) as client:
        path = await export_task(
            client,
            cvat.task_id,
            work / "export.zip",
            export_limits(settings),
            on_status=on_status,
            cancelled=cancelled,
        )
    config = client.config
    source: dict[str, str | int] = {"kind": "cvat", "url": config.url, "task_id": cvat.task_id}
    if config.organization:
        source["organization"] = config.organization
    return Archive(path, source, f"CVAT task {cvat.task_id}")
