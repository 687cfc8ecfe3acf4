"""The class list as label_map.pbtxt (classes.csv: preannotate.classes).

``label_map.pbtxt`` is the TF Object Detection API's StringIntLabelMap text
format, one ``item { id: N name: "..." }`` per class; ``classes.csv`` has the
header ``id,name`` and one row per class. Class id i + 1 is ``classes[i]``; 0
is the background and is written in neither.
"""

from __future__ import annotations

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
