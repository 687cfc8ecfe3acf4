"""The inference metrics move when frames are predicted, skipped and written, by
every door (annotation runs on CVAT and on a folder, single-image Predict)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from preannotate.v1 import common_pb2, events_pb2
from services.inference.app import AnnotationJob
from tests.standins.cvat import make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.tf

MODEL = "default/shapes"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    return {
        "frames": value("preannotate_inference_frames_total", model=MODEL),
        "latency_count": value("preannotate_inference_latency_seconds_count", model=MODEL),
        "latency_sum": value("preannotate_inference_latency_seconds_sum", model=MODEL),
        "batch_sum": value("preannotate_inference_batch_size_sum", model=MODEL),
        "decode_skips": value("preannotate_inference_frames_skipped_total", reason="decode"),
        "fetch_skips": value("preannotate_inference_frames_skipped_total", reason="fetch"),
        "cvat_shapes": value(
            "preannotate_inference_shapes_written_total", model=MODEL, target="cvat"
        ),
        "folder_shapes": value(
            "preannotate_inference_shapes_written_total", model=MODEL, target="folder"
        ),
        "cvat_ok": value("preannotate_inference_runs_total", target="cvat", outcome="succeeded"),
        "cvat_failed": value("preannotate_inference_runs_total", target="cvat", outcome="failed"),
        "folder_ok": value(
            "preannotate_inference_runs_total", target="folder", outcome="succeeded"
        ),
    }


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 6) for k in before}


def _job(cvat_ref: common_pb2.CvatRef) -> AnnotationJob:
    return AnnotationJob(
        job_id="annotate-metrics",
        namespace="default",
        cvat=cvat_ref,
        model=common_pb2.ModelRef(name="shapes"),
        threshold=0.5,
        mode=events_pb2.ANNOTATE_MODE_REPLACE,
    )


async def test_an_annotation_run_on_cvat_moves_the_counters(app, cvat):
    images, _ = make_shapes_dataset(10, size=(160, 120), seed=61, kind="rectangle")
    task_id = cvat.add_task("metrics", labels=shapes_labels(), images=images, segment_size=5)
    cvat.break_frame(task_id, 2)  # served, but not an image: a decode skip
    cvat.fail("GET", rf"/api/tasks/{task_id}/data\?.*number=7\b", status=404, times=5)
    before = snapshot()
    done = await app.annotate(_job(common_pb2.CvatRef(task_id=task_id)))
    delta = moved(before, snapshot())

    assert done.frames_done == 8 and sorted(s.frame for s in done.skipped) == [2, 7]
    assert delta["frames"] == 8
    # Batches of inference_batch_size=4: 8 frames in at least 2 predict calls.
    assert delta["latency_count"] >= 2 and delta["latency_sum"] > 0
    assert delta["batch_sum"] == 8
    assert (delta["decode_skips"], delta["fetch_skips"]) == (1, 1)
    assert delta["cvat_shapes"] == done.shapes_written > 0
    assert delta["folder_shapes"] == 0
    assert (delta["cvat_ok"], delta["cvat_failed"]) == (1, 0)


async def test_a_folder_run_counts_as_a_folder_target(app, tmp_path):
    images, _ = make_shapes_dataset(5, size=(160, 120), seed=62, kind="rectangle")
    folder = tmp_path / "heldout" / "images" / "default"
    folder.mkdir(parents=True)
    for name, data in images:
        (folder / name).write_bytes(data)
    before = snapshot()
    done = await app.annotate(_job(common_pb2.CvatRef(url=(tmp_path / "heldout").as_uri())))
    delta = moved(before, snapshot())
    assert delta["frames"] == 5 and delta["folder_ok"] == 1
    assert delta["folder_shapes"] == done.shapes_written > 0
    assert delta["cvat_shapes"] == 0


async def test_a_failed_run_is_counted_as_failed(app, cvat):
    images, _ = make_shapes_dataset(3, size=(160, 120), seed=63)
    task_id = cvat.add_task("nolabels", labels=shapes_labels(("dog",)), images=images)
    before = snapshot()
    with pytest.raises(Exception, match="none of model"):
        await app.annotate(_job(common_pb2.CvatRef(task_id=task_id)))
    delta = moved(before, snapshot())
    assert (delta["cvat_failed"], delta["cvat_ok"], delta["frames"]) == (1, 0, 0)


async def test_single_image_predictions_count_too(app):
    images, _ = make_shapes_dataset(3, size=(160, 120), seed=64)
    before = snapshot()
    for _, data in images:
        await app.predict(common_pb2.ModelRef(name="shapes"), data, 0.5)
    delta = moved(before, snapshot())
    assert delta["frames"] == 3
    assert 1 <= delta["latency_count"] <= 3


async def test_model_gauges(app):
    assert value("preannotate_inference_models_known") >= 1
    # The in-process backend has loaded the model by now (earlier tests predicted).
    await app.predict(common_pb2.ModelRef(name="shapes"), make_shapes_dataset(1)[0][0][1], 0.5)
    assert value("preannotate_inference_models_loaded", backend="inprocess") >= 1
