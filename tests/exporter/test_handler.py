"""The handler over a local COCO zip (file://): storage layout, redelivery, refusals."""

from __future__ import annotations

import json

import pytest

from preannotate.errors import Cancelled, InvalidArgument, NotFound, Unavailable
from preannotate.v1 import common_pb2, events_pb2
from services.exporter.handlers import handle_task_annotated
from tests.exporter.cocozip import Builder, raw_zip
from tests.fakes import FakeContext

W, H = 48, 40
PREFIX = "default/datasets/job-1/"


def _export(path, n=8, labelled=True):
    b = Builder([(1, "cat"), (2, "dog")])
    for i in range(n):
        image_id = b.image(f"f{i}.jpg", W, H)
        if labelled:
            b.annotate(image_id, 1 + i % 2, [2.0 + i, 3.0, 10.0, 12.0])
    return b.write(path)


def _msg(url, machine="", job_id="job-1"):
    return events_pb2.TaskAnnotated(
        job_id=job_id,
        namespace="default",
        cvat=common_pb2.CvatRef(url=url),
        training=common_pb2.TrainingSpec(
            model_type="ssd-mobilenet-v2-coco", machine_type=machine, model_name="m"
        ),
        trigger="test",
    )


async def test_a_local_zip_becomes_a_dataset(tmp_path, ctx, storage, make_settings):
    zip_path = _export(tmp_path / "e.zip")
    settings = make_settings()
    outcome = await handle_task_annotated(_msg(f"file://{zip_path}"), ctx, settings=settings)

    (emit,) = outcome.emits
    assert emit.topic == "train.jobs.cpu"
    event = emit.message
    assert isinstance(event, events_pb2.DatasetExported)
    assert event.job_id == "job-1" and event.dataset_prefix == PREFIX
    assert list(event.classes) == ["cat", "dog"]
    assert event.train.images + event.val.images == 8 and event.val.images >= 1
    assert event.train.boxes + event.val.boxes == 8
    assert dict(event.train.boxes_per_class)["cat"] + dict(event.val.boxes_per_class)["cat"] == 4
    assert not event.has_masks
    assert event.training.model_type == "ssd-mobilenet-v2-coco"

    keys = storage.list(PREFIX)
    names = sorted(k.removeprefix(PREFIX) for k in keys)
    assert {"manifest.json", "label_map.pbtxt", "classes.csv", "images.csv"} <= set(names)
    assert any(n.startswith("train-") and n.endswith(".tfrecord") for n in names)
    assert any(n.startswith("val-") and n.endswith(".tfrecord") for n in names)
    manifest = json.loads(storage.get(PREFIX + "manifest.json"))
    assert manifest["kind"] == "dataset" and manifest["source"]["kind"] == "file"
    assert manifest["splits"]["train"]["images"] == event.train.images
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    progress = [r["progress"] for r in ctx.reports if r.get("progress") is not None]
    assert progress and (progress[-1].step, progress[-1].total) == (8, 8)
    stages = {r["stage"] for r in ctx.reports}
    assert stages == {events_pb2.JOB_STAGE_EXPORT}
    assert "dataset ready" in ctx.reports[-1]["message"]
    assert list((tmp_path / "work").iterdir()) == []  # the work folder is cleaned


@pytest.mark.tf
async def test_stored_records_decode_with_official_vision(tmp_path, ctx, storage, make_settings):
    from tests.exporter.tfdecode import decode_records

    zip_path = _export(tmp_path / "e.zip")
    await handle_task_annotated(_msg(f"file://{zip_path}"), ctx, settings=make_settings())
    shards = [storage.root / k for k in storage.list(PREFIX) if k.endswith(".tfrecord")]
    items = {i["filename"]: i for i in decode_records(shards)}
    assert len(items) == 8
    for i in range(8):
        item = items[f"f{i}.jpg"]
        x, y, w, h = 2.0 + i, 3.0, 10.0, 12.0
        assert item["groundtruth_classes"].tolist() == [1 + i % 2]
        assert item["groundtruth_boxes"][0].tolist() == pytest.approx(
            [y / H, x / W, (y + h) / H, (x + w) / W], abs=1e-6
        )


async def test_redelivery_does_no_work_and_emits_the_same_event(
    tmp_path, ctx, storage, make_settings
):
    zip_path = _export(tmp_path / "e.zip")
    settings = make_settings()
    msg = _msg(f"file://{zip_path}")
    first = await handle_task_annotated(msg, ctx, settings=settings)
    manifest = storage.get(PREFIX + "manifest.json")
    zip_path.unlink()  # any real work would now fail
    ctx.reports.clear()

    second = await handle_task_annotated(msg, ctx, settings=settings)
    assert second.emits[0].topic == first.emits[0].topic
    assert second.emits[0].message == first.emits[0].message
    assert storage.get(PREFIX + "manifest.json") == manifest
    assert ctx.reports == []


async def test_the_pool_asked_for(tmp_path, ctx, make_settings):
    zip_path = _export(tmp_path / "e.zip")
    settings = make_settings(machine_types="cpu=0,gpu-1=1", default_machine_type="cpu")
    outcome = await handle_task_annotated(
        _msg(f"file://{zip_path}", machine="gpu-1"), ctx, settings=settings
    )
    assert outcome.emits[0].topic == "train.jobs.gpu-1"


async def test_unknown_pool_is_refused_before_any_work(tmp_path, ctx, storage, make_settings):
    settings = make_settings(machine_types="cpu=0,gpu-4=4")
    with pytest.raises(
        InvalidArgument,
        match=r"machine type 'gpu-9' is unknown: use one of "
        r"cpu, gpu-4",
    ):
        await handle_task_annotated(
            _msg("file:///nowhere.zip", machine="gpu-9"), ctx, settings=settings
        )
    assert storage.list("default/") == [] and ctx.reports == []


async def test_no_labelled_shapes_fails_and_writes_nothing(tmp_path, ctx, storage, make_settings):
    zip_path = _export(tmp_path / "e.zip", labelled=False)
    with pytest.raises(InvalidArgument, match="has no labelled shapes"):
        await handle_task_annotated(_msg(f"file://{zip_path}"), ctx, settings=make_settings())
    assert storage.list(PREFIX) == []
    assert list((tmp_path / "work").iterdir()) == []


async def test_unsafe_zip_fails_and_leaves_nothing(tmp_path, ctx, storage, make_settings):
    zip_path = raw_zip(
        tmp_path / "e.zip", [("annotations/instances_default.json", b"{}"), ("../x", b"evil")]
    )
    with pytest.raises(InvalidArgument, match=r"'\.\./x' is refused"):
        await handle_task_annotated(_msg(f"file://{zip_path}"), ctx, settings=make_settings())
    assert storage.list(PREFIX) == []
    assert list((tmp_path / "work").iterdir()) == []
    assert not (tmp_path / "work" / "x").exists() and not (tmp_path / "x").exists()


async def test_oversize_zip_is_refused(tmp_path, ctx, storage, make_settings):
    zip_path = _export(tmp_path / "e.zip")
    with pytest.raises(InvalidArgument, match="PREANNOTATE_EXPORT_MAX_BYTES"):
        await handle_task_annotated(
            _msg(f"file://{zip_path}"), ctx, settings=make_settings(export_max_bytes=1000)
        )
    with pytest.raises(InvalidArgument, match="PREANNOTATE_EXPORT_MAX_FILES"):
        await handle_task_annotated(
            _msg(f"file://{zip_path}"), ctx, settings=make_settings(export_max_files=3)
        )
    assert storage.list(PREFIX) == []


async def test_leftovers_of_a_dead_attempt_are_replaced(tmp_path, ctx, storage, make_settings):
    storage.put(PREFIX + "train-00000-of-00009.tfrecord", b"stale")
    zip_path = _export(tmp_path / "e.zip")
    await handle_task_annotated(_msg(f"file://{zip_path}"), ctx, settings=make_settings())
    assert PREFIX + "train-00000-of-00009.tfrecord" not in storage.list(PREFIX)


async def test_file_import_rules(tmp_path, ctx, make_settings):
    zip_path = _export(tmp_path / "e.zip")
    msg = _msg(f"file://{zip_path}")
    with pytest.raises(InvalidArgument, match="PREANNOTATE_EXPORT_ALLOW_FILE_IMPORT"):
        await handle_task_annotated(
            msg, ctx, settings=make_settings(export_allow_file_import=False)
        )
    root = tmp_path / "imports"
    root.mkdir()
    with pytest.raises(InvalidArgument, match="PREANNOTATE_EXPORT_FILE_IMPORT_ROOT"):
        await handle_task_annotated(msg, ctx, settings=make_settings(export_file_import_root=root))
    with pytest.raises(NotFound, match="no such file"):
        await handle_task_annotated(
            _msg(f"file://{root}/missing.zip"), ctx, settings=make_settings()
        )


async def test_another_cvat_is_refused(ctx, make_settings):
    msg = _msg("http://elsewhere:8080")
    msg.cvat.task_id = 3
    with pytest.raises(InvalidArgument, match=r"not this deployment's CVAT \('http://cvat:8080'"):
        await handle_task_annotated(msg, ctx, settings=make_settings(cvat_url="http://cvat:8080"))


async def test_a_cancel_stops_the_job_and_writes_nothing(tmp_path, ctx, storage, make_settings):
    zip_path = _export(tmp_path / "e.zip")
    ctx.cancel = True
    with pytest.raises(Cancelled):
        await handle_task_annotated(_msg(f"file://{zip_path}"), ctx, settings=make_settings())
    assert storage.list(PREFIX) == []


async def test_bad_job_id_is_refused(ctx, make_settings):
    with pytest.raises(InvalidArgument, match="job id"):
        await handle_task_annotated(
            _msg("file:///x.zip", job_id="../etc"), ctx, settings=make_settings()
        )


async def test_an_event_without_namespace_is_the_services(tmp_path, ctx, storage, make_settings):
    msg = _msg(f"file://{_export(tmp_path / 'e.zip')}")
    msg.namespace = ""
    outcome = await handle_task_annotated(msg, ctx, settings=make_settings(namespace="team"))
    event = outcome.emits[0].message
    assert event.namespace == "team" and event.dataset_prefix == "team/datasets/job-1/"
    assert storage.list(PREFIX) == [] and storage.exists("team/datasets/job-1/manifest.json")

    again = await handle_task_annotated(msg, ctx, settings=make_settings(namespace="team"))
    assert again.emits[0].message == event  # found again under the same namespace


class _ProgressWritesFail(FakeContext):
    """Conversion progress reports (sent from the worker thread) cannot be written."""

    async def report(self, **kwargs):
        if kwargs["message"].startswith("converting:"):
            raise Unavailable("job.status: the broker is down")
        await super().report(**kwargs)


async def test_failed_progress_writes_do_not_fail_the_export(tmp_path, storage, make_settings):
    ctx = _ProgressWritesFail(storage)
    zip_path = _export(tmp_path / "e.zip")
    outcome = await handle_task_annotated(_msg(f"file://{zip_path}"), ctx, settings=make_settings())
    assert outcome.emits[0].message.dataset_prefix == PREFIX
    assert storage.exists(PREFIX + "manifest.json")
    assert "dataset ready" in ctx.reports[-1]["message"]
    failed = [f for level, event, f in ctx.log.lines if event == "status report failed"]
    assert failed and "broker is down" in failed[0]["error"]
