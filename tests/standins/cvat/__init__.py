"""A CVAT stand-in for tests: the REST endpoints preannotate uses, with CVAT's shapes.

``CvatStandIn`` serves tasks, jobs, labels, data meta, frames and chunks, the
asynchronous COCO 1.0 export, job/task annotations (GET, PUT, PATCH), makes
tasks in CVAT's order (the row and ``create:task`` first, the data processed
later), refuses users without rights (403), and sends signed webhooks. ``make_shapes_dataset`` makes a small task's worth of frames
and shapes. See README.md beside this file for the whole API.
"""

from __future__ import annotations

from .data import make_shapes_dataset, shapes_labels
from .rle import decode_cvat_mask, encode_cvat_mask
from .server import SERVER_ORGANIZATION, CvatStandIn
from .webhooks import Delivery, signature

__all__ = [
    "SERVER_ORGANIZATION",
    "CvatStandIn",
    "Delivery",
    "decode_cvat_mask",
    "encode_cvat_mask",
    "make_shapes_dataset",
    "shapes_labels",
    "signature",
]
