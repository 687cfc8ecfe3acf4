"""The serving version is the promoted one: the Nuclio function list (CVAT's dialog)
and lookups without a version (``annotate``, ``predict``, Nuclio invocations) follow
promote and rollback; a refused candidate is served only when asked for by number."""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from preannotate import promotion
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2
from services.inference.nuclio import NuclioApi
from tests.inference.helpers import make_settings, png, publish_model, start_app

pytestmark = pytest.mark.tf

NS, NAME = "default", "shapes"


def gate(storage, version: int, score: float) -> promotion.Decision:
    scores = {1: 0.6, 2: 0.2, 3: 0.1}
    decision, _ = promotion.gate(
        storage,
        promotion.Measured(version, {"mAP@0.5": score}, "job-1"),
        namespace=NS,
        name=NAME,
        tolerance=0.02,
        measured=lambda v: promotion.Measured(v, {"mAP@0.5": scores[v]}, "job-1"),
    )
    return decision


@pytest.fixture(scope="module")
def storage(tmp_path_factory, retinanet_dir):
    storage = LocalStorage(tmp_path_factory.mktemp("promotion") / "storage")
    for version in (1, 2):
        publish_model(storage, retinanet_dir, name=NAME, version=version)
        # the trained version's folder, as promote checks it is finished
        storage.put(f"{NS}/models/{NAME}/{version}/manifest.json", b'{"kind": "model"}')
    publish_model(storage, retinanet_dir, name="never-gated", version=1)
    publish_model(storage, retinanet_dir, name="never-gated", version=2)
    assert gate(storage, 1, 0.6).promote
    assert not gate(storage, 2, 0.2).promote
    return storage


@pytest.fixture
async def served(storage, tmp_path):
    app, _ = await start_app(make_settings(tmp_path), storage)
    app.registry.promotion_ttl = 0.0  # a lookup reads the state every time
    web_app = web.Application()
    web_app.add_routes(NuclioApi(app, namespaces=frozenset({NS})).routes())
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        yield app, http
    await runner.cleanup()
    await app.stop()


async def listed(http) -> dict[str, str]:
    async with http.get("/api/functions") as response:
        assert response.status == 200
        functions = await response.json()
    return {name: f["metadata"]["annotations"]["version"] for name, f in functions.items()}


async def served_version(app, version: int = 0) -> int:
    image = png(np.zeros((64, 64, 3), np.uint8))
    ref = common_pb2.ModelRef(namespace=NS, name=NAME, version=version)
    entry, *_ = await app.predict(ref, image, 0.5)
    return entry.version


async def test_the_promoted_version_serves_and_follows_promote_and_rollback(served, storage):
    app, http = served
    # version 2 was refused by the gate: version 1 keeps serving
    assert await listed(http) == {
        "preannotate.default.shapes": "1",
        "preannotate.default.never-gated": "2",  # no promotion log: its newest
    }
    assert await served_version(app) == 1
    assert await served_version(app, 2) == 2  # a candidate, asked for by number

    promotion.promote(storage, NS, NAME, 2, by="carol")
    assert (await listed(http))["preannotate.default.shapes"] == "2"
    assert await served_version(app) == 2

    promotion.rollback(storage, NS, NAME, by="carol")
    assert (await listed(http))["preannotate.default.shapes"] == "1"
    assert await served_version(app) == 1


async def test_a_promoted_version_not_yet_servable_leaves_the_one_before_serving(
    served, storage, retinanet_dir
):
    app, http = served
    storage.put(f"{NS}/models/{NAME}/3/manifest.json", b'{"kind": "model"}')
    try:
        promotion.promote(storage, NS, NAME, 3, by="carol")  # trained, not converted
        assert (await listed(http))["preannotate.default.shapes"] == "1"
        assert await served_version(app) == 1
    finally:
        promotion.rollback(storage, NS, NAME, by="carol")


async def test_the_registry_keeps_the_state_it_knew_when_the_log_turns_unreadable(tmp_path):
    from services.inference.registry import ModelEntry, ModelRegistry

    storage = LocalStorage(tmp_path / "storage")
    registry = ModelRegistry(storage, promotion_ttl=0.0)
    for version in (1, 2):
        registry.add(ModelEntry(NS, NAME, version, ("circle",)))
        storage.put(f"{NS}/models/{NAME}/{version}/manifest.json", b"{}")
    assert gate(storage, 1, 0.6).promote and not gate(storage, 2, 0.2).promote
    assert (await registry.resolve(NS, NAME)).version == 1
    storage.put(f"{NS}/models/{NAME}/promotion/3.json", b"{not json")
    assert (await registry.resolve(NS, NAME)).version == 1  # not the refused newest
    assert [e.version for e in registry.latest()] == [1]
