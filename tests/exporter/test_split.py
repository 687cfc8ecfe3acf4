"""The deterministic train/val split."""

from __future__ import annotations

import pytest

from preannotate.errors import InvalidArgument
from services.exporter.split import TRAIN, VAL, assign_splits


def test_same_names_same_split_in_any_order():
    names = [f"frame_{i:06d}.jpg" for i in range(200)]
    first = dict(zip(names, assign_splits(names, [True] * 200, 0.1), strict=True))
    shuffled = list(reversed(names))
    second = dict(zip(shuffled, assign_splits(shuffled, [True] * 200, 0.1), strict=True))
    assert first == second
    assert 8 <= list(first.values()).count(VAL) <= 35


def test_a_grown_task_keeps_earlier_images_where_they_were():
    names = [f"img{i}.png" for i in range(100)]
    before = dict(zip(names, assign_splits(names, [True] * 100, 0.2), strict=True))
    more = names + [f"new{i}.png" for i in range(50)]
    after = dict(zip(more, assign_splits(more, [True] * 150, 0.2), strict=True))
    assert all(after[n] == before[n] for n in names)


def test_at_least_one_annotated_image_in_val_and_in_train():
    for n in range(2, 8):
        names = [f"a{i}.jpg" for i in range(n)]
        splits = assign_splits(names, [True] * n, 0.01)
        assert splits.count(VAL) >= 1 and splits.count(TRAIN) >= 1
        splits = assign_splits(names, [True] * n, 0.99)
        assert splits.count(VAL) >= 1 and splits.count(TRAIN) >= 1


def test_the_val_image_is_an_annotated_one():
    names = [f"a{i}.jpg" for i in range(10)]
    annotated = [i in (3, 7) for i in range(10)]
    splits = assign_splits(names, annotated, 0.01)
    assert {splits[3], splits[7]} == {TRAIN, VAL}


def test_fewer_than_two_annotated_images_is_refused():
    with pytest.raises(InvalidArgument, match=r"at least 2 annotated images.*has 1"):
        assign_splits(["a.jpg", "b.jpg"], [True, False], 0.1)
