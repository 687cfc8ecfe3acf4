"""classes.csv (preannotate.classes) as the trainer writes it, and the one-name-a-row form."""

from __future__ import annotations

import pytest

from preannotate.classes import classes_csv, parse_classes
from preannotate.errors import InvalidArgument


def test_the_products_format_round_trips():
    text = classes_csv(["cat", "dog, big", "ö"])
    assert text.splitlines()[0] == "id,name"
    assert parse_classes(text) == ["cat", "dog, big", "ö"]


def test_the_trainers_file_reads():
    assert parse_classes(classes_csv(["rect", "ellipse"])) == ["rect", "ellipse"]


def test_one_name_a_row_reads():
    assert parse_classes("rect\nellipse\n") == ["rect", "ellipse"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "lists no classes"),
        ("id,name\n", "lists no classes"),
        ("id,name\n2,cat\n", "ids must run 1, 2"),
        ("id,name\n1,cat,extra\n", "is not 'name' or 'id,name'"),
        ("id,name\n1, \n", "empty name"),
    ],
)
def test_bad_files_say_what_is_wrong(text, says):
    with pytest.raises(InvalidArgument, match=says):
        parse_classes(text)
