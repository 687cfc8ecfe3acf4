"""Fixtures of the inference tests: tiny real models (built once, cached on disk),
storages holding them as the converter publishes them, and the stand-ins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.inference import modelfactory

#: Per-test limit while a fixture model still has to be trained (minutes on 2 cores).
BUILD_TIMEOUT = 2400


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that would train a fixture model first get a longer timeout."""
    missing = {f"{k}_dir" for k in ("retinanet", "maskrcnn") if not modelfactory.is_cached(k)}
    for item in items:
        if missing & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT))


@pytest.fixture(scope="session")
def retinanet_dir() -> Path:
    """Version folder of the tiny RetinaNet (classes circle, square; boxes normalised)."""
    return modelfactory.cached("retinanet") / "1"


@pytest.fixture(scope="session")
def maskrcnn_dir() -> Path:
    """Version folder of the tiny Mask R-CNN (boxes in input pixels, 28x28 masks)."""
    return modelfactory.cached("maskrcnn") / "1"


@pytest.fixture
async def cvat() -> AsyncIterator:
    from tests.standins.cvat import CvatStandIn

    server = CvatStandIn(tokens={"secret-token"})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def tfserving() -> AsyncIterator:
    from tests.standins.tfserving import TfServingStandIn

    server = TfServingStandIn(poll_seconds=0.1)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
