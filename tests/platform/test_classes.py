"""classes.csv (preannotate.classes): the one parser, on every form it is written in."""

from __future__ import annotations

import pytest

from preannotate.classes import classes_csv, parse_classes
from preannotate.errors import InvalidArgument


def test_the_products_format_round_trips():
    text = classes_csv(["cat", "dog, big", "ö", 'say "hi"', " spaced "])
    assert text.splitlines()[:2] == ["id,name", "1,cat"]
    assert parse_classes(text) == ["cat", "dog, big", "ö", 'say "hi"', " spaced "]
    assert parse_classes(text.encode()) == parse_classes(text)


def test_the_seeds_labels_header_is_not_a_class():
    assert parse_classes("labels\nrect\nellipse\n") == ["rect", "ellipse"]
    assert parse_classes("Labels\r\nrect\r\n") == ["rect"]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("rect\nellipse\n", ["rect", "ellipse"]),
        ("name\ncat\n", ["cat"]),
        ("class\ncat\n", ["cat"]),
        ("label\ncat\n", ["cat"]),
        ("1,cat\n2,dog\n", ["cat", "dog"]),
        ("2,dog\n1,cat\n", ["cat", "dog"]),
        ("ID, Name\n1,cat\n", ["cat"]),
        ("\ufeffname\ncat\n", ["cat"]),
        ("\ufeffid,name\n1,cat\n", ["cat"]),
        ("id,name\n\n1,cat\n\n2,dog\n", ["cat", "dog"]),
    ],
)
def test_the_other_forms_read(text, names):
    assert parse_classes(text) == names


def test_a_byte_order_mark_in_bytes_reads():
    assert parse_classes(b"\xef\xbb\xbfname\ncat\n") == ["cat"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "lists no classes"),
        ("id,name\n", "lists no classes"),
        ("labels\n", "lists no classes"),
        ("id,name\n2,cat\n", "ids must run 1, 2"),
        ("1,cat\n3,dog\n", "without gaps"),
        ("1,cat\n1,dog\n", "without gaps or repeats"),
        ("0,background\n1,cat\n", "the background, is never listed"),
        ("id,name\n1,cat,extra\n", "must all be 'id,name' or all one 'name'; row 1 is"),
        ("cat\ndog, big\n", "row 1 is \\['cat'\\]"),
        ("id,name\n1, \n", "empty name"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_files_say_what_is_wrong(text, says):
    with pytest.raises(InvalidArgument, match=says):
        parse_classes(text)
