"""Two inference replicas learn a new model from one ``model.converted``.

Each replica is a runner of its own (its own Kafka client, as separate processes
would be) over the real broker with the production routes (``model.converted``
broadcast: no consumer group, each replica reads every record), the storage
they share, and a TF Serving stand-in of its own. After one event both list the
model, both TF Servings were reloaded with it, and both serve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from preannotate import events, topics
from preannotate.bus import make_bus
from preannotate.runner import serve
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2
from services.inference.service import build
from tests.inference.helpers import make_settings, publish_model
from tests.standins.cvat import make_shapes_dataset
from tests.standins.tfserving import AVAILABLE, TfServingStandIn

pytestmark = pytest.mark.timeout(300)


async def until(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        await asyncio.sleep(0.1)


async def test_one_model_converted_reaches_every_replica_and_its_tf_serving(
    kafka_bootstrap, tmp_path, retinanet_dir, unique_name
):
    storage = LocalStorage(tmp_path / "storage")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    stops: list[asyncio.Event] = []
    runners: list[asyncio.Task] = []
    servings: list[TfServingStandIn] = []
    apps = []
    converter = None
    try:
        for i in range(2):
            serving = TfServingStandIn(poll_seconds=0.1)
            await serving.start()
            servings.append(serving)
            settings = make_settings(
                tmp_path / f"replica-{i}",
                bus="kafka",
                auth="none",
                kafka_bootstrap=kafka_bootstrap,
                kafka_topic_prefix=prefix,
                kafka_partitions=2,
                kafka_client_id=unique_name("inf"),
                backend="tfserving",
                tfserving_address=serving.address,
                metrics_port=0,
            )
            started: asyncio.Future = asyncio.get_running_loop().create_future()
            stop = asyncio.Event()
            stops.append(stop)
            spec = build(settings)
            runners.append(
                asyncio.create_task(
                    serve([(spec, settings)], storage=storage, stop=stop, started=started)
                )
            )
            await asyncio.wait(
                [started, runners[-1]], timeout=120, return_when=asyncio.FIRST_COMPLETED
            )
            if runners[-1].done():
                runners[-1].result()  # the reason it did not start
            await asyncio.wait_for(started, 1)
            apps.append(spec.grpc[0].servicer.app)
        assert [a.models() for a in apps] == [[], []]

        # the converter finishes a model: one event, on the topic
        event = publish_model(storage, retinanet_dir, name="shapes", version=2, job_id="train-2")
        converter = make_bus(settings)
        await converter.start()
        await events.publish(converter, topics.MODEL_CONVERTED, event, source="converter")

        def learnt() -> bool:
            return all([m.label for m in a.models()] == ["default/shapes/2"] for a in apps) and all(
                "default.shapes" in s.models
                and 2 in s.models["default.shapes"].versions
                and s.models["default.shapes"].versions[2].state == AVAILABLE
                for s in servings
            )

        await until(learnt, 120, "both replicas and both TF Servings to have default/shapes/2")
        for serving in servings:
            assert serving.calls["HandleReloadConfigRequest"] >= 1

        # each replica serves it through its own TF Serving
        (_name, image), *_ = make_shapes_dataset(1, size=(128, 128), seed=5)[0]
        ref = common_pb2.ModelRef(namespace="default", name="shapes", version=2)
        for app, serving in zip(apps, servings, strict=True):
            model, width, _height, _found = await app.predict(ref, image, 0.5)
            assert model.label == "default/shapes/2" and width == 128
            assert [b[:2] for b in serving.predict_batches] == [("default.shapes", 2)]
    finally:
        for stop in stops:
            stop.set()
        for runner in runners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 60)
        if converter is not None:
            await converter.stop()
        for serving in servings:
            await serving.stop()
