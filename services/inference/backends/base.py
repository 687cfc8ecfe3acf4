"""The serving backend interface and the types that cross it.

A backend takes decoded images (the encoded bytes ride along where a backend
prefers them) and answers the model's raw outputs per image, trimmed to
``num_detections``. Turning those into labelled, thresholded detections is
``services.inference.postprocess``'s job, the same for every backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from preannotate.errors import FailedPrecondition

if TYPE_CHECKING:
    from services.inference.registry import ModelEntry

#: Output names of an official.vision detection export.
BOXES = "detection_boxes"
SCORES = "detection_scores"
CLASSES = "detection_classes"
NUM = "num_detections"
MASKS = "detection_masks"
IMAGE_INFO = "image_info"


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One image for the model: RGB pixels, and the bytes it was decoded from."""

    pixels: np.ndarray  # (height, width, 3) uint8
    encoded: bytes | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(frozen=True, eq=False)
class RawOutput:
    """One image's detections as the model gave them."""

    boxes: np.ndarray  # (N, 4) [ymin, xmin, ymax, xmax], normalised or in input pixels
    scores: np.ndarray  # (N,)
    classes: np.ndarray  # (N,) int, 1..K
    masks: np.ndarray | None = None  # (N, h, w) per-box probabilities (Mask R-CNN)
    image_info: np.ndarray | None = None  # (4, 2): original, scaled size, scale, offset


@runtime_checkable
class Backend(Protocol):
    """Runs SavedModels. Implementations: ``InProcessBackend``, ``TfServingBackend``."""

    name: str

    async def start(self) -> None:
        """Open connections; contacts no server (a server that is down is not fatal here)."""

    async def close(self) -> None: ...

    async def sync(self) -> None:
        """At start, with the registry filled from storage: TF Serving is sent the
        whole model list (a restarted TF Serving has forgotten it); in-process
        does nothing (models load on first use)."""

    async def prepare(self, model: ModelEntry) -> None:
        """Make ``model`` servable now: TF Serving adds it to its config (keeping the
        others) and waits until it is AVAILABLE; in-process fetches it to the cache."""

    async def predict(self, model: ModelEntry, images: Sequence[ImageInput]) -> list[RawOutput]:
        """One ``RawOutput`` per image, in order. Images of different sizes may be
        mixed; the backend batches those of one size together."""

    def describe(self) -> dict[str, Any]:
        """What the backend holds now (for logs and tests)."""


def encoded_bytes(image: ImageInput) -> bytes:
    """The bytes the image came as; PNG-encoded from its pixels when it came without."""
    if image.encoded is not None:
        return image.encoded
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.pixels).save(buf, format="PNG")
    return buf.getvalue()


def size_groups(images: Sequence[ImageInput]) -> list[list[int]]:
    """Indices of ``images`` grouped by (height, width), in first-seen order.

    The exported signatures stack a batch into one tensor, so a batch must be
    of one size.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.pixels.shape), []).append(i)
    return list(groups.values())


def split_outputs(
    outputs: Mapping[str, np.ndarray], count: int, model_label: str
) -> list[RawOutput]:
    """Per-image ``RawOutput`` from a batch's output tensors."""
    missing = [k for k in (BOXES, SCORES, CLASSES) if k not in outputs]
    if missing:
        raise FailedPrecondition(
            f"model {model_label} gave no {', '.join(missing)} (outputs: {sorted(outputs)}); "
            "it is not an official.vision detection export"
        )
    boxes, scores, classes = outputs[BOXES], outputs[SCORES], outputs[CLASSES]
    if boxes.shape[0] != count:
        raise FailedPrecondition(
            f"model {model_label} answered {boxes.shape[0]} results for {count} images"
        )
    nums = outputs.get(NUM)
    masks = outputs.get(MASKS)
    info = outputs.get(IMAGE_INFO)
    out = []
    for i in range(count):
        n = int(nums[i]) if nums is not None else boxes.shape[1]
        out.append(
            RawOutput(
                boxes=np.asarray(boxes[i, :n], dtype=np.float32),
                scores=np.asarray(scores[i, :n], dtype=np.float32),
                classes=np.rint(np.asarray(classes[i, :n], dtype=np.float64)).astype(np.int64),
                masks=None if masks is None else np.asarray(masks[i, :n], dtype=np.float32),
                image_info=None if info is None else np.asarray(info[i], dtype=np.float32),
            )
        )
    return out
