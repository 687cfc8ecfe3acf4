"""The class list as files: label_map.pbtxt and classes.csv.

``label_map.pbtxt`` is the TF Object Detection API's StringIntLabelMap text
format, one ``item { id: N name: "..." }`` per class; ``classes.csv`` has the
header ``id,name`` and one row per class. Class id i + 1 is ``classes[i]``; 0
is the background and is written in neither.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence


def _pbtxt_string(value: str) -> str:
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def label_map_pbtxt(classes: Sequence[str]) -> str:
    items = [
        f"item {{\n  id: {index}\n  name: {_pbtxt_string(name)}\n}}\n"
        for index, name in enumerate(classes, start=1)
    ]
    return "\n".join(items)


def classes_csv(classes: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "name"])
    for index, name in enumerate(classes, start=1):
        writer.writerow([index, name])
    return out.getvalue()


def read_classes_csv(text: str) -> list[str]:
    """The class names of a classes.csv, in id order (checks ids are 1..K)."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != ["id", "name"]:
        raise ValueError("classes.csv must start with the header 'id,name'")
    names = []
    for expected, row in enumerate(rows[1:], start=1):
        if len(row) != 2 or row[0] != str(expected):
            raise ValueError(f"classes.csv row {expected} must be '{expected},<name>', got {row}")
        names.append(row[1])
    return names
