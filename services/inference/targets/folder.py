"""A local folder laid out as CVAT's "COCO 1.0" export, as an annotation run's target.

    <root>/images/default/...                  the frames: image files, sorted by
                                               their path there; frame N = the N-th
    <root>/annotations/instances_default.json  written at the end (``coco``)

Every class of the model is a label (category ids 1..K in class order). The
file is written once, atomically, when the run ends: replace mode writes this
run's predictions alone; append mode adds them to the file already there
(checked before the first frame is read). A zip of ``<root>`` is a dataset
CVAT imports. With an allowed root set, an image that resolves outside it (a
symbolic link) is skipped and reported like a broken one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from preannotate.cvat import is_under
from preannotate.cvat.coco import coco_document, coco_image
from preannotate.errors import InvalidArgument, NotFound
from services.inference import coco
from services.inference.targets.base import FILE_TARGET_ROOT, FrameResult, OnWritten

IMAGES = Path("images") / "default"
ANNOTATIONS = Path("annotations") / "instances_default.json"
#: Files taken as frames (by suffix, any case); other files are left alone.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (hidden ones left out), as sorted relative paths."""
    names = [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    ]
    return sorted(names)


class FolderTarget:
    """Reads ``<root>/images/default/`` and writes ``<root>/annotations/instances_default.json``."""

    kind = "folder"
    resumable = False

    def __init__(
        self,
        root: Path,
        classes: Sequence[str],
        *,
        replace: bool = False,
        allowed_root: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.images = self.root / IMAGES
        self.path = self.root / ANNOTATIONS
        self.classes = tuple(classes)
        self.replace = replace
        self.allowed_root = allowed_root
        self.describe = f"folder {self.root}"
        self._names: list[str] = []
        self._existing: dict[str, Any] | None = None
        self._doc = coco_document(self.classes)

    async def pending(self) -> str | None:
        return None  # a folder's images are there or not; nothing to wait for

    async def labels(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": name} for i, name in enumerate(self.classes, 1)]

    async def frames(self) -> list[int]:
        if not self.root.is_dir():
            raise NotFound(f"{self.describe}: no such folder")
        if not self.images.is_dir():
            raise NotFound(
                f"{self.describe} has no {IMAGES.as_posix()}/ folder: put the images to "
                "pre-annotate there (the layout of a CVAT COCO 1.0 export)"
            )
        self._names = await asyncio.to_thread(list_images, self.images)
        if not self._names:
            raise InvalidArgument(
                f"{self.images} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        return list(range(len(self._names)))

    async def prepare(self, frames: Sequence[int]) -> int:
        exists = await asyncio.to_thread(self.path.is_file)
        if self.replace:
            return await asyncio.to_thread(self._count_existing) if exists else 0
        if exists:
            self._existing = await asyncio.to_thread(coco.read, self.path)
        return 0

    def _count_existing(self) -> int:
        try:
            return len(coco.read(self.path)["annotations"])
        except InvalidArgument:
            return 0  # overwritten anyway

    def frame_name(self, frame: int) -> str:
        return f"frame {frame} ({self._names[frame]})"

    async def fetch(self, frame: int) -> bytes:
        name = self._names[frame]
        return await asyncio.to_thread(self._read, name)

    def _read(self, name: str) -> bytes:
        path = self.images / name
        if self.allowed_root is not None and not is_under(path.resolve(), self.allowed_root):
            raise InvalidArgument(
                f"image {name} resolves outside {self.allowed_root} ({FILE_TARGET_ROOT})"
            )
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"image {name} is gone: {exc}") from exc
        except OSError as exc:
            raise InvalidArgument(f"image {name} could not be read: {exc}") from exc

    async def write(
        self, results: Sequence[FrameResult], on_written: OnWritten | None = None
    ) -> int:
        """Held in memory until ``finish`` (not resumable: ``on_written`` is not called)."""
        images, annotations = self._doc["images"], self._doc["annotations"]
        written = 0
        for result in results:
            image_id = result.frame + 1
            images.append(
                coco_image(image_id, self._names[result.frame], result.width, result.height)
            )
            for label_id, det in result.found:
                ann = coco.annotation(
                    det, len(annotations) + 1, image_id, label_id, result.width, result.height
                )
                if ann is not None:
                    annotations.append(ann)
                    written += 1
        return written

    async def finish(self) -> None:
        doc = self._doc
        if self._existing is not None:
            doc = coco.merge(self._existing, doc)
        await asyncio.to_thread(coco.write, self.path, doc)

    async def close(self) -> None:
        return None
