"""How ``services.inference.service.build`` wires the routes for the runner."""

from __future__ import annotations

from preannotate import topics
from services.inference.service import build
from tests.inference.helpers import make_settings


def test_model_converted_reaches_every_replica_and_leaves_job_status_alone(tmp_path):
    routes = {r.topic: r for r in build(make_settings(tmp_path)).routes}
    converted = routes[topics.MODEL_CONVERTED]
    assert (converted.broadcast, converted.status, converted.once) == (True, False, False)
    requested = routes[topics.ANNOTATION_REQUESTED]
    assert (requested.broadcast, requested.status, requested.once) == (False, True, True)
