"""Corrections of polygons and masks measured by the gateway (services/gateway/
corrections.py), the corrections metrics they move, and the promoted-version gauges
that promote and rollback set (services/gateway/metrics.py). Counts worked out by
hand; CVAT is a function that answers the job's annotations."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from preannotate import layout
from preannotate.storage import LocalStorage
from services.gateway import models
from services.gateway.corrections import CorrectionsDesk
from tests.gated import SET, finished_version, gate

NS, NAME, TASK = "corr-metrics", "cells", 40
MODEL = {"namespace": NS, "model": NAME}
CAT, DOG = 5, 6
SQUARE = [0, 0, 10, 0, 10, 10, 0, 10]  # pixels 0..9 x 0..9: 100
TRIANGLE = [0, 0, 10, 0, 0, 10]  # the pixels with x + y <= 8: 45, IoU 0.45 with SQUARE
LEFT_HALF = [0, *[5] * 20, 20, 0, 29, 9]  # a 10 x 10 box at x 20, its left 5 columns set


def shape(id_: int, frame: int, label: int, kind: str, points: list, source="auto") -> dict:
    return {"id": id_, "frame": frame, "label_id": label, "type": kind, "points": points,
            "source": source}  # fmt: skip


PROPOSED = [
    shape(1, 0, CAT, "polygon", SQUARE),  # reshaped to TRIANGLE: moved
    shape(2, 0, DOG, "mask", LEFT_HALF),  # relabelled CAT
    shape(3, 1, CAT, "polygon", [50, 50, 60, 50, 60, 60]),  # deleted
    shape(4, 1, CAT, "rectangle", [0, 0, 10, 10]),  # kept
    shape(5, 2, DOG, "mask", LEFT_HALF),  # kept (the second job)
]
JOBS = {
    # CVAT job 71, frames 0..1
    71: [
        shape(1, 0, CAT, "polygon", TRIANGLE, "manual"),
        shape(2, 0, CAT, "mask", LEFT_HALF),
        shape(4, 1, CAT, "rectangle", [0, 0, 10, 10]),
        shape(10, 1, CAT, "rectangle", [50, 50, 60, 60], "manual"),  # drawn
        shape(11, 1, CAT, "points", [3, 3], "manual"),  # not measured
    ],
    # CVAT job 72, frames 2..3: untouched
    72: [shape(5, 2, DOG, "mask", LEFT_HALF)],
}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"preannotate_gateway_{name}", {**MODEL, **labels}) or 0.0


def counters() -> dict[str, float]:
    kinds = {
        k: value("corrections_total", kind=k) for k in ("deleted", "drawn", "moved", "relabelled")
    }
    return {**kinds, "objects": value("corrected_objects_total"),
            "frames": value("corrected_frames_total")}  # fmt: skip


async def test_polygons_and_masks_are_measured_and_counted_once(tmp_path):
    storage = LocalStorage(tmp_path / "s")
    layout.create_proposal(storage, NS, NAME, TASK, {
        "job_id": "annotate-1", "task_id": TASK,
        "model": {"namespace": NS, "name": NAME, "version": 3}, "shapes": PROPOSED,
    })  # fmt: skip

    async def read(path: str, organization: str) -> dict:
        return {"shapes": JOBS[int(path.split("/")[3])]}

    desk = CorrectionsDesk(storage=storage, jobs=None, read=read)  # type: ignore[arg-type]
    policy = SimpleNamespace(namespace=NS, model_name=NAME, organization="")
    before = counters()
    record = await desk.job_completed(policy, task_id=TASK, cvat_job=71, start=0, stop=1)
    assert {k: record[k] for k in ("frames", "proposed", "final")} == {
        "frames": 2,
        "proposed": 4,
        "final": 4,
    }
    kinds = ("deleted", "drawn", "moved", "relabelled")
    assert [record[k] for k in kinds] == [1, 1, 1, 1]
    assert (record["per_frame"], record["per_100_objects"]) == (2.0, 100.0)
    moved = {k: counters()[k] - before[k] for k in before}
    assert moved == {**dict.fromkeys(kinds, 1.0), "objects": 4.0, "frames": 2.0}
    assert value("corrections_version") == 3.0
    assert value("corrections_per_100_objects") == 100.0

    # The same job delivered again: stored once, counted once.
    await desk.job_completed(policy, task_id=TASK, cvat_job=71, start=0, stop=1)
    assert counters()["objects"] - before["objects"] == 4.0
    # The next job of version 3 needed nothing: 4 corrections for 5 objects so far.
    record = await desk.job_completed(policy, task_id=TASK, cvat_job=72, start=2, stop=3)
    assert (record["final"], record["per_100_objects"]) == (1, 0.0)
    assert value("corrections_per_100_objects") == pytest.approx(80.0)
    assert counters()["objects"] - before["objects"] == 5.0


def test_promote_and_rollback_set_the_promoted_version_gauges(tmp_path):
    storage = LocalStorage(tmp_path / "s")
    scores = {1: 0.7, 2: 0.5}
    for version, score in scores.items():
        manifest = {"metrics": {"mAP@0.5": score}, "evaluation": {"set": SET}}
        finished_version(storage, NS, NAME, version, **manifest)
        gate(storage, NS, NAME, version, score, scores)  # 2 is refused: 0.5 < 0.7 - 0.02
    models.list_models(storage, NS)
    assert (value("promoted_version"), value("promoted_map")) == (1.0, 0.7)
    models.promote(storage, NS, NAME, 2, by="carol", reason="looks better")
    assert (value("promoted_version"), value("promoted_map")) == (2.0, 0.5)
    models.rollback(storage, NS, NAME, by="carol", reason="")
    assert (value("promoted_version"), value("promoted_map")) == (1.0, 0.7)
    assert not math.isnan(value("promoted_map"))
