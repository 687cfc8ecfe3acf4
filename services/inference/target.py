"""Where an annotation run reads its frames and writes what the model found.

A run's ``CvatRef.url`` picks the target, here and nowhere else:

- empty or the configured ``PREANNOTATE_CVAT_URL``: a CVAT task, or one job of
  it (``CvatTarget``): frames over CVAT's REST API, shapes PATCHed into jobs;
- ``file://<root>``: a local folder laid out as CVAT's "COCO 1.0" export
  (``FolderTarget``): frames from ``<root>/images/default/``, predictions
  written to ``<root>/annotations/instances_default.json``. Allowed while
  ``PREANNOTATE_INFERENCE_ALLOW_FILE_TARGETS`` is on, and only under
  ``PREANNOTATE_INFERENCE_FILE_TARGET_ROOT`` when that is set.

The annotator (``services.inference.annotate``) only sees ``Target``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from preannotate.cvat import CvatConnection, check_same_server, file_ref_path, is_file_ref
from preannotate.errors import InvalidArgument, NotFound, Unavailable
from preannotate.v1 import common_pb2
from services.inference.cvat import CvatClient
from services.inference.postprocess import Detected
from services.inference.registry import ModelEntry
from services.inference.settings import InferenceSettings

FILE_TARGETS_OFF = "PREANNOTATE_INFERENCE_ALLOW_FILE_TARGETS"
FILE_TARGET_ROOT = "PREANNOTATE_INFERENCE_FILE_TARGET_ROOT"


@dataclass(frozen=True)
class FrameResult:
    """What the model found on one frame, mapped to the target's labels."""

    frame: int
    width: int
    height: int
    #: (target label id, detection), for the detections whose class is a label there.
    found: list[tuple[int, Detected]] = field(default_factory=list)


class Target(Protocol):
    """A source of frames and a sink of shapes, for one run."""

    #: "cvat" or "folder" (metrics and logs).
    kind: str
    #: "CVAT task 12" or "folder /data/heldout" (messages).
    describe: str

    async def labels(self) -> list[dict[str, Any]]:
        """The target's labels as CVAT lists them: ``{"id", "name"}`` (and
        ``parent_id`` for skeleton parts, which are not matched)."""

    async def frames(self) -> list[int]:
        """The frames to annotate, in order."""

    async def prepare(self, frames: Sequence[int]) -> int:
        """Called once before the first fetch. Replace mode: earlier automatic
        shapes go (CVAT: deleted now; folder: the file is rewritten whole at
        the end). Returns how many go."""

    def frame_name(self, frame: int) -> str:
        """How messages name the frame ("frame 3", "frame 3 (cat.jpg)")."""

    async def fetch(self, frame: int) -> bytes:
        """The frame's encoded bytes. ``NotFound``, ``InvalidArgument`` or
        ``Unavailable`` mean this frame cannot be had (it is skipped); other
        errors fail the run."""

    async def write(self, results: Sequence[FrameResult]) -> int:
        """Write one batch's results (every predicted frame, with or without
        detections); returns how many shapes were written."""

    async def finish(self) -> None:
        """After the last write: make the results durable where they are not yet."""

    async def close(self) -> None: ...


def is_frame_problem(exc: BaseException) -> bool:
    """Whether a failed fetch is that frame's problem (skip it) rather than the
    run's (credentials, permissions, a bug: fail)."""
    return isinstance(exc, NotFound | InvalidArgument | Unavailable)


def cvat_client(settings: InferenceSettings, ref: common_pb2.CvatRef) -> CvatClient:
    """A client on the configured CVAT, in the organisation the request names (or the
    configured one); a request naming another server is refused."""
    check_same_server(ref.url, settings.cvat_url)
    return CvatClient(CvatConnection.from_settings(settings, ref.organization))


def open_target(
    settings: InferenceSettings,
    ref: common_pb2.CvatRef,
    model: ModelEntry,
    *,
    replace: bool,
) -> Target:
    """The target ``ref`` names; refused with a message that says what to change."""
    if is_file_ref(ref.url):
        from services.inference.folder_target import FolderTarget

        if not settings.inference_allow_file_targets:
            raise InvalidArgument(
                f"{ref.url!r}: pre-annotating local folders is off ({FILE_TARGETS_OFF})"
            )
        root = settings.inference_file_target_root
        path = file_ref_path(ref.url, root, FILE_TARGET_ROOT)
        return FolderTarget(path, model.classes, replace=replace, allowed_root=root)

    from services.inference.cvat_target import CvatTarget

    if ref.task_id <= 0:
        raise InvalidArgument(
            "no CVAT task named: set cvat.task_id (or cvat.url to file://<folder> for a "
            "local folder)"
        )
    return CvatTarget(
        cvat_client(settings, ref),
        int(ref.task_id),
        job_id=int(ref.job_id),
        replace=replace,
        mask_shape=settings.inference_mask_shape,
        frame_quality=settings.cvat_frame_quality,
    )
