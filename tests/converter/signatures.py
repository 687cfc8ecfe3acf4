"""The two serving signatures compared on one image, detections matched, not by position.

Two detections whose scores tie within float noise can swap places between the
batched ``serving_default`` and the one-image ``serving_image_tensor`` (a clean
CI run saw Mask R-CNN's 8th and 9th swap), so the detections are matched as the
converter's parity check matches them (``services.converter.parity``): same
class, box and score within the tolerance, masks too.
"""

from __future__ import annotations

import numpy as np

from services.converter.parity import ParityReport, compare_image

KEYS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


def assert_same_detections(by_bytes, index: int, by_tensor, *, masks: bool, tolerance: float):
    """Image ``index`` of the batched outputs against the one-image outputs."""
    keys = KEYS + (("detection_masks",) if masks else ())
    batched = {f"bytes/{k}": np.asarray(by_bytes[k])[index : index + 1] for k in keys}
    single = {f"tensor/{k}": np.asarray(by_tensor[k]) for k in keys}
    report = ParityReport(tolerance=tolerance)
    compare_image(report, batched, single, "bytes", "tensor", f"image {index}", masks)
    count = int(batched["bytes/num_detections"].reshape(-1)[0])
    assert report.ok, report.message()
    assert report.detections + report.cutoff_swaps == count, report.summary()
