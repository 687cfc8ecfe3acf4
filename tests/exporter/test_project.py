"""A project's dataset (services/exporter/project.py): the frames of every completed
job of the project, from all its tasks, named ``<task id>/<file name>``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from preannotate.errors import FailedPrecondition, InvalidArgument
from preannotate.tfexample import example_pb2
from preannotate.v1 import common_pb2, events_pb2
from services.exporter.coco import Category, CocoExport, ImageRecord
from services.exporter.handlers import handle_task_annotated
from services.exporter.project import completed_ranges, frames_in, merge
from services.trainer.evalset import frame_key
from tests.standins.cvat import make_shapes_dataset, shapes_labels

PREFIX = "default/datasets/rt-1/"


def _image(name: str) -> ImageRecord:
    return ImageRecord("default", name, 8, 8, None, ())


def _export(names, labels=("cat", "dog")) -> CocoExport:
    categories = tuple(Category(i + 1, name) for i, name in enumerate(labels))
    return CocoExport(categories, tuple(_image(n) for n in names))


def test_completed_jobs_give_frame_ranges_per_task():
    jobs = [
        {"task_id": 3, "start_frame": 0, "stop_frame": 3, "state": "completed"},
        {"task_id": 3, "start_frame": 4, "stop_frame": 7, "state": "in progress"},
        {"task_id": 4, "start_frame": 4, "stop_frame": 5, "state": "completed"},
        {
            "task_id": 4,
            "start_frame": 0,
            "stop_frame": 3,
            "state": "completed",
            "type": "ground_truth",
        },
    ]
    assert completed_ranges(jobs) == {3: [(0, 3)], 4: [(4, 5)]}
    meta = {"frames": [{"name": f"f{i}.jpg"} for i in range(8)], "deleted_frames": [5]}
    assert frames_in(meta, [(4, 5)], 4) == {"f4.jpg"}


def test_merge_names_frames_by_task_and_keeps_only_completed_ones():
    merged = merge(
        [
            (3, _export(["a.jpg", "b.jpg"]), frozenset({"a.jpg"})),
            (4, _export(["a.jpg", "c.jpg"]), frozenset({"a.jpg", "c.jpg"})),
        ]
    )
    assert [i.file_name for i in merged.images] == ["3/a.jpg", "4/a.jpg", "4/c.jpg"]
    assert [c.name for c in merged.categories] == ["cat", "dog"]


def test_merge_refuses_tasks_with_other_labels_and_an_empty_project():
    with pytest.raises(InvalidArgument, match="share the project's labels"):
        merge(
            [
                (3, _export(["a.jpg"]), frozenset({"a.jpg"})),
                (4, _export(["a.jpg"], labels=("dog", "cat")), frozenset({"a.jpg"})),
            ]
        )
    with pytest.raises(FailedPrecondition, match="no completed job"):
        merge([])


def test_the_evaluation_set_knows_each_frame_of_a_project_dataset_by_its_task():
    """A frame of a project dataset and the same frame trained from its task alone
    are one frame to the evaluation set, so it never leaks either way."""
    assert frame_key(0, "12/dir/a.jpg") == frame_key(12, "dir/a.jpg") == "12/dir/a.jpg"
    assert frame_key(0, "a.jpg") == "0/a.jpg"


def records(paths: list[Path]) -> dict[str, list[str]]:
    """``image/filename`` -> the record's class names, for every record of ``paths``
    (TFRecord framing read by hand: no TF)."""
    out = {}
    for path in paths:
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            example = example_pb2.Example.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            feature = example.features.feature
            name = feature["image/filename"].bytes_list.value[0].decode()
            out[name] = [t.decode() for t in feature["image/object/class/text"].bytes_list.value]
    return out


def project_message(url: str, job_id: str, project_id: int = 5) -> events_pb2.TaskAnnotated:
    """A retrain's TaskAnnotated: the project, no task."""
    return events_pb2.TaskAnnotated(
        job_id=job_id,
        namespace="default",
        cvat=common_pb2.CvatRef(url=url, project_id=project_id),
        training=common_pb2.TrainingSpec(model_type="ssd-mobilenet-v2-coco", model_name="birds"),
        trigger="retrain",
    )


async def test_a_project_export_holds_every_completed_job_of_every_task(
    cvat, ctx, storage, make_settings
):
    tasks = []
    for seed in (1, 2):
        images, shapes = make_shapes_dataset(8, size=(64, 48), seed=seed)
        tasks.append(
            cvat.add_task("birds", shapes_labels(), images, shapes, project_id=5, segment_size=4)
        )
    other = make_shapes_dataset(4, size=(64, 48))
    cvat.add_task("other", shapes_labels(), *other, project_id=6, segment_size=4)
    first_jobs = [j["id"] for j in cvat.jobs(tasks[0])]
    second_jobs = [j["id"] for j in cvat.jobs(tasks[1])]
    cvat.set_job_state(first_jobs[0], state="completed")  # frames 0-3 of task 1
    cvat.set_job_state(second_jobs[1], state="completed")  # frames 4-7 of task 2
    cvat.set_job_state(second_jobs[0], state="in progress")  # not ground truth yet

    msg = project_message(cvat.url, "rt-1")
    settings = make_settings(cvat_url=cvat.url, export_val_fraction=0.25)
    outcome = await handle_task_annotated(msg, ctx, settings=settings)
    [emit] = outcome.emits
    event = emit.message
    assert event.train.images + event.val.images == 8
    manifest = json.loads(storage.get(PREFIX + "manifest.json"))
    assert manifest["source"]["project_id"] == 5
    assert manifest["source"]["tasks"] == f"{tasks[0]},{tasks[1]}"
    assert manifest["source"]["completed_jobs"] == 2
    local = storage.root / PREFIX
    names = list(records(sorted(local.glob("*.tfrecord"))))
    frames = [[f.name for f in cvat.state.tasks[t].frames] for t in tasks]
    expected = {f"{tasks[0]}/{n}" for n in frames[0][:4]}
    expected |= {f"{tasks[1]}/{n}" for n in frames[1][4:8]}
    assert sorted(names) == sorted(expected)


async def test_a_project_without_completed_jobs_says_so(cvat, ctx, make_settings):
    images, shapes = make_shapes_dataset(4, size=(64, 48))
    cvat.add_task("birds", shapes_labels(), images, shapes, project_id=5)
    msg = events_pb2.TaskAnnotated(
        job_id="rt-2",
        namespace="default",
        cvat=common_pb2.CvatRef(url=cvat.url, project_id=5),
        training=common_pb2.TrainingSpec(model_type="ssd-mobilenet-v2-coco", model_name="b"),
    )
    with pytest.raises(FailedPrecondition, match="project 5 has no completed job"):
        await handle_task_annotated(msg, ctx, settings=make_settings(cvat_url=cvat.url))
