"""Annotation targets: one interface (``Target``) over a CVAT task and a local folder.

A run's ``CvatRef.url`` picks the target, in ``open_target`` and nowhere else:

- empty or the configured ``PREANNOTATE_CVAT_URL``: a CVAT task, or one job of
  it (``targets.cvat.CvatTarget``): frames over CVAT's REST API, shapes
  PATCHed into jobs;
- ``file://<root>``: a local folder laid out as CVAT's "COCO 1.0" export
  (``targets.folder.FolderTarget``): frames from ``<root>/images/default/``,
  predictions written to ``<root>/annotations/instances_default.json``.
  Off by default; allowed while ``PREANNOTATE_INFERENCE_ALLOW_FILE_TARGETS``
  is on (the embedded mode), and only under
  ``PREANNOTATE_INFERENCE_FILE_TARGET_ROOT`` (required then).

``check_target_ref`` runs the same checks on a request before anything is
written (the gRPC servicer calls it before a run starts).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from preannotate.cvat import connect, file_ref_path, is_file_ref
from preannotate.errors import InvalidArgument
from services.inference.targets.base import (
    FILE_TARGET_ROOT,
    FILE_TARGETS_OFF,
    FrameResult,
    Target,
    is_frame_problem,
)
from services.inference.targets.cvat import CvatTarget
from services.inference.targets.folder import FolderTarget

if TYPE_CHECKING:
    from preannotate.v1 import common_pb2
    from services.inference.registry import ModelEntry
    from services.inference.settings import InferenceSettings

__all__ = [
    "CvatTarget",
    "FolderTarget",
    "FrameResult",
    "Target",
    "check_target_ref",
    "is_frame_problem",
    "open_target",
]


def file_target_path(settings: InferenceSettings, url: str) -> Path:
    """The folder a ``file://`` target names, refused unless the deployment allows
    local folders and it lies under the configured root (existing or not)."""
    if not settings.inference_allow_file_targets:
        raise InvalidArgument(
            f"{url!r}: pre-annotating local folders is off in this deployment "
            f"({FILE_TARGETS_OFF}); name a CVAT task instead"
        )
    return file_ref_path(url, settings.inference_file_target_root, FILE_TARGET_ROOT)


def check_target_ref(settings: InferenceSettings, ref: common_pb2.CvatRef) -> None:
    """Refuse a target ``open_target`` would refuse, before anything is written."""
    if is_file_ref(ref.url):
        file_target_path(settings, ref.url)


def open_target(
    settings: InferenceSettings,
    ref: common_pb2.CvatRef,
    model: ModelEntry,
    *,
    replace: bool,
) -> Target:
    """The target ``ref`` names; refused with a message that says what to change."""
    if is_file_ref(ref.url):
        path = file_target_path(settings, ref.url)
        root = settings.inference_file_target_root
        return FolderTarget(path, model.classes, replace=replace, allowed_root=root)

    if ref.task_id <= 0:
        raise InvalidArgument(
            "no CVAT task named: set cvat.task_id (or cvat.url to file://<folder> for a "
            "local folder)"
        )
    return CvatTarget(
        connect(settings, ref),
        int(ref.task_id),
        job_id=int(ref.job_id),
        replace=replace,
        mask_shape=settings.inference_mask_shape,
        frame_quality=settings.cvat_frame_quality,
    )
