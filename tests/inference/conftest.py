"""Fixtures of the inference tests: tiny real models (built once, cached on disk),
storages holding them as the converter publishes them, and the stand-ins.

``cvat``, ``storage`` and ``app`` are one per test module (each test makes its
own CVAT tasks and folders; the models load once); a module may define its own
``storage`` with other models.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import prebuild
from tests.inference import helpers, modelfactory

#: Per-test limit while a fixture model still has to be trained (minutes on 2 cores).
BUILD_TIMEOUT = 2400


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that would train a fixture model first get a longer timeout."""
    missing = {f"{k}_dir" for k in ("retinanet", "maskrcnn") if not modelfactory.is_cached(k)}
    for item in items:
        if missing & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT))


prebuild.register("retinanet_dir", lambda: modelfactory.cached("retinanet"))
prebuild.register("maskrcnn_dir", lambda: modelfactory.cached("maskrcnn"))


@pytest.fixture(scope="session")
def retinanet_dir() -> Path:
    """Version folder of the tiny RetinaNet (classes circle, square; boxes normalised)."""
    return prebuild.result("retinanet_dir") / "1"


@pytest.fixture(scope="session")
def maskrcnn_dir() -> Path:
    """Version folder of the tiny Mask R-CNN (boxes in input pixels, 28x28 masks)."""
    return prebuild.result("maskrcnn_dir") / "1"


@pytest.fixture(scope="module")
async def cvat() -> AsyncIterator:
    """One CVAT stand-in for the module (each test makes its own tasks)."""
    from tests.standins.cvat import CvatStandIn

    async with CvatStandIn(tokens={helpers.TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def storage(tmp_path_factory, retinanet_dir, maskrcnn_dir):
    """default/shapes/1 (the RetinaNet) and default/cells/1 (the Mask R-CNN), published."""
    from preannotate.storage import LocalStorage

    storage = LocalStorage(tmp_path_factory.mktemp("models") / "storage")
    helpers.publish_model(storage, retinanet_dir, name="shapes")
    helpers.publish_model(storage, maskrcnn_dir, name="cells", has_masks=True)
    return storage


@pytest.fixture(scope="module")
async def app(storage, cvat, tmp_path_factory) -> AsyncIterator:
    """One started service core for the module, on ``storage`` and ``cvat``."""
    settings = helpers.make_settings(tmp_path_factory.mktemp("app"), cvat_url=cvat.url)
    app, _bus = await helpers.start_app(settings, storage)
    yield app
    await app.stop()


@pytest.fixture
async def tfserving() -> AsyncIterator:
    from tests.standins.tfserving import TfServingStandIn

    server = TfServingStandIn(poll_seconds=0.1)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
