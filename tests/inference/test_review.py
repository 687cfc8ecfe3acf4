"""The review ranking: frames where the model hesitated come first, and the CVAT
issue of a frame points at its most doubtful box."""

from __future__ import annotations

import pytest

from bench.review import mistakes
from services.inference import review
from services.inference.postprocess import Detected


def det(score: float, label: str = "cat", box=(0.1, 0.2, 0.3, 0.4)) -> Detected:
    return Detected(label, 1, score, box)


def test_a_frame_that_hesitated_outranks_confident_and_clearly_empty_ones():
    frames = {
        0: [det(0.97), det(0.92)],  # sure of both
        1: [det(0.95), det(0.52)],  # one box just above the threshold
        2: [det(0.96), det(0.47)],  # one just below: maybe a missed object
        3: [],  # nothing at all
        4: [det(0.9), det(0.03)],  # a low score far from the threshold
    }
    ranked = review.rank(frames, threshold=0.5)
    assert [d.frame for d in ranked] == [1, 2, 3, 0, 4]
    assert ranked[0].worst is frames[1][1] and ranked[1].worst is frames[2][1]
    assert ranked[2].doubt == review.EMPTY and ranked[2].worst is None
    assert ranked[3].doubt == ranked[4].doubt == 0.0
    assert [d.written for d in ranked] == [2, 1, 0, 2, 1]


def test_doubt_adds_up_over_the_band_and_the_empty_term_is_settable():
    many = review.frame_doubt(0, [det(0.5), det(0.5), det(0.625)], 0.5)
    assert many.doubt == pytest.approx(2.5)
    below = review.frame_doubt(1, [det(0.375)], 0.5)
    assert below.doubt == pytest.approx(0.5 + review.EMPTY)  # nothing written on it
    assert review.frame_doubt(1, [det(0.375)], 0.5, empty=0.0).doubt == pytest.approx(0.5)
    with pytest.raises(ValueError, match="width"):
        review.frame_doubt(0, [], 0.5, width=0)


def test_the_issue_points_at_the_doubtful_box_in_pixels_with_its_score():
    item = review.frame_doubt(7, [det(0.9), det(0.48, "dog", (0.5, 0.25, 0.75, 0.5))], 0.5)
    body = review.issue(31, item, (640, 480), 0.5)
    assert body["job"] == 31 and body["frame"] == 7
    assert body["position"] == [320.0, 120.0, 480.0, 240.0]
    assert "dog at score 0.48 (not written; threshold 0.50)" in body["message"]

    empty = review.issue(31, review.frame_doubt(8, [], 0.5), (640, 480), 0.5)
    assert empty["position"] == [0.0, 0.0, 640.0, 480.0]
    assert "nothing was found" in empty["message"]


def test_mistakes_count_wrong_boxes_and_missed_objects():
    truth = [("cat", (0.1, 0.1, 0.3, 0.3)), ("dog", (0.5, 0.5, 0.9, 0.9))]
    found = [
        det(0.9, "cat", (0.1, 0.1, 0.3, 0.31)),  # right
        det(0.8, "cat", (0.5, 0.5, 0.9, 0.9)),  # the dog, called a cat: wrong
        det(0.7, "cat", (0.11, 0.1, 0.3, 0.3)),  # the cat again: a duplicate, wrong
        det(0.2, "dog", (0.5, 0.5, 0.9, 0.9)),  # under the threshold: not written
    ]
    # two wrong boxes, and the dog is missed
    assert mistakes(found, truth, 0.5) == 3
    assert mistakes(found, truth, 0.1) == 2  # the dog box is written now
