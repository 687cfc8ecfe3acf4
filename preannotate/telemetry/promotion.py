"""What the trainer and the gateway export of a model's promotion log: its figures.

A model (a name in a namespace) gets one series per figure, whatever its number
of versions: the version is a gauge's value, never a label, so the series do
not grow with every training (Prometheus' advice on label cardinality). The
figures come from the log alone (``preannotate.promotion``): each gate entry
keeps the metrics its version was judged on, so any reader of the log computes
the same figures. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from preannotate.promotion import (
    GATE_PROMOTED,
    GATE_REFUSED,
    METRIC,
    PROMOTED,
    ROLLED_BACK,
    PromotionState,
)


@dataclass(frozen=True)
class PromotionFigures:
    #: The promoted version (0: none) and its mAP@0.5 on the evaluation set it was
    #: judged on (NaN: none recorded, e.g. a version from before the gate).
    promoted_version: int
    promoted_map: float
    #: The newest version the gate decided (0: none) and its mAP@0.5 (NaN: not measured).
    candidate_version: int
    candidate_map: float
    #: Gate refusals since the last promotion (by the gate or a person) or rollback.
    refusals_in_a_row: int


def _score(entry: dict | None) -> float:
    metrics = (entry or {}).get("metrics") or {}
    value = metrics.get(METRIC) if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def figures(state: PromotionState) -> PromotionFigures:
    gated = [e for e in state.entries if e.get("action") in (GATE_PROMOTED, GATE_REFUSED)]
    candidate = gated[-1] if gated else None
    refusals = 0
    for entry in reversed(state.entries):
        action = entry.get("action")
        if action == GATE_REFUSED:
            refusals += 1
        elif action in (GATE_PROMOTED, PROMOTED, ROLLED_BACK):
            break
    promoted = state.gate_entry(state.promoted) if state.promoted else None
    return PromotionFigures(
        promoted_version=state.promoted,
        promoted_map=_score(promoted),
        candidate_version=int(candidate.get("version", 0)) if candidate else 0,
        candidate_map=_score(candidate),
        refusals_in_a_row=refusals,
    )
