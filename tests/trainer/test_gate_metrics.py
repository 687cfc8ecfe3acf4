"""The promotion gate's metrics (services/trainer/metrics.py): the decision counter
and the model's gate figures move as the gate promotes and refuses versions, and the
figures follow the log (preannotate/telemetry/promotion.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from preannotate import promotion
from preannotate.storage import LocalStorage
from preannotate.telemetry.promotion import PromotionFigures, figures
from services.trainer import handlers
from tests import gated
from tests.fakes import FakeContext
from tests.gated import SET, finished_version

NS, NAME = "gate-metrics", "birds"
MODEL = {"namespace": NS, "model": NAME}


def trained(storage, version: int, score: float | None):
    """A finished version of NS/NAME measured on evaluation set job-1 (None: not measured)."""
    metrics = {} if score is None else {"mAP@0.5": score}
    manifest = {"metrics": metrics, "evaluation": {"set": SET if metrics else ""}}
    prefix = finished_version(storage, NS, NAME, version, **manifest)
    return SimpleNamespace(
        namespace=NS, name=NAME, version=version, prefix=prefix, metrics=metrics, manifest=manifest
    )


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(f"preannotate_trainer_gate_{name}", MODEL)


def decisions(decision: str) -> float:
    value = REGISTRY.get_sample_value(
        "preannotate_trainer_promotion_decisions_total", {"decision": decision}
    )
    return value or 0.0


async def test_gate_figures_move_as_the_gate_promotes_and_refuses(tmp_path):
    storage = LocalStorage(tmp_path / "s")
    ctx = FakeContext(storage)
    settings = SimpleNamespace(promotion_tolerance=0.02)
    steps = [  # version, mAP@0.5, promoted?, then the figures after the decision
        (1, 0.60, True, dict(candidate_version=1, candidate_map=0.60, promoted_version=1)),
        (2, 0.50, False, dict(candidate_version=2, candidate_map=0.50, refusals_in_a_row=1)),
        (3, 0.57, False, dict(candidate_version=3, refusals_in_a_row=2, promoted_map=0.60)),
        (4, 0.59, True, dict(promoted_version=4, promoted_map=0.59, refusals_in_a_row=0)),
    ]
    for version, score, promoted, expected in steps:
        before = decisions("promoted"), decisions("refused")
        decision = await handlers._gate(ctx, trained(storage, version, score), settings)
        assert decision.promote is promoted, decision.reason
        moved = (decisions("promoted") - before[0], decisions("refused") - before[1])
        assert moved == ((1.0, 0.0) if promoted else (0.0, 1.0))
        for name, value in expected.items():
            assert gauge(name) == pytest.approx(value), (version, name)
    # A redelivered job keeps its decision: nothing counted again, the figures stand.
    before = decisions("promoted"), decisions("refused")
    await handlers._gate(ctx, trained(storage, 2, 0.50), settings)
    assert (decisions("promoted"), decisions("refused")) == before
    assert (gauge("candidate_version"), gauge("promoted_version")) == (4.0, 4.0)


def test_figures_of_a_log_with_a_person_s_overrule_and_an_unmeasured_candidate(tmp_path):
    storage = LocalStorage(tmp_path / "s")

    def gate(version: int, score: float | None, scores: dict[int, float]) -> None:
        gated.gate(storage, NS, NAME, version, score, scores, tolerance=0.0)

    scores = {1: 0.5, 2: 0.4}
    assert figures(promotion.read(storage, NS, NAME)).promoted_version == 0
    gate(1, 0.5, scores)
    gate(2, 0.4, scores)  # refused
    state = promotion.read(storage, NS, NAME)
    assert figures(state) == PromotionFigures(1, 0.5, 2, 0.4, 1)
    # A person promotes the refused version 2: the refusals in a row start again.
    for v in (1, 2):
        finished_version(storage, NS, NAME, v)
    state = promotion.promote(storage, NS, NAME, 2, by="carol")
    assert figures(state) == PromotionFigures(2, 0.4, 2, 0.4, 0)
    gate(3, None, scores)  # not measured: refused, its mAP unknown
    got = figures(promotion.read(storage, NS, NAME))
    assert (got.candidate_version, got.refusals_in_a_row, got.promoted_version) == (3, 1, 2)
    assert math.isnan(got.candidate_map)
    state = promotion.rollback(storage, NS, NAME, by="carol")
    assert figures(state).promoted_version == 1 and figures(state).refusals_in_a_row == 0
