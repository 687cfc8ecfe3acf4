"""The CVAT stand-in answers as CVAT does: checked with cvat-sdk 2.80's own models.

Every answer the stand-in gives is parsed by cvat-sdk's generated client (which
follows CVAT's OpenAPI schema) and must not carry fields that schema lacks.
The export flow is driven end to end by cvat-sdk's high-level
``Task.export_dataset``; webhook signatures are checked with ``hmac``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from cvat_sdk import auto_annotation as cvataa
from cvat_sdk import masks as sdk_masks
from cvat_sdk.api_client import ApiClient, Configuration, exceptions, models
from cvat_sdk.core.client import AccessTokenCredentials, Client, Config
from cvat_sdk.core.exceptions import BackgroundRequestException
from PIL import Image
from pycocotools.coco import COCO

from tests.standins.cvat import (
    CvatStandIn,
    decode_cvat_mask,
    encode_cvat_mask,
    make_shapes_dataset,
    shapes_labels,
)

TOKEN = "secret-token"
T = TypeVar("T")

pytestmark = pytest.mark.timeout(120)


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture
async def cvat() -> AsyncIterator[CvatStandIn]:
    async with CvatStandIn(tokens={TOKEN}) as server:
        server.export_seconds = 0.02
        yield server


def _api(server: CvatStandIn, org: str | None = None) -> ApiClient:
    client = ApiClient(Configuration(host=server.url, access_token=TOKEN))
    if org is not None:
        client.default_headers["X-Organization"] = org
    return client


async def _sync(fn: Callable[[], T]) -> T:
    """cvat-sdk is synchronous: run it off the loop that serves the stand-in."""
    return await asyncio.to_thread(fn)


def _wire_names(model: type) -> set[str]:
    return set(model.attribute_map.values())


def _assert_schema_fields(data: dict[str, Any], model: type) -> None:
    extra = set(data) - _wire_names(model)
    assert not extra, f"{model.__name__} has no fields {sorted(extra)}"


def _add_dataset_task(server: CvatStandIn, n: int = 6, **kwargs: Any) -> int:
    images, shapes = make_shapes_dataset(n, size=(64, 64), seed=kwargs.pop("seed", 0))
    return server.add_task("shapes", shapes_labels(), images, shapes, **kwargs)


def _shape(label_id: int, frame: int, **extra: Any) -> dict[str, Any]:
    return {"type": "rectangle", "frame": frame, "label_id": label_id,
            "points": [1.0, 2.0, 20.0, 30.0], **extra}  # fmt: skip


async def _http(
    server: CvatStandIn,
    method: str,
    path: str,
    *,
    token: str | None = TOKEN,
    scheme: str = "Bearer",
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, bytes, Any]:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"{scheme} {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.url + path, headers=all_headers, **kwargs) as response,
    ):
        body = await response.read()
        return response.status, body, response.headers


class Receiver:
    """A webhook target that records raw deliveries and answers queued statuses."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.delays: list[float] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status == 200 else "no")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


# --- cvat-sdk parses every answer ------------------------------------------------------------


async def test_sdk_parses_every_answer(cvat: CvatStandIn) -> None:
    labels = [
        {"name": "circle", "type": "polygon",
         "attributes": [{"name": "size", "input_type": "select", "values": ["big", "small"]}]},
        {"name": "square", "type": "rectangle"},
    ]  # fmt: skip
    images, _ = make_shapes_dataset(5, size=(48, 40))
    task_id = cvat.add_task("parse me", labels, images, segment_size=2, project_id=7)
    label_ids = [lb["id"] for lb in cvat.labels(task_id)]
    await _http(cvat, "PATCH", f"/api/tasks/{task_id}/annotations?action=create",
                json={"shapes": [_shape(label_ids[1], 0), _shape(label_ids[0], 3, type="polygon",
                      points=[1, 1, 9, 1, 9, 9], attributes=[{"spec_id": 1, "value": "big"}])],
                      "tags": [{"frame": 1, "label_id": label_ids[0]}]})  # fmt: skip

    def calls() -> dict[str, Any]:
        with _api(cvat) as api:
            about, _ = api.server_api.retrieve_about()
            fmts, _ = api.server_api.retrieve_annotation_formats()
            me, _ = api.users_api.retrieve_self()
            task, _ = api.tasks_api.retrieve(task_id)
            tasks, _ = api.tasks_api.list(project_id=7)
            jobs, _ = api.jobs_api.list(task_id=task_id)
            job, _ = api.jobs_api.retrieve(jobs.results[-1].id)
            labels_page, _ = api.labels_api.list(task_id=task_id)
            job_labels, _ = api.labels_api.list(job_id=job.id)
            meta, _ = api.tasks_api.retrieve_data_meta(task_id)
            job_meta, _ = api.jobs_api.retrieve_data_meta(job.id)
            job_ann, _ = api.jobs_api.retrieve_annotations(jobs.results[-1].id)
            task_ann, _ = api.tasks_api.retrieve_annotations(task_id)
            return locals()

    got = await _sync(calls)
    assert isinstance(got["about"], models.About) and got["about"].version.startswith("2.80")
    assert "COCO 1.0" in [f.name for f in got["fmts"].exporters]
    assert got["me"].username == "admin1"
    task = got["task"]
    assert isinstance(task, models.TaskRead)
    assert (task.name, task.size, task.segment_size, task.project_id) == ("parse me", 5, 2, 7)
    assert task.jobs.count == 3 and task.jobs.completed == 0
    assert [t.id for t in got["tasks"].results] == [task_id]
    jobs = got["jobs"]
    assert isinstance(jobs, models.PaginatedJobReadList) and jobs.count == 3
    # CVAT lists newest first; the last job covers frame 4 alone.
    assert [(j.start_frame, j.stop_frame) for j in jobs.results] == [(4, 4), (2, 3), (0, 1)]
    assert got["job"].frame_count == 2 and got["job"].state == "new"
    assert [lb.name for lb in got["labels_page"].results] == ["circle", "square"]
    assert got["labels_page"].results[0].attributes[0].values == ["big", "small"]
    assert [lb.id for lb in got["job_labels"].results] == label_ids
    assert [f.name for f in got["meta"].frames] == [name for name, _ in images]
    assert got["meta"].frames[0].width == 48 and got["meta"].frames[0].height == 40
    assert [f.name for f in got["job_meta"].frames] == [images[0][0], images[1][0]]
    assert len(got["task_ann"].shapes) == 2 and len(got["task_ann"].tags) == 1
    assert [s.type.value for s in got["task_ann"].shapes] == ["rectangle", "polygon"]
    assert len(got["job_ann"].shapes) == 1 and got["job_ann"].shapes[0].frame == 0

    # Nothing the stand-in says lies outside CVAT's schema.
    _assert_schema_fields(cvat.task(task_id), models.TaskRead)
    _assert_schema_fields(cvat.task(task_id)["jobs"], models.JobsSummary)
    for job_dict in cvat.jobs(task_id):
        _assert_schema_fields(job_dict, models.JobRead)
    for label in cvat.labels(task_id):
        _assert_schema_fields(label, models.Label)
        for attribute in label["attributes"]:
            _assert_schema_fields(attribute, models.Attribute)
    for shape in cvat.annotations(task_id):
        _assert_schema_fields(shape, models.LabeledShape)
    status, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data/meta")
    meta = json.loads(body)
    assert status == 200
    _assert_schema_fields(meta, models.DataMetaRead)
    _assert_schema_fields(meta["frames"][0], models.FrameMeta)
    for path, model in (("/api/users/self", models.User), ("/api/server/about", models.About)):
        status, body, _ = await _http(cvat, "GET", path)
        assert status == 200
        _assert_schema_fields(json.loads(body), model)


async def test_lists_are_paginated_as_drf_does(cvat: CvatStandIn) -> None:
    images, _ = make_shapes_dataset(2, size=(32, 32))
    labels = [{"name": f"class{i:02d}"} for i in range(12)]
    task_id = cvat.add_task("many labels", labels, images)

    def calls() -> tuple[Any, Any, list[Any]]:
        with _api(cvat) as api:
            first, _ = api.labels_api.list(task_id=task_id)
            second, _ = api.labels_api.list(task_id=task_id, page=2)
            everything, _ = api.labels_api.list(task_id=task_id, page_size=100)
            return first, second, everything.results

    first, second, everything = await _sync(calls)
    assert first.count == 12 and len(first.results) == 10 and first.next and not first.previous
    assert len(second.results) == 2 and second.next is None and second.previous
    assert [lb.name for lb in everything] == [f"class{i:02d}" for i in range(12)]
    status, body, _ = await _http(cvat, "GET", f"/api/labels?task_id={task_id}&page=3")
    assert status == 404 and json.loads(body) == {"detail": "Invalid page."}


# --- export ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
async def test_sdk_export_dataset_gives_cvat_coco_zip(cvat: CvatStandIn, tmp_path: Any) -> None:
    images, shapes = make_shapes_dataset(6, size=(64, 64), seed=3)
    task_id = cvat.add_task("export me", shapes_labels(), images, shapes, segment_size=4)
    target = tmp_path / "dataset.zip"

    def export() -> None:
        client = Client(cvat.url, config=Config(status_check_period=0.02))
        with client:
            client.login(AccessTokenCredentials(TOKEN))
            client.tasks.retrieve(task_id).export_dataset("COCO 1.0", target, include_images=True)

    await _sync(export)

    with zipfile.ZipFile(target) as archive:
        names = sorted(archive.namelist())
        assert names == sorted(
            ["annotations/instances_default.json"]
            + [f"images/default/{name}" for name, _ in images]
        )
        for name, data in images:
            assert archive.read(f"images/default/{name}") == data
        document = json.loads(archive.read("annotations/instances_default.json"))
        (tmp_path / "instances.json").write_bytes(
            archive.read("annotations/instances_default.json")
        )

    assert [c["name"] for c in document["categories"]] == ["circle", "square"]
    assert [(i["id"], i["file_name"]) for i in document["images"]] == [
        (n + 1, name) for n, (name, _) in enumerate(images)
    ]
    annotations = document["annotations"]
    assert len(annotations) == len(shapes)
    category = {"circle": 1, "square": 2}
    for shape, ann in zip(shapes, annotations, strict=True):
        assert ann["image_id"] == shape["frame"] + 1
        assert ann["category_id"] == category[shape["label"]]
        pts = shape["points"]
        if shape["type"] == "rectangle":
            assert ann["bbox"] == [pts[0], pts[1], pts[2] - pts[0], pts[3] - pts[1]]
            assert ann["segmentation"] == [] and ann["iscrowd"] == 0
            assert ann["attributes"] == {"occluded": False, "rotation": 0.0}
        elif shape["type"] == "polygon":
            xs, ys = pts[0::2], pts[1::2]
            expected = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            assert ann["bbox"] == pytest.approx(expected, abs=0.01)
            assert ann["segmentation"] == [pts] and ann["iscrowd"] == 0
        else:
            bitmap = sdk_masks.decode_mask(pts, image_width=64, image_height=64)
            ys, xs = np.nonzero(bitmap)
            assert ann["iscrowd"] == 1 and ann["area"] == bitmap.sum()
            assert ann["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            assert ann["segmentation"]["size"] == [64, 64]

    # pycocotools reads it, masks included, back to the same pixels.
    coco = COCO(str(tmp_path / "instances.json"))
    for shape, ann in zip(shapes, annotations, strict=True):
        if shape["type"] == "mask":
            decoded = coco.annToMask(coco.anns[ann["id"]]).astype(bool)
            expected = sdk_masks.decode_mask(shape["points"], image_width=64, image_height=64)
            assert np.array_equal(decoded, expected)


async def test_export_request_lifecycle_over_http(cvat: CvatStandIn) -> None:
    task_id = _add_dataset_task(cvat)
    cvat.export_seconds = 0.5  # long enough to see "queued" and "started" on a busy machine
    status, body, _ = await _http(
        cvat, "POST", f"/api/tasks/{task_id}/dataset/export?format=COCO%201.0&save_images=true"
    )
    assert status == 202
    rq_id = json.loads(body)["rq_id"]
    assert "format=COCO 1.0" in rq_id and f"target_id={task_id}" in rq_id

    again, body, _ = await _http(
        cvat, "POST", f"/api/tasks/{task_id}/dataset/export?format=COCO%201.0&save_images=true"
    )
    assert again == 409 and json.loads(body) == "Export request is being processed"
    status, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/dataset/download",
                                  params={"rq_id": rq_id})  # fmt: skip
    assert status == 400 and b"not finished" in body

    seen = []
    with _api(cvat) as api:
        for _ in range(100):
            request, _ = await _sync(lambda: api.requests_api.retrieve(rq_id))
            assert isinstance(request, models.Request)
            seen.append(request.status.value)
            if request.status.value == "finished":
                break
            await asyncio.sleep(0.05)
    assert seen[0] == "queued" and "started" in seen and seen[-1] == "finished"
    assert request.progress == 1.0 and request.operation.type == "export:dataset"
    assert request.operation.format == "COCO 1.0" and request.operation.task_id == task_id
    assert request.result_url.startswith(f"{cvat.url}/api/tasks/{task_id}/dataset/download?rq_id=")
    status, body, _ = await _http(cvat, "GET", "/api/requests")
    (listed,) = json.loads(body)["results"]
    _assert_schema_fields(listed, models.Request)
    _assert_schema_fields(listed["operation"], models.RequestDataOperation)

    status, _, _ = await _http(cvat, "GET", request.result_url.removeprefix(cvat.url), token=None)
    assert status == 401
    status, body, headers = await _http(cvat, "GET", request.result_url.removeprefix(cvat.url))
    assert status == 200 and headers["Content-Type"] == "application/zip"
    assert headers["Content-Disposition"].startswith(
        f'attachment; filename="task_{task_id}_dataset_'
    )
    assert headers["Content-Disposition"].endswith('_coco 1.0.zip"')
    assert "annotations/instances_default.json" in zipfile.ZipFile(io.BytesIO(body)).namelist()

    status, body, _ = await _http(cvat, "POST",
                                  f"/api/tasks/{task_id}/dataset/export?format=Nope%201.0")  # fmt: skip
    assert status == 400 and b"Unknown format" in body
    status, _, _ = await _http(cvat, "POST",
                               f"/api/tasks/{task_id}/dataset/export?format=TFRecord%201.0")  # fmt: skip
    assert status == 405


async def test_failed_export_names_cvat_error(cvat: CvatStandIn, tmp_path: Any) -> None:
    task_id = _add_dataset_task(cvat)
    cvat.fail_export(task_id, "OSError: [Errno 28] No space left on device")

    def export() -> None:
        client = Client(cvat.url, config=Config(status_check_period=0.02))
        with client:
            client.login(AccessTokenCredentials(TOKEN))
            task = client.tasks.retrieve(task_id)
            task.export_dataset("COCO 1.0", tmp_path / "x.zip", include_images=True)

    with pytest.raises(BackgroundRequestException, match="No space left on device"):
        await _sync(export)
    # The failure was for one export only; the next one succeeds, annotations only.
    status, body, _ = await _http(
        cvat, "POST", f"/api/tasks/{task_id}/dataset/export?format=COCO%201.0&save_images=false"
    )
    assert status == 202 and "subresource=annotations" in json.loads(body)["rq_id"]


# --- annotations ----------------------------------------------------------------------------


class _BrightestBox:
    """A cvat-sdk detection function: one box around each frame's bright pixels."""

    spec = cvataa.DetectionFunctionSpec(labels=[cvataa.label_spec("circle", 0)])

    def detect(self, context: Any, image: Image.Image) -> list[Any]:
        pixels = np.asarray(image.convert("L"))
        ys, xs = np.nonzero(pixels > 100)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        return [cvataa.rectangle(0, box)]


async def test_sdk_auto_annotation_reads_chunks_and_writes_back(
    cvat: CvatStandIn, tmp_path: Any
) -> None:
    """cvat-sdk's annotate_task reads meta, labels and chunks and PATCHes the task."""
    images, shapes = make_shapes_dataset(5, size=(48, 48), kind="rectangle", seed=2)
    task_id = cvat.add_task("auto", shapes_labels(), images, shapes, segment_size=3,
                            chunk_size=2)  # fmt: skip

    def run(clear_existing: bool) -> None:
        config = Config(status_check_period=0.02, cache_dir=tmp_path / "cache")
        with Client(cvat.url, config=config) as client:
            client.login(AccessTokenCredentials(TOKEN))
            cvataa.annotate_task(client, task_id, _BrightestBox(),
                                 clear_existing=clear_existing)  # fmt: skip

    await _sync(lambda: run(False))
    stored = cvat.annotations(task_id)
    autos = [s for s in stored if s["source"] == "auto"]
    assert len(stored) == len(shapes) + 5 and [s["frame"] for s in autos] == list(range(5))
    circle = cvat.labels(task_id)[0]["id"]
    assert {s["label_id"] for s in autos} == {circle}
    for shape in autos:
        pixels = np.asarray(Image.open(io.BytesIO(images[shape["frame"]][1])).convert("L"))
        ys, xs = np.nonzero(pixels > 100)
        assert shape["points"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    chunk_reads = [r for r in cvat.request_log if r.query.get("type") == "chunk"]
    assert sorted(r.query["number"] for r in chunk_reads) == ["0", "1", "2"]

    await _sync(lambda: run(True))  # PUT: only the new automatic shapes remain
    assert [s["source"] for s in cvat.annotations(task_id)] == ["auto"] * 5


async def test_patch_and_put_job_annotations_like_cvat(cvat: CvatStandIn) -> None:
    images, _ = make_shapes_dataset(4, size=(32, 32))
    task_id = cvat.add_task("write", shapes_labels(), images, segment_size=2)
    first_job, second_job = (j["id"] for j in cvat.jobs(task_id))
    circle, square = (lb["id"] for lb in cvat.labels(task_id))
    mask = encode_cvat_mask(np.pad(np.ones((4, 5), bool), ((3, 25), (2, 25))))

    def patch(job_id: int, action: str, body: dict[str, Any]) -> models.LabeledData:
        with _api(cvat) as api:
            _, response = api.jobs_api.partial_update_annotations(
                action, job_id, patched_labeled_data_request=body
            )
            return api.deserialize(response, (models.LabeledData,), _check_type=True)

    created = await _sync(lambda: patch(first_job, "create", {"version": 0, "shapes": [
        _shape(circle, 0, source="auto", score=0.75),
        {"type": "mask", "frame": 1, "label_id": square, "points": mask, "source": "auto"},
    ]}))  # fmt: skip
    assert created.version == 0
    ids = [s.id for s in created.shapes]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 2
    stored = cvat.annotations(task_id)
    assert [(s["id"], s["frame"], s["type"], s["source"]) for s in stored] == [
        (ids[0], 0, "rectangle", "auto"), (ids[1], 1, "mask", "auto")]  # fmt: skip
    assert stored[0]["score"] == 0.75 and stored[1]["score"] == 1.0
    assert stored[0]["occluded"] is False and stored[0]["z_order"] == 0

    updated = await _sync(lambda: patch(first_job, "update", {"shapes": [
        {**stored[0], "points": [5.0, 5.0, 10.0, 10.0], "label_id": square}]}))  # fmt: skip
    assert updated.shapes[0].id == ids[0]
    after = {s["id"]: s for s in cvat.annotations(task_id)}
    assert after[ids[0]]["points"] == [5.0, 5.0, 10.0, 10.0] and after[ids[0]]["label_id"] == square

    deleted = await _sync(lambda: patch(first_job, "delete", {"shapes": [after[ids[1]]]}))
    assert [s.id for s in deleted.shapes] == [ids[1]]
    assert [s["id"] for s in cvat.annotations(task_id)] == [ids[0]]

    status, body, _ = await _http(cvat, "PUT", f"/api/jobs/{second_job}/annotations/",
                                  json={"version": 0, "shapes": [_shape(circle, 2), _shape(circle, 3)],
                                        "tags": [], "tracks": []})  # fmt: skip
    assert status == 200
    put_ids = [s["id"] for s in json.loads(body)["shapes"]]
    assert min(put_ids) > max(ids)
    status, body, _ = await _http(cvat, "PUT", f"/api/jobs/{second_job}/annotations",
                                  json={"shapes": [_shape(square, 3)]})  # fmt: skip
    assert status == 200
    assert [(s["frame"], s["label_id"]) for s in cvat.annotations(task_id)] == [
        (0, square), (3, square)]  # fmt: skip


async def test_bad_annotation_writes_are_refused_whole(cvat: CvatStandIn) -> None:
    images, _ = make_shapes_dataset(4, size=(32, 32))
    task_id = cvat.add_task("refuse", shapes_labels(), images, segment_size=2)
    first_job, _ = (j["id"] for j in cvat.jobs(task_id))
    circle = cvat.labels(task_id)[0]["id"]
    cases = [
        ({"shapes": [_shape(circle, 0), _shape(999, 1)]}, "label_id `999` is invalid"),
        ({"shapes": [_shape(circle, 0), _shape(circle, 2)]}, "frame 2 is outside"),
        ({"shapes": [{"frame": 0, "label_id": circle, "points": [1, 2, 3, 4]}]}, "type"),
        ({"shapes": [_shape(circle, 0, points=[1, 2, 3])]}, "exactly 4"),
        ({"shapes": [_shape(circle, 0, score=1.5)]}, "between 0 and 1"),
        ({"shapes": [_shape(circle, 0, type="mask", points=[3, 4, 0, 0, 1, 1])]}, "runs cover 7"),
        ({"shapes": [_shape(circle, 0, type="mask", points=[1, 40, 40, 40, 40])]}, "outside"),
    ]
    for body, message in cases:
        status, answer, _ = await _http(
            cvat, "PATCH", f"/api/jobs/{first_job}/annotations?action=create", json=body
        )
        assert status == 400, body
        assert message in answer.decode(), answer
    assert cvat.annotations(task_id) == []

    status, answer, _ = await _http(cvat, "PATCH", f"/api/jobs/{first_job}/annotations",
                                    json={"shapes": []})  # fmt: skip
    assert status == 400 and b"action" in answer
    status, answer, _ = await _http(cvat, "PATCH", f"/api/jobs/{first_job}/annotations?action=update",
                                    json={"shapes": [{**_shape(circle, 0), "id": 12345}]})  # fmt: skip
    assert status == 400 and b"id 12345 is not in job" in answer
    status, answer, _ = await _http(cvat, "PUT", f"/api/jobs/{first_job}/annotations",
                                    data=b"{not json", headers={"Content-Type": "application/json"})  # fmt: skip
    assert status == 400 and b"JSON parse error" in answer


async def test_task_level_patch_splits_shapes_across_jobs(cvat: CvatStandIn) -> None:
    task_id = _add_dataset_task(cvat, n=5, segment_size=2)
    before = {s["id"] for s in cvat.annotations(task_id)}
    circle = cvat.labels(task_id)[0]["id"]
    status, body, _ = await _http(cvat, "PATCH", f"/api/tasks/{task_id}/annotations?action=create",
                                  json={"shapes": [_shape(circle, f, source="auto", score=0.5)
                                                   for f in range(5)]})  # fmt: skip
    assert status == 200 and len(json.loads(body)["shapes"]) == 5
    for job in cvat.jobs(task_id):
        status, body, _ = await _http(cvat, "GET", f"/api/jobs/{job['id']}/annotations")
        autos = [s for s in json.loads(body)["shapes"] if s["source"] == "auto"]
        assert [s["frame"] for s in autos] == list(range(job["start_frame"], job["stop_frame"] + 1))
    # Replace mode as the inference service does it: delete the automatic shapes, keep the rest.
    autos = [s for s in cvat.annotations(task_id) if s["source"] == "auto"]
    status, _, _ = await _http(cvat, "PATCH", f"/api/tasks/{task_id}/annotations?action=delete",
                               json={"shapes": autos})  # fmt: skip
    assert status == 200
    assert {s["id"] for s in cvat.annotations(task_id)} == before


# --- webhooks -------------------------------------------------------------------------------


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Signature-256"], expected)


async def test_job_completion_delivers_signed_webhooks(cvat: CvatStandIn) -> None:
    async with Receiver() as receiver:
        webhook_id = cvat.add_webhook(
            receiver.url, "s3cr3t", events=["create:task", "update:job", "update:task"]
        )
        task_id = _add_dataset_task(cvat, n=4, segment_size=2, project_id=3)
        first, second = (j["id"] for j in cvat.jobs(task_id))
        cvat.set_job_state(first, state="completed")
        await cvat.wait_for_webhooks()
        assert [p["event"] for p in receiver.payloads()] == ["create:task", "update:job"]
        job_after = cvat.set_job_state(second, state="completed", stage="acceptance")
        await cvat.wait_for_webhooks()

    payloads = receiver.payloads()
    assert [p["event"] for p in payloads] == ["create:task", "update:job", "update:job",
                                              "update:task"]  # fmt: skip
    for headers, body in receiver.received:
        assert _verify("s3cr3t", headers, body)
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"].startswith("CVAT/2.80")
    assert not _verify("other", *receiver.received[0])

    created, job_update, _, task_update = payloads
    assert created["task"]["id"] == task_id and created["webhook_id"] == webhook_id
    assert created["sender"]["username"] == "admin1"
    assert job_update["job"]["id"] == first and job_update["job"]["state"] == "completed"
    assert job_update["before_update"]["state"] == "new"
    assert job_update["changes"]["state"] == {"from": "new", "to": "completed"}
    assert payloads[2]["job"] == job_after and job_after["status"] == "completed"
    assert payloads[2]["changes"]["stage"] == {"from": "annotation", "to": "acceptance"}
    assert task_update["task"]["status"] == "completed"
    assert task_update["task"]["jobs"]["completed"] == 2
    assert task_update["changes"]["status"] == {"from": "annotation", "to": "completed"}
    assert task_update["before_update"]["status"] == "annotation"
    # The payload objects are exactly what the REST API answers.
    assert task_update["task"] == cvat.task(task_id)
    _assert_schema_fields(task_update["task"], models.TaskRead)


async def test_webhook_retries_and_explicit_deliveries(cvat: CvatStandIn) -> None:
    async with Receiver() as receiver:
        receiver.statuses = [503, 500]
        webhook_id = cvat.add_webhook(receiver.url, "k", events=["update:job"], project_id=9)
        other = _add_dataset_task(cvat, n=2)
        task_id = _add_dataset_task(cvat, n=2, project_id=9)
        cvat.set_job_state(cvat.jobs(other)[0]["id"], state="completed")  # another project
        cvat.set_job_state(cvat.jobs(task_id)[0]["id"], state="in progress")
        deliveries = await cvat.wait_for_webhooks()
        assert [d.status for d in deliveries] == [503, 500, 200]
        assert [d.attempt for d in deliveries] == [1, 2, 3]
        assert len({body for _, body in receiver.received}) == 1  # the same delivery thrice

        status, text = await cvat.deliver(webhook_id, "update:job",
                                          {"job": cvat.jobs(task_id)[0]}, signature="sha256=00")  # fmt: skip
        assert status == 200 and text == "ok"
        assert receiver.received[-1][0]["X-Signature-256"] == "sha256=00"
        await cvat.deliver(webhook_id, "update:job", {}, body=b"{broken")
        assert receiver.received[-1][1] == b"{broken"
        assert _verify("k", *receiver.received[-1])
        status, _ = await cvat.ping(webhook_id)
        assert status == 200 and json.loads(receiver.received[-1][1])["event"] == "ping"


async def test_export_completion_and_thread_side_state_changes(cvat: CvatStandIn) -> None:
    async with Receiver() as receiver:
        cvat.add_webhook(receiver.url, "k", events=["completed:request[export:dataset]",
                                                    "update:job"])  # fmt: skip
        task_id = _add_dataset_task(cvat, n=2)
        status, body, _ = await _http(
            cvat, "POST", f"/api/tasks/{task_id}/dataset/export?format=COCO%201.0&save_images=1"
        )
        assert status == 202
        rq_id = json.loads(body)["rq_id"]
        job_id = cvat.jobs(task_id)[0]["id"]
        await _sync(lambda: cvat.set_job_state(job_id, state="completed"))  # from a thread
        for _ in range(100):
            await cvat.wait_for_webhooks()
            if len(receiver.received) == 2:
                break
            await asyncio.sleep(0.02)
    events = {p["event"]: p for p in receiver.payloads()}
    request = events["completed:request[export:dataset]"]["request"]
    assert request["id"] == rq_id and request["status"] == "finished"
    assert request["result_url"].startswith(f"{cvat.url}/api/tasks/{task_id}/dataset/download")
    assert events["update:job"]["job"]["state"] == "completed"


async def test_unanswered_delivery_is_retried_and_arrives_twice() -> None:
    async with CvatStandIn(webhook_timeout=0.2) as server, Receiver() as receiver:
        receiver.delays = [1.0]  # the first attempt times out, as CVAT sees it
        server.add_webhook(receiver.url, "k", events=["update:job"])
        task_id = _add_dataset_task(server, n=1)
        server.set_job_state(server.jobs(task_id)[0]["id"], state="completed")
        deliveries = await server.wait_for_webhooks()
    assert [d.status for d in deliveries] == [504, 200]
    assert receiver.received[0][1] == receiver.received[1][1]


async def test_webhook_without_diff_keys() -> None:
    async with CvatStandIn(webhook_diff=()) as server, Receiver() as receiver:
        server.add_webhook(receiver.url, "", events=["update:job"])
        task_id = _add_dataset_task(server, n=2)
        server.set_job_state(server.jobs(task_id)[0]["id"], state="completed")
        await server.wait_for_webhooks()
    ((headers, body),) = receiver.received
    payload = json.loads(body)
    assert "X-Signature-256" not in headers  # no secret, no signature, as CVAT does
    assert "before_update" not in payload and "changes" not in payload


async def test_rest_job_patch_updates_state(cvat: CvatStandIn) -> None:
    task_id = _add_dataset_task(cvat, n=2)
    job_id = cvat.jobs(task_id)[0]["id"]

    def complete() -> models.JobRead:
        with _api(cvat) as api:
            job, _ = api.jobs_api.partial_update(
                job_id, patched_job_write_request=models.PatchedJobWriteRequest(state="completed")
            )
            return job

    job = await _sync(complete)
    assert job.state == "completed" and cvat.task(task_id)["status"] == "completed"
    status, body, _ = await _http(cvat, "PATCH", f"/api/jobs/{job_id}", json={"state": "done"})
    assert status == 400 and b"state" in body


# --- auth and organizations -----------------------------------------------------------------


async def test_auth_refusals_and_schemes(cvat: CvatStandIn) -> None:
    task_id = _add_dataset_task(cvat, n=1)
    path = f"/api/tasks/{task_id}"
    status, body, headers = await _http(cvat, "GET", path, token=None)
    assert status == 401 and json.loads(body)["detail"].startswith("Authentication credentials")
    assert headers["WWW-Authenticate"] == "Token"
    status, body, _ = await _http(cvat, "GET", path, token="wrong")
    assert (status, json.loads(body)) == (401, {"detail": "Invalid token."})
    assert (await _http(cvat, "GET", path, scheme="Token"))[0] == 200
    assert (await _http(cvat, "GET", path, scheme="Bearer"))[0] == 200
    assert (await _http(cvat, "GET", path, scheme="Basic"))[0] == 401
    assert (await _http(cvat, "GET", "/api/server/about", token=None))[0] == 200

    def wrong_token() -> None:
        with ApiClient(Configuration(host=cvat.url, access_token="nope")) as api:
            api.tasks_api.retrieve(task_id)

    with pytest.raises(exceptions.UnauthorizedException):
        await _sync(wrong_token)
    methods_paths = [(m, p, h.get("Authorization")) for m, p, h in cvat.request_log]
    assert ("GET", path, "Bearer wrong") in methods_paths
    assert ("GET", path, f"Token {TOKEN}") in methods_paths


async def test_organization_context_hides_other_tasks() -> None:
    async with CvatStandIn(tokens={TOKEN}, organization="acme") as server:
        images, _ = make_shapes_dataset(1, size=(32, 32))
        acme = server.add_task("acme task", shapes_labels(), images)
        mine = server.add_task("personal", shapes_labels(), images, organization=None)
        other = server.add_task("other org", shapes_labels(), images, organization="globex")
        assert server.task(acme)["organization"] != server.task(other)["organization"]

        async def visible(org: str | None) -> list[int]:
            headers = {} if org is None else {"X-Organization": org}
            status, body, _ = await _http(server, "GET", "/api/tasks", headers=headers)
            assert status == 200
            return sorted(t["id"] for t in json.loads(body)["results"])

        assert await visible(None) == [acme, mine, other]
        assert await visible("acme") == [acme]
        assert await visible("") == [mine]
        status, _, _ = await _http(server, "GET", f"/api/tasks/{other}",
                                   headers={"X-Organization": "acme"})  # fmt: skip
        assert status == 404
        status, _, _ = await _http(server, "GET", f"/api/tasks/{other}?org=globex")
        assert status == 200
        status, _, _ = await _http(server, "GET", "/api/tasks", headers={"X-Organization": "nope"})
        assert status == 404

        def sdk_in_org() -> list[int]:
            with _api(server, org="globex") as api:
                page, _ = api.jobs_api.list()
                with pytest.raises(exceptions.NotFoundException):
                    api.tasks_api.retrieve(acme)
                return [j.task_id for j in page.results]

        assert await _sync(sdk_in_org) == [other]


# --- frames, chunks and failure injection ---------------------------------------------------


async def test_frames_and_chunks(cvat: CvatStandIn) -> None:
    images, _ = make_shapes_dataset(5, size=(40, 32))
    task_id = cvat.add_task("frames", shapes_labels(), images, segment_size=3, chunk_size=2)
    status, body, headers = await _http(cvat, "GET", f"/api/tasks/{task_id}/data",
                                        params={"type": "frame", "number": 3, "quality": "original"})  # fmt: skip
    assert status == 200 and body == images[3][1] and headers["Content-Type"] == "image/jpeg"
    status, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data",
                                  params={"type": "frame", "number": 3, "quality": "compressed"})  # fmt: skip
    assert Image.open(io.BytesIO(body)).size == (40, 32)
    status, body, headers = await _http(cvat, "GET", f"/api/tasks/{task_id}/data",
                                        params={"type": "chunk", "number": 1, "quality": "original"})  # fmt: skip
    assert headers["Content-Type"] == "application/zip"
    chunk = zipfile.ZipFile(io.BytesIO(body))
    assert chunk.namelist() == ["000000.jpg", "000001.jpg"]
    assert [chunk.read(n) for n in chunk.namelist()] == [images[2][1], images[3][1]]
    status, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data",
                                  params={"type": "chunk", "number": 2, "quality": "compressed"})  # fmt: skip
    assert zipfile.ZipFile(io.BytesIO(body)).namelist() == ["000000.jpeg"]
    status, _, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data",
                               params={"type": "frame", "number": 5})  # fmt: skip
    assert status == 400
    second_job = cvat.jobs(task_id)[1]["id"]
    status, body, _ = await _http(cvat, "GET", f"/api/jobs/{second_job}/data",
                                  params={"type": "frame", "number": 4, "quality": "original"})  # fmt: skip
    assert status == 200 and body == images[4][1]
    status, _, _ = await _http(cvat, "GET", f"/api/jobs/{second_job}/data",
                               params={"type": "frame", "number": 0})  # fmt: skip
    assert status == 400

    def sdk_frame() -> bytes:
        with _api(cvat) as api:
            _, response = api.tasks_api.retrieve_data(
                task_id, type="frame", number=1, quality="original", _parse_response=False
            )
            return response.data

    assert await _sync(sdk_frame) == images[1][1]


async def test_failure_injection(cvat: CvatStandIn) -> None:
    images, _ = make_shapes_dataset(3, size=(32, 32))
    task_id = cvat.add_task("faults", shapes_labels(), images, chunk_size=3)
    cvat.fail("GET", rf"^/api/tasks/{task_id}$", status=500, times=3)
    statuses = [(await _http(cvat, "GET", f"/api/tasks/{task_id}"))[0] for _ in range(4)]
    assert statuses == [500, 500, 500, 200]
    cvat.fail("*", r"type=chunk", status=503, times=1, body="upstream gone")
    status, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data",
                                  params={"type": "chunk", "number": 0})  # fmt: skip
    assert (status, body) == (503, b"upstream gone")

    cvat.break_frame(task_id, 1)
    status, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data",
                                  params={"type": "frame", "number": 1, "quality": "original"})  # fmt: skip
    assert status == 200
    with pytest.raises(OSError):
        Image.open(io.BytesIO(body)).load()
    status, body, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data",
                                  params={"type": "chunk", "number": 0, "quality": "original"})  # fmt: skip
    chunk = zipfile.ZipFile(io.BytesIO(body))
    entries = [chunk.read(n) for n in chunk.namelist()]
    assert entries[0] == images[0][1] and entries[2] == images[2][1]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(entries[1])).load()

    cvat.delay(r"/data/meta$", 0.3)
    started = time.monotonic()
    status, _, _ = await _http(cvat, "GET", f"/api/tasks/{task_id}/data/meta")
    assert status == 200 and time.monotonic() - started >= 0.3


# --- the dataset generator ------------------------------------------------------------------


def test_make_shapes_dataset_is_deterministic_and_consistent() -> None:
    images, shapes = make_shapes_dataset(8, size=(80, 64), seed=5)
    again, shapes_again = make_shapes_dataset(8, size=(80, 64), seed=5)
    assert images == again and shapes == shapes_again
    assert make_shapes_dataset(8, size=(80, 64), seed=6)[0] != images
    assert {s["type"] for s in shapes} == {"rectangle", "polygon", "mask"}
    assert {s["label"] for s in shapes} == {"circle", "square"}
    assert {s["frame"] for s in shapes} == set(range(8))
    for name, data in images:
        assert Image.open(io.BytesIO(data)).size == (80, 64) and name.endswith(".jpg")
    for shape in shapes:
        pts = shape["points"]
        if shape["type"] == "mask":
            ours = decode_cvat_mask(pts, 80, 64)
            theirs = sdk_masks.decode_mask(pts, image_width=80, image_height=64)
            assert np.array_equal(ours, theirs) and ours.any()
            assert encode_cvat_mask(ours) == sdk_masks.encode_mask(ours)
        else:
            assert all(0 <= x <= 80 for x in pts[0::2]) and all(0 <= y <= 64 for y in pts[1::2])
    only_masks = make_shapes_dataset(3, kind="mask")[1]
    assert {s["type"] for s in only_masks} == {"mask"}
    with pytest.raises(ValueError, match="kind"):
        make_shapes_dataset(1, kind="ellipse")


async def test_seeded_attributes_and_defaults(cvat: CvatStandIn) -> None:
    labels = [{"name": "car", "type": "rectangle", "attributes": [
        {"name": "colour", "input_type": "select", "values": ["red", "blue"]},
        {"name": "parked", "input_type": "checkbox", "values": ["false"]}]}]  # fmt: skip
    images, _ = make_shapes_dataset(1, size=(32, 32))
    box = {"frame": 0, "label": "car", "type": "rectangle", "points": [1, 1, 9, 9]}
    task_id = cvat.add_task("attrs", labels, images, [{**box, "attributes": {"colour": "blue"}}])
    colour, parked = (a["id"] for a in cvat.labels(task_id)[0]["attributes"])
    (shape,) = cvat.annotations(task_id)
    assert shape["attributes"] == [{"spec_id": colour, "value": "blue"},
                                   {"spec_id": parked, "value": "false"}]  # fmt: skip
    status, body, _ = await _http(cvat, "POST",
                                  f"/api/tasks/{task_id}/dataset/export?format=COCO%201.0")  # fmt: skip
    assert status == 202
    rq_id = json.loads(body)["rq_id"]
    for _ in range(100):
        status, body, _ = await _http(cvat, "GET", f"/api/requests/{quote(rq_id, safe='')}")
        request = json.loads(body)
        if request["status"] == "finished":
            break
        await asyncio.sleep(0.02)
    status, body, _ = await _http(cvat, "GET", request["result_url"].removeprefix(cvat.url))
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.namelist() == ["annotations/instances_default.json"]  # no images asked
    (ann,) = json.loads(archive.read("annotations/instances_default.json"))["annotations"]
    assert ann["attributes"] == {"colour": "blue", "parked": False, "occluded": False,
                                 "rotation": 0.0}  # fmt: skip


def test_add_task_refuses_bad_input() -> None:
    server = CvatStandIn()
    images, _ = make_shapes_dataset(2, size=(32, 32))
    with pytest.raises(ValueError, match="names label 'dog'"):
        server.add_task("t", shapes_labels(), images, [{"frame": 0, "label": "dog",
                        "type": "rectangle", "points": [0, 0, 1, 1]}])  # fmt: skip
    with pytest.raises(ValueError, match="frame 5 is outside"):
        server.add_task("t", shapes_labels(), images, [{"frame": 5, "label": "circle",
                        "type": "rectangle", "points": [0, 0, 1, 1]}])  # fmt: skip
    with pytest.raises(ValueError, match="not a readable image"):
        server.add_task("t", shapes_labels(), [("a.jpg", b"nope")])
    assert server.state.tasks == {} and server.state.jobs == {}
