"""The parity check: the exported model against the restored checkpoint model (NumPy only).

For every image and each signature, the detections of the export are matched
to the reference's one by one: same class, and the largest of the box and
score differences at most the tolerance. Matching (rather than comparing
position by position) keeps two detections whose scores tie within float
noise from failing the check by swapping places. The number of detections must
be equal; masks of matched detections are compared too. Where the last
places of the list hold scores that tie within the tolerance, which of the
tied detections made the list can differ by float noise: an unmatched
detection on each side, both scoring within the tolerance of the list's lowest
score, counts as such a swap at the cut-off, not as a difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

MAX_LISTED = 5


@dataclass
class ParityReport:
    tolerance: float
    images: int = 0
    detections: int = 0
    max_box_diff: float = 0.0
    max_score_diff: float = 0.0
    max_mask_diff: float = 0.0
    #: Detections that swapped places with a tied one at the cut-off of the list.
    cutoff_swaps: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, float | int]:
        return {
            "tolerance": self.tolerance,
            "images": self.images,
            "detections": self.detections,
            "max_box_diff": round(self.max_box_diff, 8),
            "max_score_diff": round(self.max_score_diff, 8),
            "max_mask_diff": round(self.max_mask_diff, 8),
            "cutoff_swaps": self.cutoff_swaps,
        }

    def message(self) -> str:
        listed = "; ".join(self.problems[:MAX_LISTED])
        more = len(self.problems) - MAX_LISTED
        return (
            f"the exported SavedModel differs from the restored checkpoint "
            f"(tolerance {self.tolerance:g}): {listed}" + (f"; and {more} more" if more > 0 else "")
        )


def _detections(outputs: Mapping[str, np.ndarray], key: str, masks: bool):
    count = int(np.asarray(outputs[f"{key}/num_detections"]).reshape(-1)[0])
    boxes = np.asarray(outputs[f"{key}/detection_boxes"])[0, :count]
    scores = np.asarray(outputs[f"{key}/detection_scores"])[0, :count]
    classes = np.asarray(outputs[f"{key}/detection_classes"])[0, :count].astype(np.int64)
    mask = np.asarray(outputs[f"{key}/detection_masks"])[0, :count] if masks else None
    return count, boxes, scores, classes, mask


def compare_image(
    report: ParityReport,
    reference: Mapping[str, np.ndarray],
    exported: Mapping[str, np.ndarray],
    ref_key: str,
    exp_key: str,
    where: str,
    masks: bool,
) -> None:
    """Match one image's exported detections to the reference's; record what differs."""
    tol = report.tolerance
    n_ref, r_boxes, r_scores, r_classes, r_masks = _detections(reference, ref_key, masks)
    n_exp, e_boxes, e_scores, e_classes, e_masks = _detections(exported, exp_key, masks)
    if n_ref != n_exp:
        report.problems.append(f"{where}: {n_exp} detections, the checkpoint gives {n_ref}")
        return
    used = np.zeros(n_ref, dtype=bool)
    cutoff = float(r_scores.min()) + tol if n_ref else 0.0
    unmatched: list[str] = []
    at_cutoff = 0
    for i in np.argsort(-e_scores, kind="stable"):
        candidates = np.flatnonzero((r_classes == e_classes[i]) & ~used)
        if candidates.size == 0:
            at_cutoff += int(e_scores[i] <= cutoff)
            unmatched.append(
                f"{where}: detection of class {e_classes[i]} (score {e_scores[i]:.4f}) "
                "has no counterpart of that class"
            )
            continue
        box_diff = np.abs(r_boxes[candidates] - e_boxes[i]).max(axis=1)
        score_diff = np.abs(r_scores[candidates] - e_scores[i])
        worst = np.maximum(box_diff, score_diff)
        best = int(np.argmin(worst))
        j = int(candidates[best])
        if worst[best] > tol:
            at_cutoff += int(e_scores[i] <= cutoff)
            unmatched.append(
                f"{where}: detection of class {e_classes[i]} (score {e_scores[i]:.4f}) is off "
                f"by {float(box_diff[best]):.6f} in its box and "
                f"{float(score_diff[best]):.6f} in its score"
            )
            continue
        used[j] = True
        report.detections += 1
        report.max_box_diff = max(report.max_box_diff, float(box_diff[best]))
        report.max_score_diff = max(report.max_score_diff, float(score_diff[best]))
        if masks:
            mask_diff = float(np.abs(r_masks[j] - e_masks[i]).max())
            report.max_mask_diff = max(report.max_mask_diff, mask_diff)
            if mask_diff > tol:
                report.problems.append(
                    f"{where}: mask of the class {e_classes[i]} detection differs by {mask_diff:.6f}"
                )
    if not unmatched:
        return
    ref_at_cutoff = int((r_scores[~used] <= cutoff).sum())
    if at_cutoff == len(unmatched) and ref_at_cutoff == len(unmatched):
        report.cutoff_swaps += len(unmatched)
    else:
        report.problems.extend(unmatched)


def compare(
    reference: Mapping[str, np.ndarray],
    exported: Mapping[str, np.ndarray],
    *,
    images: int,
    signatures: Mapping[str, str],
    tolerance: float,
    masks: bool,
) -> ParityReport:
    """Compare every image under each exported key prefix (``{"bytes": "serving_default"}``)."""
    report = ParityReport(tolerance=tolerance, images=images)
    for prefix, signature in signatures.items():
        for i in range(images):
            compare_image(
                report,
                reference,
                exported,
                str(i),
                f"{prefix}/{i}",
                f"image {i} through {signature}",
                masks,
            )
    return report
