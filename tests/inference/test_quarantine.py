"""One broken model in storage cannot block the others: TF Serving's blocking
reload (the stand-in behaves as the real server, see its README) fails whole on
it, so the TF Serving backend quarantines it and the good models keep serving."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from preannotate import keys
from preannotate.errors import FailedPrecondition, NotFound
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2
from tests.inference.helpers import make_settings, publish_model, start_app
from tests.standins.cvat import make_shapes_dataset
from tests.standins.tfserving import AVAILABLE, TfServingStandIn

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def storage(tmp_path_factory, retinanet_dir):
    """default/shapes/1 (the RetinaNet) and default/bad/1 (a saved_model.pb that is not one)."""
    root = tmp_path_factory.mktemp("quarantine")
    storage = LocalStorage(root / "storage")
    publish_model(storage, retinanet_dir, name="shapes")
    broken = root / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a saved model")
    publish_model(storage, broken, name="bad")
    return storage


@pytest.fixture(scope="module")
def image() -> bytes:
    images, _ = make_shapes_dataset(1, size=(160, 120), seed=93, kind="rectangle")
    return images[0][1]


def _config(storage, *names: str):
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        item = config.model_config_list.config.add(
            name=f"default.{name}",
            base_path=storage.uri(keys.serving_base("default", name)),
            model_platform="tensorflow",
        )
        item.model_version_policy.specific.versions.append(1)
    return config


async def test_standin_reload_blocks_and_one_broken_model_fails_it_whole(storage, retinanet_dir):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    publish_model(storage, retinanet_dir, name="other")
    async with (
        TfServingStandIn(poll_seconds=0.05, load_delay=0.2) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = model_service_pb2_grpc.ModelServiceStub(channel)

        def reload(*names: str):
            request = model_management_pb2.ReloadConfigRequest(config=_config(storage, *names))
            return stub.HandleReloadConfigRequest(request, timeout=60)

        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await reload("shapes", "bad")
        assert failed.value.code() == grpc.StatusCode.UNKNOWN
        assert failed.value.details().startswith(
            "1 model(s) did not become available: {{{name: default.bad version: 1} due to "
            "error: DecodeError"
        )
        # It answered once the loads were over; the config stays applied.
        assert server.models["default.shapes"].versions[1].state == AVAILABLE
        # Later reloads wait for the models new to the config only.
        response = await reload("shapes", "bad", "other")
        assert response.status.error_code == 0
        assert server.models["default.other"].versions[1].state == AVAILABLE
        # After a restart the first config waits for every model again.
        server.restart()
        with pytest.raises(grpc.aio.AioRpcError, match="did not become available"):
            await reload("shapes", "bad", "other")
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await reload("shapes", "shapes")
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_broken_model_is_quarantined_and_the_others_keep_serving(
    storage, retinanet_dir, tfserving, image, tmp_path
):
    settings = make_settings(tmp_path, backend="tfserving", tfserving_address=tfserving.address)
    app, _ = await start_app(settings, storage)  # its first reload names shapes, bad, other

    def served() -> set[str]:
        return {c.name for c in tfserving.configs[-1].model_config_list.config}

    try:
        # Quarantined: out of TF Serving's config, the listing, and reported.
        assert "default.bad" not in served() and "default.shapes" in served()
        assert "default/bad/1" not in [m.label for m in app.models()]
        assert "default/shapes/1" in [m.label for m in app.models()]
        [(label, error)] = app.backend.describe()["quarantined"].items()
        assert label == "default/bad/1" and "DecodeError" in error
        gauge = REGISTRY.get_sample_value(
            "preannotate_inference_models_quarantined", {"backend": "tfserving"}
        )
        assert gauge == 1
        with pytest.raises(
            FailedPrecondition, match=r"default/bad/1 failed to load .* DecodeError"
        ):
            await app.predict(common_pb2.ModelRef(name="bad", version=1), image, 0.3)
        with pytest.raises(NotFound, match=r"quarantined \(failed to load\): default/bad/1"):
            await app.predict(common_pb2.ModelRef(name="bad"), image, 0.3)

        # The good one serves.
        _, _, _, found = await app.predict(common_pb2.ModelRef(name="shapes"), image, 0.3)
        assert found

        # A new model still gets in (the broken one does not block its reload).
        event = publish_model(storage, retinanet_dir, name="newer", version=2)
        _, added = await app.register(event)
        assert added and "default.newer" in served() and "default.bad" not in served()
        _, _, _, found = await app.predict(common_pb2.ModelRef(name="newer"), image, 0.3)
        assert found

        # TF Serving restarts (its first config waits for every model): still serving.
        tfserving.restart()
        _, _, _, found = await app.predict(common_pb2.ModelRef(name="shapes"), image, 0.3)
        assert found and "default.bad" not in served()
    finally:
        await app.stop()
