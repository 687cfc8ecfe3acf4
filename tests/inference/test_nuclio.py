"""The Nuclio dashboard API, called as CVAT's lambda manager calls it
(cvat/apps/lambda_manager/views.py: LambdaGateway, LambdaFunction, _call_detector)."""

from __future__ import annotations

import base64
import json

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from cvat_sdk.masks import decode_mask

from preannotate.storage import LocalStorage
from services.inference.nuclio import NuclioApi
from services.inference.shapes import mask_runs
from tests.inference.helpers import make_settings, publish_model, start_app
from tests.standins.cvat import make_shapes_dataset

pytestmark = pytest.mark.tf

#: The headers LambdaGateway._http sends on every call.
CVAT_HEADERS = {
    "x-nuclio-project-name": "cvat",
    "x-nuclio-function-namespace": "nuclio",
    "x-nuclio-invoke-via": "domain-name",
    "X-Nuclio-Invoke-Timeout": "120s",
}
DETECTOR_KINDS = {"detector", "interactor", "tracker", "reid"}


def cvat_reads(data: dict) -> dict:
    """What LambdaFunction.__init__ takes from a function (KeyError where CVAT fails)."""
    meta = data["metadata"]["annotations"]
    assert meta.get("type") in DETECTOR_KINDS
    spec = json.loads(meta.get("spec") or "[]")
    names = [item["name"] for item in spec]
    assert len(names) == len(set(names)), "CVAT refuses non-unique labels"
    for item in spec:
        attrs = [a["name"] for a in item.get("attributes", [])]
        assert len(attrs) == len(set(attrs))
    return {
        "id": data["metadata"]["name"],
        "kind": meta["type"],
        "labels": names,
        "types": {item["name"]: item.get("type", "unknown") for item in spec},
        "description": data["spec"]["description"],
        "port": data["status"].get("httpPort"),
        "state": data["status"]["state"],
        "name": meta.get("name", data["metadata"]["name"]),
        "version": int(meta.get("version", "1")),
    }


@pytest.fixture(scope="module")
def storage(tmp_path_factory, retinanet_dir, maskrcnn_dir):
    storage = LocalStorage(tmp_path_factory.mktemp("nuclio") / "storage")
    publish_model(storage, retinanet_dir, name="shapes", version=1)
    publish_model(storage, retinanet_dir, name="shapes", version=2)
    metrics = {"suggested_threshold": 0.05}  # what its trainer would have suggested
    publish_model(storage, maskrcnn_dir, name="cells", has_masks=True, metrics=metrics)
    return storage


@pytest.fixture
async def dashboard(storage, tmp_path):
    app, _ = await start_app(make_settings(tmp_path, nuclio_port=8070), storage)
    web_app = web.Application()
    web_app.add_routes(NuclioApi(app).routes())
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=CVAT_HEADERS) as http:
        yield http
    await runner.cleanup()
    await app.stop()


@pytest.fixture(scope="module")
def frame():
    images, _ = make_shapes_dataset(1, size=(160, 120), seed=95, kind="mask")
    return images[0][1]


async def test_functions_are_listed_as_cvat_reads_them(dashboard):
    async with dashboard.get("/api/functions") as r:
        assert r.status == 200
        listed = await r.json()
    assert isinstance(listed, dict)
    functions = {name: cvat_reads(item) for name, item in listed.items()}
    assert set(functions) == {"preannotate.default.shapes", "preannotate.default.cells"}
    shapes = functions["preannotate.default.shapes"]
    assert shapes["id"] == "preannotate.default.shapes"
    assert shapes["kind"] == "detector" and shapes["labels"] == ["circle", "square"]
    assert shapes["version"] == 2 and shapes["name"] == "shapes v2"
    assert shapes["types"] == {"circle": "rectangle", "square": "rectangle"}
    assert shapes["port"] == 8070 and shapes["state"] == "ready"
    assert "default/shapes" in shapes["description"] and "threshold" not in shapes["description"]
    cells = functions["preannotate.default.cells"]["description"]
    assert "without a threshold it keeps scores of 0.05 or more" in cells
    assert functions["preannotate.default.cells"]["types"]["circle"] == "mask"

    async with dashboard.get("/api/functions/preannotate.default.cells") as r:
        assert cvat_reads(await r.json())["id"] == "preannotate.default.cells"
    for missing in ("preannotate.default.nope", "something-else"):
        async with dashboard.get(f"/api/functions/{missing}") as r:
            assert r.status == 404


async def _invoke(http, name, body):
    headers = {"x-nuclio-function-name": name, "x-nuclio-path": "/"}
    async with http.post("/api/function_invocations", json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_detector_invocation_answers_what_cvat_expects(dashboard, frame):
    body = {"image": base64.b64encode(frame).decode(), "threshold": 0.5}
    status, items = await _invoke(dashboard, "preannotate.default.shapes", body)
    assert status == 200 and isinstance(items, list) and items
    for item in items:
        assert set(item) >= {"label", "points", "type", "confidence"}
        assert item["type"] == "rectangle" and item["label"] in {"circle", "square"}
        assert float(item["confidence"]) >= 0.5
        x1, y1, x2, y2 = item["points"]
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
    # Without a threshold (CVAT sends none when the user sets none): the default, 0.5.
    status, default = await _invoke(
        dashboard, "preannotate.default.shapes", {"image": body["image"]}
    )
    assert status == 200 and default == items
    status, low = await _invoke(
        dashboard, "preannotate.default.shapes", {**body, "threshold": 0.05}
    )
    assert len(low) >= len(items)


async def test_mask_invocation_gives_cvat_masks(dashboard, frame):
    body = {"image": base64.b64encode(frame).decode(), "threshold": 0.05}
    status, items = await _invoke(dashboard, "preannotate.default.cells", body)
    assert status == 200 and items
    # no threshold: the model's suggestion (0.05 here), not the service's 0.5
    status, unset = await _invoke(dashboard, "preannotate.default.cells", {"image": body["image"]})
    assert status == 200 and unset == items
    assert any(float(item["confidence"]) < 0.5 for item in items)  # which 0.5 would drop
    for item in items:
        assert item["type"] == "mask"
        *flat, xtl, ytl, xbr, ybr = item["mask"]
        assert set(flat) <= {0, 1} and sum(flat) > 0
        assert len(flat) == (xbr - xtl + 1) * (ybr - ytl + 1)
        # CVAT: RLE of the flat box pixels, then the box: a valid CVAT mask.
        rle = [*mask_runs(np.array(flat, bool)), xtl, ytl, xbr, ybr]
        bitmap = decode_mask(rle, image_width=160, image_height=120)
        assert bitmap.sum() == sum(flat)
        points = item["points"]
        assert len(points) >= 6 and len(points) % 2 == 0
        assert min(points[0::2]) >= xtl - 1 and max(points[0::2]) <= xbr + 1


async def test_bad_invocations_get_http_errors(dashboard, frame):
    image = base64.b64encode(frame).decode()
    async with dashboard.post("/api/function_invocations", json={"image": image}) as r:
        assert r.status == 400 and "x-nuclio-function-name" in (await r.json())["error"]
    assert (await _invoke(dashboard, "preannotate.default.nope", {"image": image}))[0] == 404
    assert (await _invoke(dashboard, "preannotate.default.shapes", {"image": "@@@"}))[0] == 400
    assert (await _invoke(dashboard, "preannotate.default.shapes", {"img": image}))[0] == 400
    status, answer = await _invoke(
        dashboard, "preannotate.default.shapes", {"image": base64.b64encode(b"xx").decode()}
    )
    assert status == 400 and "not a decodable image" in answer["error"]
    status, _ = await _invoke(
        dashboard, "preannotate.default.shapes", {"image": image, "threshold": "high"}
    )
    assert status == 400
