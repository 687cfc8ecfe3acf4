"""classes.csv: the class names of a model, in class-id order (id 1 is the first row).

The product's format (the exporter's and the trainer's): a header ``id,name``
and one ``<id>,<name>`` row per class, ids 1..K in order; 0 is the background
and never listed. A file of one name a row (no header) is read too. Read
without TensorFlow by the service and by the worker.
"""

from __future__ import annotations

import csv
import io

from preannotate.errors import InvalidArgument

HEADER = ["id", "name"]


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


def render_classes(names: list[str]) -> bytes:
    """A classes.csv for ``names`` in the product's format (header ``id,name``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for number, name in enumerate(names, start=1):
        writer.writerow([number, name])
    return buf.getvalue().encode()
