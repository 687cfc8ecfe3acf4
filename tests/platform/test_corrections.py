"""The corrections measure (preannotate/corrections.py) on a hand-made example."""

from __future__ import annotations

import pytest

from preannotate.corrections import Box, Corrections, compare, compare_frame


def test_a_hand_made_job_counts_each_kind_of_correction():
    proposed = {
        0: [
            Box("cat", 0, 0, 10, 10),  # kept as is
            Box("dog", 20, 20, 30, 30),  # relabelled cat
            Box("cat", 50, 50, 60, 60),  # deleted: a false positive
        ],
        1: [Box("cat", 0, 0, 10, 10)],  # stretched to 0,0,10,12: IoU 100/120 < 0.9
    }
    final = {
        0: [
            Box("cat", 0, 0, 10, 10),
            Box("cat", 20, 20, 30, 30),
            Box("dog", 70, 70, 80, 80),  # drawn: a miss
        ],
        1: [Box("cat", 0, 0, 10, 12)],
        2: [Box("dog", 0, 0, 5, 5)],  # drawn on a frame the model left empty
    }
    got = compare(proposed, final, frames=range(4))  # frame 3: nothing either side
    assert got == Corrections(
        frames=4, proposed=4, final=5, deleted=1, drawn=2, moved=1, relabelled=1
    )
    assert (got.total, got.per_frame, got.per_100_objects) == (5, 1.25, 100.0)
    assert got.as_dict()["per_100_objects"] == 100.0
    assert Corrections.from_dict(got.as_dict()) == got


def test_shape_ids_pair_a_box_dragged_far_as_moved_not_deleted_and_drawn():
    before = [Box("cat", 0, 0, 10, 10, shape_id=7)]
    after = [Box("cat", 40, 40, 50, 50, shape_id=7)]
    assert compare_frame(before, after) == Corrections(1, 1, 1, 0, 0, 1, 0)
    anonymous = [Box("cat", 0, 0, 10, 10)], [Box("cat", 40, 40, 50, 50)]
    assert compare_frame(*anonymous) == Corrections(1, 1, 1, 1, 1, 0, 0)


def test_untouched_pre_annotation_needs_no_correction():
    boxes = {0: [Box("cat", 1, 1, 9, 9), Box("dog", 20, 20, 40, 40)]}
    got = compare(boxes, boxes)
    assert (got.total, got.per_100_objects) == (0, 0.0)


def test_a_cvat_rectangle_becomes_a_box_and_other_shapes_are_refused():
    shape = {"type": "rectangle", "points": [1, 2, 3, 4], "id": 5, "frame": 0}
    assert Box.from_shape(shape, "cat") == Box("cat", 1, 2, 3, 4, shape_id=5)
    with pytest.raises(ValueError, match="not a CVAT rectangle"):
        Box.from_shape({"type": "polygon", "points": [1, 2, 3, 4, 5, 6]}, "cat")
