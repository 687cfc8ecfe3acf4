"""The two serving backends on real SavedModels: TF Serving (through the stand-in,
with tensorflow-serving-api's stubs) and in-process TensorFlow give the same
detections; TF Serving's config keeps every model; in-process keeps an LRU."""

from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import pytest

from preannotate import keys
from preannotate.errors import FailedPrecondition, Unavailable
from preannotate.storage import LocalStorage
from services.inference.backends.inprocess import InProcessBackend
from services.inference.backends.tfserving import TfServingBackend, served_name
from services.inference.postprocess import detections
from services.inference.predictor import Predictor
from services.inference.registry import ModelRegistry, entry_from_event
from tests.inference.helpers import decode, png, publish_model
from tests.standins.cvat import make_shapes_dataset
from tests.standins.tfserving import AVAILABLE, TfServingStandIn

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def storage(tmp_path_factory, retinanet_dir):
    storage = LocalStorage(tmp_path_factory.mktemp("backends") / "storage")
    publish_model(storage, retinanet_dir, name="shapes")
    publish_model(storage, retinanet_dir, name="other")
    return storage


@pytest.fixture(scope="module")
def frames():
    """Images of three sizes, as PNG (lossless, so every decoder sees the same pixels)."""
    out = []
    for k, size in enumerate([(160, 120), (128, 128), (96, 140)]):
        images, _ = make_shapes_dataset(3, size=size, seed=50 + k)
        for _, data in images:
            out.append(decode(png(decode(data).pixels)))
    return out


async def _registry(storage) -> ModelRegistry:
    registry = ModelRegistry(storage)
    await registry.refresh()
    return registry


def _tfserving(stand_in, storage, registry, **kw) -> TfServingBackend:
    return TfServingBackend(
        stand_in.address, storage.uri, registry.entries, poll_interval=0.05, **kw
    )


def _summary(raws, images, model, threshold=0.3):
    return [
        [(d.class_id, round(d.score, 3), np.round(d.box, 3).tolist()) for d in
         detections(raw, model, img.width, img.height, threshold)]
        for raw, img in zip(raws, images, strict=True)
    ]  # fmt: skip


@pytest.mark.parametrize("input_mode", ["encoded", "tensor"])
async def test_tfserving_and_inprocess_give_the_same_detections(
    storage, frames, tfserving, tmp_path, input_mode
):
    registry = await _registry(storage)
    model = await registry.resolve("default", "shapes")
    local = InProcessBackend(storage, tmp_path / "cache", 1 << 30)
    remote = _tfserving(tfserving, storage, registry, input_mode=input_mode)
    await local.start()
    await remote.start()
    try:
        await remote.prepare(model)
        raw_local = await local.predict(model, frames)
        raw_remote = await remote.predict(model, frames)
    finally:
        await remote.close()
        await local.close()

    assert len(raw_local) == len(raw_remote) == len(frames)
    found = 0
    for a, b in zip(raw_local, raw_remote, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_array_equal(a.classes, b.classes)
        found += int((a.scores >= 0.5).sum())
    assert found >= len(frames)  # the trained model finds things
    assert _summary(raw_local, frames, model) == _summary(raw_remote, frames, model)
    # One Predict per image size, each a batch of that size's images.
    assert sorted(b for _, _, b in tfserving.predict_batches) == [3, 3, 3]
    sigs = remote._signatures[(served_name("default", "shapes"), 1)]
    assert sigs.takes_bytes == (input_mode == "encoded")


async def test_reload_keeps_the_models_already_there(storage, tfserving, retinanet_dir, tmp_path):
    registry = await _registry(storage)
    backend = _tfserving(tfserving, storage, registry)
    try:
        shapes = await registry.resolve("default", "shapes")
        await backend.prepare(shapes)
        # A new model arrives (as from model.converted): the config still names the others.
        local = LocalStorage(storage.root)
        event = publish_model(local, retinanet_dir, name="newer", version=2)
        entry = entry_from_event(event, default_namespace="default")
        registry.add(entry)
        await backend.prepare(entry)
        config = tfserving.configs[-1]
        listed = {c.name: list(c.model_version_policy.specific.versions)
                  for c in config.model_config_list.config}  # fmt: skip
        assert listed == {"default.newer": [2], "default.other": [1], "default.shapes": [1]}
        assert config.model_config_list.config[0].base_path == storage.uri(
            keys.serving_base("default", "newer")
        )
        for name in ("default.shapes", "default.newer"):
            versions = tfserving.models[name].versions
            assert all(v.state == AVAILABLE for v in versions.values())
    finally:
        await backend.close()
        shutil.rmtree(storage.root / "default" / "serving" / "newer", ignore_errors=True)


async def test_standin_unloads_models_left_out_of_a_reload(storage, tfserving):
    registry = await _registry(storage)
    both = _tfserving(tfserving, storage, registry)
    try:
        await both.prepare(await registry.resolve("default", "shapes"))
        assert set(tfserving.models) == {"default.shapes", "default.other"}
        # A client that knows only "other" replaces the config: "shapes" goes.
        narrow = TfServingBackend(
            tfserving.address,
            storage.uri,
            lambda: [e for e in registry.entries() if e.name == "other"],
            poll_interval=0.05,
        )
        await narrow.reload()
        assert set(tfserving.models) == {"default.other"}
        with pytest.raises(Unavailable, match="not AVAILABLE"):
            narrow.load_timeout = 0.3
            await narrow.wait_available(await registry.resolve("default", "shapes"))
        await narrow.close()
    finally:
        await both.close()


async def test_prepare_waits_until_available_and_times_out(storage):
    registry = await _registry(storage)
    model = await registry.resolve("default", "shapes")
    async with TfServingStandIn(poll_seconds=0.05, load_delay=1.0) as slow:
        backend = _tfserving(slow, storage, registry)
        started = time.monotonic()
        await backend.prepare(model)
        assert time.monotonic() - started >= 1.0
        # The reload itself blocked until the new model was loaded, as TF Serving's does.
        assert slow.calls["HandleReloadConfigRequest"] == 1
        assert slow.models["default.shapes"].versions[1].state == AVAILABLE
        await backend.close()
    async with TfServingStandIn(poll_seconds=0.05, load_delay=5.0) as slower:
        backend = _tfserving(slower, storage, registry, load_timeout=0.5)
        with pytest.raises(Unavailable, match=r"not AVAILABLE .* after 0 s"):
            await backend.prepare(model)
        await backend.close()


async def test_a_model_that_fails_to_load_is_reported(tmp_path, tfserving):
    storage = LocalStorage(tmp_path / "storage")
    version = tmp_path / "bad"
    version.mkdir()
    (version / "saved_model.pb").write_bytes(b"not a saved model")
    publish_model(storage, version, name="bad")
    registry = await _registry(storage)
    backend = _tfserving(tfserving, storage, registry)
    try:
        with pytest.raises(FailedPrecondition, match="could not load model default/bad/1"):
            await backend.prepare(await registry.resolve("default", "bad"))
    finally:
        await backend.close()


async def test_predict_recovers_when_tfserving_restarts(storage, frames, tfserving):
    registry = await _registry(storage)
    model = await registry.resolve("default", "shapes")
    backend = _tfserving(tfserving, storage, registry)
    try:
        await backend.prepare(model)
        first = await backend.predict(model, frames[:2])
        reloads = backend.reloads
        tfserving.restart()  # forgets the config, as a restarted server does
        again = await backend.predict(model, frames[:2])
        assert backend.reloads == reloads + 1
        np.testing.assert_allclose(first[0].scores, again[0].scores, atol=1e-5)
    finally:
        await backend.close()


async def test_inprocess_keeps_recent_models_within_the_budget(storage, frames, tmp_path):
    registry = await _registry(storage)
    shapes = await registry.resolve("default", "shapes")
    other = await registry.resolve("default", "other")
    size = sum(p.stat().st_size for p in (storage.root / "default/serving/shapes/1").rglob("*")
               if p.is_file() and p.name != "manifest.json")  # fmt: skip
    backend = InProcessBackend(storage, tmp_path / "cache", memory_budget_bytes=int(size * 1.5))
    await backend.start()
    # Two concurrent first calls load the model once.
    await asyncio.gather(backend.predict(shapes, frames[:1]), backend.predict(shapes, frames[1:2]))
    assert backend.describe()["loaded"] == ["default/shapes/1"]
    await backend.predict(other, frames[:1])
    assert backend.describe()["loaded"] == ["default/other/1"]
    assert backend.describe()["evicted"] == ["default/shapes/1"]
    await backend.predict(shapes, frames[:1])
    assert backend.describe()["evicted"] == ["default/shapes/1", "default/other/1"]
    await backend.close()


async def test_inprocess_copies_models_from_s3(s3_storage, retinanet_dir, frames, tmp_path):
    publish_model(s3_storage, retinanet_dir, name="shapes")
    registry = await _registry(s3_storage)
    model = await registry.resolve("default", "shapes")
    backend = InProcessBackend(s3_storage, tmp_path / "cache", 1 << 30)
    await backend.start()
    raws = await backend.predict(model, frames[:2])
    assert len(raws) == 2
    assert (tmp_path / "cache/default/shapes/1/saved_model.pb").is_file()
    assert (tmp_path / "cache/default/shapes/1/assets/classes.csv").is_file()
    await backend.close()


async def test_single_requests_share_batches(storage, frames, tmp_path):
    registry = await _registry(storage)
    model = await registry.resolve("default", "shapes")
    backend = InProcessBackend(storage, tmp_path / "cache", 1 << 30)
    await backend.start()
    predictor = Predictor(registry, backend, batch_size=4, batch_wait=0.05)
    same_size = [f for f in frames if f.pixels.shape == frames[0].pixels.shape] * 3
    answers = await asyncio.gather(*(predictor.detect_one(model, f, 0.3) for f in same_size))
    batched = await predictor.detect(model, same_size, 0.3)
    assert [[d.class_id for d in a] for a in answers] == [[d.class_id for d in b] for b in batched]
    assert sum(predictor.batcher(model).batches) == len(same_size)
    assert max(predictor.batcher(model).batches) == 4
    await predictor.close()
    await backend.close()
