"""A request that sets no threshold gets its model's suggested one.

The trainer suggests a threshold from the validation split (``suggested_threshold``
in the model's metrics; ``services.trainer.evaluation``); inference uses it for a
Predict, a Nuclio call or an annotation run whose threshold is 0, and its
configured default for a model without one.
"""

from __future__ import annotations

import pytest

from preannotate.modelmetrics import SUGGESTED_THRESHOLD
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2
from tests.inference.helpers import make_settings, publish_model, start_app
from tests.standins.cvat import make_shapes_dataset

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def images():
    return [data for _, data in make_shapes_dataset(6, size=(160, 120), seed=91)[0]]


async def test_a_request_without_threshold_gets_the_models_suggestion(
    retinanet_dir, images, tmp_path
):
    # its own storage and service: the module's model listing stays as it is
    storage = LocalStorage(tmp_path / "storage")
    publish_model(storage, retinanet_dir, name="plain")  # trained before suggestions
    app, _ = await start_app(make_settings(tmp_path), storage)
    try:

        async def scores(name: str, threshold: float) -> list[list[float]]:
            ref = common_pb2.ModelRef(namespace="default", name=name)
            found = [(await app.predict(ref, image, threshold))[3] for image in images]
            return [sorted(d.score for d in frame) for frame in found]

        everything = [s for frame in await scores("plain", 0.05) for s in frame]
        # a suggestion with detections between it and the default (0.5), on either side
        below = [s for s in everything if s < 0.5]
        suggested = round(min(below), 3) if below else round(max(everything), 3)
        assert everything and suggested != 0.5
        metrics = {SUGGESTED_THRESHOLD: suggested}
        publish_model(storage, retinanet_dir, name="suggests", metrics=metrics)
        assert await scores("suggests", 0) == await scores("suggests", suggested)
        assert await scores("suggests", 0) != await scores("suggests", 0.5)
        # a model that suggests none gets the configured default; a threshold set wins
        assert await scores("plain", 0) == await scores("plain", 0.5)
        assert await scores("suggests", 0.05) == await scores("plain", 0.05)
    finally:
        await app.stop()
