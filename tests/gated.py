"""Test helpers for models with a promotion log: finished versions in storage, and
versions put through the gate (``preannotate.promotion``) as the trainer does."""

from __future__ import annotations

from typing import Any

from preannotate import promotion
from preannotate.storage import PrefixWriter

SET = "job-1"


def finished_version(storage, namespace: str, name: str, version: int, **manifest: Any) -> str:
    """A finished (trained) version: a file, then its manifest."""
    prefix = f"{namespace}/models/{name}/{version}/"
    with PrefixWriter(storage, prefix) as out:
        out.put("classes.csv", b"x")
        out.commit(manifest)
    return prefix


def gate(
    storage,
    namespace: str,
    name: str,
    version: int,
    score: float | None,
    scores: dict[int, float],
    tolerance: float = 0.02,
) -> promotion.Decision:
    """Put ``version`` (mAP@0.5 ``score`` on SET; None: not measured) through the gate;
    ``scores`` are the earlier versions' mAP@0.5 on SET."""
    metrics = {} if score is None else {"mAP@0.5": score}
    decision, _ = promotion.gate(
        storage,
        promotion.Measured(version, metrics, SET if metrics else ""),
        namespace=namespace,
        name=name,
        tolerance=tolerance,
        measured=lambda v: promotion.Measured(v, {"mAP@0.5": scores[v]}, SET),
    )
    return decision
