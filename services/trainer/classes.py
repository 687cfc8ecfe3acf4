"""classes.csv: the class names of a model, beside its checkpoints.

The same format as the dataset's (the exporter's): a header ``id,name`` and
one ``<id>,<name>`` row per class, ids 1..K in order; 0 is the background and
is not listed. A reader that takes the last column after the header gets the
names in id order.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

HEADER = ["id", "name"]


def classes_csv(classes: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for index, name in enumerate(classes, start=1):
        writer.writerow([index, name])
    return out.getvalue()


def read_classes_csv(text: str) -> list[str]:
    """The names of a classes.csv in this format, in id order."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if not rows or rows[0] != HEADER:
        raise ValueError("classes.csv must start with the header 'id,name'")
    names = []
    for expected, row in enumerate(rows[1:], start=1):
        if len(row) != 2 or row[0] != str(expected):
            raise ValueError(f"classes.csv row {expected} must be '{expected},<name>', got {row}")
        names.append(row[1])
    return names
