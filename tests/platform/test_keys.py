"""Safe key building: one pattern for names, '..' and separators refused."""

from __future__ import annotations

import pytest

from preannotate import keys
from preannotate.errors import UnsafeName


def test_layout_of_design():
    assert keys.dataset_prefix("team-a", "job-1") == "team-a/datasets/job-1/"
    assert keys.model_prefix("team-a", "dogs", 3) == "team-a/models/dogs/3/"
    assert keys.serving_base("team-a", "dogs") == "team-a/serving/dogs"
    assert keys.serving_prefix("team-a", "dogs", 3) == "team-a/serving/dogs/3/"
    assert keys.job_prefix("team-a", "job-1") == "team-a/jobs/job-1/"


@pytest.mark.parametrize(
    "name", ["..", ".", "a/b", "/a", "a\\b", "", "A", "-a", "a-", "a.b", "x" * 64, "a b", "é"]
)
def test_bad_names_are_refused_with_the_rule(name):
    with pytest.raises(UnsafeName, match="lower-case letters, digits"):
        keys.dataset_prefix("team-a", name)
    with pytest.raises(UnsafeName):
        keys.model_prefix(name, "m", 1)


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0])
def test_versions_are_whole_numbers_from_one(version):
    with pytest.raises(UnsafeName):
        keys.model_prefix("team-a", "m", version)


def test_join_checks_the_relative_part():
    assert keys.join("a/b/", "c/d.txt") == "a/b/c/d.txt"
    for bad in ("../x", "c/../../x", "/etc", "c//d", ".env"):
        with pytest.raises(UnsafeName):
            keys.join("a/b/", bad)


def test_the_default_model_name_names_the_task_when_there_is_one():
    """One rule for gateway and trainer: task 0 (a dataset from a file) adds no '-task0'."""
    assert keys.default_model_name("ssd-mobilenet-v2-coco", 7) == "ssd-mobilenet-v2-coco-task7"
    assert keys.default_model_name("ssd-mobilenet-v2-coco", 0) == "ssd-mobilenet-v2-coco"
    assert keys.check_name(keys.default_model_name("maskrcnn", 0)) == "maskrcnn"
