"""The exporter against the CVAT stand-in: the export flow, retries and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from preannotate.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from preannotate.v1 import common_pb2, events_pb2
from services.exporter.handlers import handle_task_annotated
from tests.standins.cvat import CvatStandIn, decode_cvat_mask, make_shapes_dataset, shapes_labels

PREFIX = "default/datasets/job-7/"
SIZE = (80, 64)  # width, height
EXPORT_PATH = r"/api/tasks/\d+/dataset/export"


@pytest.fixture
async def cvat():
    server = CvatStandIn(tokens={"secret-token"}, organization="acme")
    await server.start()
    yield server
    await server.stop()


def _task(server: CvatStandIn, n: int = 10, **kwargs) -> int:
    images, shapes = make_shapes_dataset(n, size=SIZE, seed=3, **kwargs)
    return server.add_task("shapes", labels=shapes_labels(), images=images, shapes=shapes)


def _msg(task_id: int, organization: str = "") -> events_pb2.TaskAnnotated:
    return events_pb2.TaskAnnotated(
        job_id="job-7",
        namespace="default",
        cvat=common_pb2.CvatRef(task_id=task_id, organization=organization),
        training=common_pb2.TrainingSpec(model_type="maskrcnn"),
    )


def _calls(server: CvatStandIn, method: str, pattern: str) -> int:
    import re

    return sum(1 for r in server.request_log if r.method == method and re.search(pattern, r.path))


def _expected(server: CvatStandIn, task_id: int) -> dict[str, list[tuple]]:
    """Per frame name: sorted (class id, x, y, w, h, mask or None) from the stand-in's shapes."""
    labels = [lb["name"] for lb in server.labels(task_id)]
    label_of = {lb["id"]: lb["name"] for lb in server.labels(task_id)}
    width, height = SIZE
    out: dict[str, list[tuple]] = {f"frame_{i:06d}.jpg": [] for i in range(10)}
    for shape in server.annotations(task_id):
        points, mask = shape["points"], None
        if shape["type"] == "rectangle":
            x1, y1, x2, y2 = points
        elif shape["type"] == "polygon":
            x1, x2, y1, y2 = (
                min(points[0::2]),
                max(points[0::2]),
                min(points[1::2]),
                max(points[1::2]),
            )
        else:
            mask = decode_cvat_mask(points, width, height)
            ys, xs = np.nonzero(mask)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        cls = labels.index(label_of[shape["label_id"]]) + 1
        out[f"frame_{shape['frame']:06d}.jpg"].append((cls, x1, y1, x2 - x1, y2 - y1, mask))
    return out


@pytest.mark.tf
async def test_an_annotated_task_becomes_records_with_its_shapes(cvat, ctx, storage, make_settings):
    from tests.exporter.tfdecode import decode_records

    task_id = _task(cvat)
    settings = make_settings(cvat_url=cvat.url, cvat_organization="acme")
    outcome = await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    event = outcome.emits[0].message
    assert outcome.emits[0].topic == "train.jobs.cpu"
    assert list(event.classes) == ["circle", "square"] and event.has_masks

    shards = [storage.root / k for k in storage.list(PREFIX) if k.endswith(".tfrecord")]
    items = {i["filename"]: i for i in decode_records(shards)}
    expected = _expected(cvat, task_id)
    assert sorted(items) == sorted(expected)
    width, height = SIZE
    for name, objects in expected.items():
        item = items[name]
        got = sorted(
            zip(
                item["groundtruth_classes"].tolist(),
                item["groundtruth_boxes"].tolist(),
                item["groundtruth_instance_masks"],
                strict=True,
            ),
            key=lambda o: (o[0], o[1][1], o[1][0]),
        )
        want = sorted(objects, key=lambda o: (o[0], o[1], o[2]))
        assert len(got) == len(want), name
        for (cls, box, mask), (w_cls, x, y, w, h, w_mask) in zip(got, want, strict=True):
            assert cls == w_cls
            assert box == pytest.approx(
                [y / height, x / width, (y + h) / height, (x + w) / width], abs=0.01 / width
            )
            if w_mask is not None:
                assert np.array_equal(mask > 0, w_mask)
    assert event.train.images + event.val.images == 10
    assert event.train.boxes + event.val.boxes == len(cvat.annotations(task_id))
    posts = [r for r in cvat.request_log if r.method == "POST"]
    assert posts[0].query == {"format": "COCO 1.0", "save_images": "true"}
    assert posts[0].headers["Authorization"] == "Bearer secret-token"
    assert posts[0].headers["X-Organization"] == "acme"
    assert any("preparing the export" in r["message"] for r in ctx.reports)


async def test_cvat_answering_500_three_times_fails_the_job(cvat, ctx, storage, make_settings):
    task_id = _task(cvat, n=4)
    cvat.fail("POST", EXPORT_PATH, status=500, times=3)
    settings = make_settings(cvat_url=cvat.url, cvat_organization="acme", cvat_retry_attempts=3)
    with pytest.raises(Unavailable) as caught:
        await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    message = str(caught.value)
    assert (
        f"CVAT answered 500 Internal Server Error to POST /api/tasks/{task_id}/dataset/export"
        in message
    )
    assert "Server Error (500)" in message  # CVAT's body
    assert "gave up after 3 tries" in message
    assert _calls(cvat, "POST", EXPORT_PATH) == 3
    assert storage.list(PREFIX) == []
    assert list((settings.export_work_dir).iterdir()) == []


async def test_a_few_5xx_are_retried(cvat, ctx, storage, make_settings):
    task_id = _task(cvat, n=4)
    cvat.fail("POST", EXPORT_PATH, status=502, times=2)
    cvat.fail("GET", r"/api/requests/", status=503, times=2)
    cvat.fail("GET", r"/dataset/download", status=500, times=2)
    settings = make_settings(cvat_url=cvat.url, cvat_organization="acme")
    outcome = await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    assert outcome.emits[0].message.train.images + outcome.emits[0].message.val.images == 4
    assert _calls(cvat, "POST", EXPORT_PATH) == 3
    assert storage.exists(PREFIX + "manifest.json")


async def test_a_refused_token_is_not_retried(cvat, ctx, storage, make_settings):
    """The operator's configuration is wrong: FailedPrecondition, as in the inference
    service (it was InvalidArgument here before the two clients became one)."""
    task_id = _task(cvat, n=4)
    settings = make_settings(cvat_url=cvat.url, cvat_token="wrong", cvat_organization="acme")
    with pytest.raises(
        FailedPrecondition,
        match=r"CVAT answered 401.*Invalid token.*"
        r"PREANNOTATE_CVAT_TOKEN",
    ):
        await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    assert _calls(cvat, "POST", EXPORT_PATH) == 1
    assert storage.list(PREFIX) == []


async def test_no_token_configured(cvat, ctx, make_settings):
    settings = make_settings(cvat_url=cvat.url, cvat_token="")
    with pytest.raises(FailedPrecondition, match="no CVAT token is configured"):
        await handle_task_annotated(_msg(1), ctx, settings=settings)


async def test_forbidden_and_missing(cvat, ctx, make_settings):
    task_id = _task(cvat, n=4)
    settings = make_settings(cvat_url=cvat.url, cvat_organization="acme")
    cvat.fail("POST", EXPORT_PATH, status=403, times=1)
    with pytest.raises(PermissionDenied, match=r"CVAT answered 403.*organisation"):
        await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    with pytest.raises(NotFound, match=r"CVAT answered 404.*/api/tasks/999/dataset/export"):
        await handle_task_annotated(_msg(999), ctx, settings=settings)


async def test_legacy_token_and_the_events_organisation(cvat, ctx, storage, make_settings):
    task_id = _task(cvat, n=4)
    settings = make_settings(cvat_url=cvat.url, cvat_auth_scheme="token")
    await handle_task_annotated(_msg(task_id, organization="acme"), ctx, settings=settings)
    sent = [r for r in cvat.request_log if r.path.startswith("/api/")]
    assert sent and all(r.headers["Authorization"] == "Token secret-token" for r in sent)
    assert all(r.headers.get("X-Organization") == "acme" for r in sent)
    manifest = storage.get(PREFIX + "manifest.json")
    assert b'"organization": "acme"' in manifest


async def test_an_export_cvat_could_not_make(cvat, ctx, storage, make_settings):
    task_id = _task(cvat, n=4)
    cvat.fail_export(task_id, "No space left on device")
    settings = make_settings(cvat_url=cvat.url, cvat_organization="acme")
    with pytest.raises(FailedPrecondition, match=r"CVAT failed to export task .*No space left"):
        await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    assert storage.list(PREFIX) == []


async def test_timeouts_are_retried_then_fail(cvat, ctx, storage, make_settings):
    task_id = _task(cvat, n=4)
    cvat.delay(EXPORT_PATH, 1.0, "POST")
    settings = make_settings(
        cvat_url=cvat.url,
        cvat_organization="acme",
        cvat_request_timeout_seconds=0.2,
        cvat_retry_attempts=2,
    )
    with pytest.raises(
        Unavailable,
        match=r"POST /api/tasks/\d+/dataset/export failed: "
        r".*(Timeout|timed out).*gave up after 2 tries",
    ):
        await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    assert storage.list(PREFIX) == []


async def test_an_export_that_takes_too_long(cvat, ctx, storage, make_settings):
    task_id = _task(cvat, n=4)
    cvat.export_seconds = 5.0
    settings = make_settings(
        cvat_url=cvat.url, cvat_organization="acme", cvat_export_timeout_seconds=0.3
    )
    with pytest.raises(Unavailable, match=r"did not finish exporting task .* within 0\.3 s"):
        await handle_task_annotated(_msg(task_id), ctx, settings=settings)


async def test_a_task_without_shapes(cvat, ctx, storage, make_settings):
    images, _ = make_shapes_dataset(4, size=SIZE)
    task_id = cvat.add_task("empty", labels=shapes_labels(), images=images)
    settings = make_settings(cvat_url=cvat.url, cvat_organization="acme")
    with pytest.raises(InvalidArgument, match=f"CVAT task {task_id} has no labelled shapes"):
        await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    assert storage.list(PREFIX) == []


async def test_one_broken_frame_does_not_fail_the_job(cvat, ctx, storage, make_settings):
    import json

    task_id = _task(cvat, n=6)
    cvat.break_frame(task_id, 2)
    settings = make_settings(cvat_url=cvat.url, cvat_organization="acme")
    outcome = await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    event = outcome.emits[0].message
    assert event.train.images + event.val.images == 5
    manifest = json.loads(storage.get(PREFIX + "manifest.json"))
    ((reason, count),) = manifest["notes"].items()
    assert reason.startswith("image skipped: not a readable image") and count == 1
    assert "frame_000002.jpg" in manifest["note_details"][0]
    assert "image skipped" in ctx.reports[-1]["details"]["export_notes"]


async def test_an_export_over_the_size_limit(cvat, ctx, storage, make_settings):
    task_id = _task(cvat, n=4)
    settings = make_settings(
        cvat_url=cvat.url, cvat_organization="acme", export_max_archive_bytes=1000
    )
    with pytest.raises(
        InvalidArgument, match=r"larger than the limit of 1000 bytes \(PREANNOTATE_EXPORT_MAX"
    ):
        await handle_task_annotated(_msg(task_id), ctx, settings=settings)
    assert storage.list(PREFIX) == []
    assert list(settings.export_work_dir.iterdir()) == []
