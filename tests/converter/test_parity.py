"""The parity comparison (NumPy only): what it accepts and what it reports."""

from __future__ import annotations

import numpy as np

from services.converter.parity import compare

SIGNATURES = {"bytes": "serving_default"}


def outputs(prefix, boxes, scores, classes, masks=None, n=None):
    boxes = np.asarray(boxes, np.float32)
    count = len(scores) if n is None else n
    out = {
        f"{prefix}/detection_boxes": boxes[None],
        f"{prefix}/detection_scores": np.asarray(scores, np.float32)[None],
        f"{prefix}/detection_classes": np.asarray(classes, np.int32)[None],
        f"{prefix}/num_detections": np.asarray([count], np.int32),
    }
    if masks is not None:
        out[f"{prefix}/detection_masks"] = np.asarray(masks, np.float32)[None]
    return out


BOXES = [[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8], [0.0, 0.0, 0.3, 0.2]]
SCORES = [0.9, 0.6, 0.3]
CLASSES = [1, 2, 1]


def run(reference, exported, tolerance=1e-3, masks=False):
    return compare(
        reference, exported, images=1, signatures=SIGNATURES, tolerance=tolerance, masks=masks
    )


def test_equal_outputs_pass():
    report = run(outputs("0", BOXES, SCORES, CLASSES), outputs("bytes/0", BOXES, SCORES, CLASSES))
    assert report.ok and report.detections == 3 and report.max_box_diff == 0.0


def test_small_differences_within_tolerance_pass_and_are_measured():
    moved = np.asarray(BOXES) + 4e-4
    report = run(
        outputs("0", BOXES, SCORES, CLASSES),
        outputs("bytes/0", moved, np.asarray(SCORES) - 2e-4, CLASSES),
    )
    assert report.ok
    assert abs(report.max_box_diff - 4e-4) < 1e-6 and abs(report.max_score_diff - 2e-4) < 1e-6


def test_a_moved_box_fails_with_the_difference_in_the_message():
    moved = [list(b) for b in BOXES]
    moved[1][2] += 0.05
    report = run(outputs("0", BOXES, SCORES, CLASSES), outputs("bytes/0", moved, SCORES, CLASSES))
    assert not report.ok
    message = report.message()
    assert "image 0 through serving_default" in message
    assert "class 2 (score 0.6000) is off by 0.050000 in its box" in message
    assert "tolerance 0.001" in message


def test_a_changed_score_or_class_fails():
    report = run(
        outputs("0", BOXES, SCORES, CLASSES), outputs("bytes/0", BOXES, [0.9, 0.5, 0.3], CLASSES)
    )
    assert not report.ok and "0.100000 in its score" in report.message()
    report = run(outputs("0", BOXES, SCORES, CLASSES), outputs("bytes/0", BOXES, SCORES, [1, 1, 1]))
    assert not report.ok and "class 1 (score 0.6000) is off by 0.600000" in report.message()
    report = run(outputs("0", BOXES, SCORES, CLASSES), outputs("bytes/0", BOXES, SCORES, [3, 2, 1]))
    assert not report.ok and "class 3 (score 0.9000) has no counterpart" in report.message()


def test_a_different_number_of_detections_fails():
    report = run(
        outputs("0", BOXES, SCORES, CLASSES), outputs("bytes/0", BOXES, SCORES, CLASSES, n=2)
    )
    assert not report.ok and "2 detections, the checkpoint gives 3" in report.message()


def test_tied_scores_in_another_order_match():
    boxes = [BOXES[0], BOXES[1], BOXES[2]]
    scores = [0.5, 0.5, 0.5]
    report = run(
        outputs("0", boxes, scores, [1, 1, 1]),
        outputs("bytes/0", boxes[::-1], scores, [1, 1, 1]),
    )
    assert report.ok and report.detections == 3 and report.cutoff_swaps == 0


def test_a_tie_at_the_cut_off_may_swap_which_detection_made_the_list():
    reference = outputs("0", [BOXES[0], BOXES[1]], [0.9, 0.2], [1, 1])
    swapped = outputs("bytes/0", [BOXES[0], BOXES[2]], [0.9, 0.2 + 1e-5], [1, 1])
    report = run(reference, swapped)
    assert report.ok and report.cutoff_swaps == 1 and report.detections == 1
    # Above the cut-off, another box is a difference.
    high = outputs("0", [BOXES[0], BOXES[1]], [0.9, 0.8], [1, 1])
    other = outputs("bytes/0", [BOXES[2], BOXES[1]], [0.9, 0.8], [1, 1])
    assert not run(high, other).ok


def test_masks_are_compared():
    masks = np.zeros((3, 4, 4), np.float32)
    changed = masks.copy()
    changed[0, 1, 1] = 0.25
    ok = run(
        outputs("0", BOXES, SCORES, CLASSES, masks),
        outputs("bytes/0", BOXES, SCORES, CLASSES, masks),
        masks=True,
    )
    assert ok.ok and ok.max_mask_diff == 0.0
    bad = run(
        outputs("0", BOXES, SCORES, CLASSES, masks),
        outputs("bytes/0", BOXES, SCORES, CLASSES, changed),
        masks=True,
    )
    assert not bad.ok and "mask of the class 1 detection differs by 0.250000" in bad.message()


def test_padding_past_num_detections_is_ignored():
    padded = [*BOXES, [0.7, 0.7, 0.9, 0.9]]
    report = run(
        outputs("0", padded, [*SCORES, 0.0], [*CLASSES, 0], n=3),
        outputs("bytes/0", [*BOXES, [0, 0, 0, 0]], [*SCORES, 0.0], [*CLASSES, 0], n=3),
    )
    assert report.ok and report.detections == 3
