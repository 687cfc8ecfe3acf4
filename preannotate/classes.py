"""classes.csv: a model's class names in class-id order.

The product's format, beside every dataset, checkpoint and SavedModel: a header
``id,name`` and one ``<id>,<name>`` row per class, ids 1..K in order; 0 is the
background and is never listed. The exporter and the trainer write it
(``classes_csv``), the converter reads it (``parse_classes``, which also takes
a file of one name a row). No TensorFlow here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from preannotate.errors import InvalidArgument

HEADER = ["id", "name"]


def classes_csv(classes: Sequence[str]) -> str:
    """The classes.csv text for ``classes`` (class id i + 1 is ``classes[i]``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for index, name in enumerate(classes, start=1):
        writer.writerow([index, name])
    return out.getvalue()


def read_classes_csv(text: str) -> list[str]:
    """The names of a classes.csv in exactly this format (``ValueError`` otherwise)."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if not rows or rows[0] != HEADER:
        raise ValueError("classes.csv must start with the header 'id,name'")
    names = []
    for expected, row in enumerate(rows[1:], start=1):
        if len(row) != 2 or row[0] != str(expected):
            raise ValueError(f"classes.csv row {expected} must be '{expected},<name>', got {row}")
        names.append(row[1])
    return names


def parse_classes(text: str) -> list[str]:
    """The class names of a classes.csv text; ``InvalidArgument`` says what is wrong."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(c.strip() for c in row)]
    if rows and [c.strip() for c in rows[0]] == HEADER:
        rows = rows[1:]
    names: list[str] = []
    for number, row in enumerate(rows, start=1):
        if len(row) == 1:
            names.append(row[0])
        elif len(row) == 2 and row[0].strip().isdigit():
            if int(row[0]) != number:
                raise InvalidArgument(
                    f"classes.csv row {number} has id {row[0].strip()}: ids must run 1, 2, ... "
                    "in order"
                )
            names.append(row[1])
        else:
            raise InvalidArgument(f"classes.csv row {number} is not 'name' or 'id,name': {row}")
    if not names:
        raise InvalidArgument("classes.csv lists no classes")
    if any(not name.strip() for name in names):
        raise InvalidArgument("classes.csv has a class with an empty name")
    return names
