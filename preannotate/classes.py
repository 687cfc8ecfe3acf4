"""classes.csv: a model's class names in class-id order, written one way, read one way.

The product's format, beside every dataset, checkpoint and SavedModel: a header
``id,name`` and one ``<id>,<name>`` row per class, ids 1..K; 0 is the
background and is never listed. The exporter and the trainer write it
(``classes_csv``). Every reader (converter, inference) uses ``parse_classes``,
which also takes the other forms such a file comes in:

- ``id,name`` rows without the header, in any order, ids 1..K without gaps;
- one name a row, with or without a one-cell header ``labels`` (the seed's
  format), ``label``, ``name`` or ``class``: a class of exactly that name
  cannot be the first row of such a file;
- a UTF-8 byte order mark, blank rows.

Names are kept as written (a name " cat" stays " cat"), so a list written by
``classes_csv`` reads back equal. No TensorFlow here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from preannotate.errors import InvalidArgument

HEADER = ["id", "name"]
#: One-cell header rows of the one-name-a-row form (compared lower-case, stripped).
NAME_HEADERS = frozenset({"labels", "label", "name", "class"})


def classes_csv(classes: Sequence[str]) -> str:
    """The classes.csv text for ``classes`` (class id i + 1 is ``classes[i]``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for index, name in enumerate(classes, start=1):
        writer.writerow([index, name])
    return out.getvalue()


def parse_classes(text: str | bytes) -> list[str]:
    """The class names of a classes.csv (any form above); ``InvalidArgument`` says
    what is wrong."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"classes.csv is not UTF-8: {exc}") from None
    text = text.removeprefix("\ufeff")
    rows = [row for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
    if rows and _is_header(rows[0]):
        rows = rows[1:]
    if not rows:
        raise InvalidArgument("classes.csv lists no classes")
    one_name_a_row = all(len(row) == 1 for row in rows)
    names = [row[0] for row in rows] if one_name_a_row else _numbered(rows)
    if any(not name.strip() for name in names):
        raise InvalidArgument("classes.csv has a class with an empty name")
    return names


def _is_header(row: list[str]) -> bool:
    cells = [cell.strip().lower() for cell in row]
    return cells == HEADER or (len(cells) == 1 and cells[0] in NAME_HEADERS)


def _numbered(rows: list[list[str]]) -> list[str]:
    """The names of ``id,name`` rows, by id; the ids must be 1..K."""
    for number, row in enumerate(rows, start=1):
        if len(row) != 2 or not row[0].strip().isdigit():
            raise InvalidArgument(
                f"classes.csv rows must all be 'id,name' or all one 'name'; row {number} is {row}"
            )
    by_id = sorted(rows, key=lambda row: int(row[0]))
    ids = [int(row[0]) for row in by_id]
    if ids != list(range(1, len(ids) + 1)):
        raise InvalidArgument(
            f"classes.csv ids must run 1, 2, ... {len(ids)} without gaps or repeats "
            f"(0, the background, is never listed); got {[int(row[0]) for row in rows]}"
        )
    return [row[1] for row in by_id]
