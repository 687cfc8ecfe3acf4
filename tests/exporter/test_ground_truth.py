"""A project's CVAT Ground Truth job is its dataset's validation split (services/exporter/
ground_truth.py, project.py): exactly the GT frames, with the GT job's labels, never in
``train``; only once the GT job is accepted (stage acceptance, state completed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from preannotate.errors import FailedPrecondition
from preannotate.v1 import common_pb2, events_pb2
from services.exporter import ground_truth as gt
from services.exporter.coco import Category, CocoExport, ImageRecord
from services.exporter.project import evaluation_frames, merge
from tests.exporter.test_project import project_message, records
from tests.standins.cvat import CvatStandIn, encode_cvat_mask, make_shapes_dataset, shapes_labels

PREFIX = "default/datasets/{}/"


def annotated_project(cvat: CvatStandIn) -> tuple[list[int], list[list[str]]]:
    """Two tasks of project 5, eight frames each, every annotation job completed."""
    tasks = []
    for seed in (1, 2):
        images, shapes = make_shapes_dataset(8, size=(64, 48), seed=seed, kind="rectangle")
        task = cvat.add_task("birds", shapes_labels(), images, shapes, project_id=5, segment_size=4)
        for job in cvat.jobs(task):
            cvat.set_job_state(job["id"], state="completed")
        tasks.append(task)
    return tasks, [[f.name for f in cvat.state.tasks[t].frames] for t in tasks]


async def test_an_accepted_ground_truth_job_is_the_validation_split(
    cvat, ctx, storage, make_settings
):
    tasks, names = annotated_project(cvat)
    # GT frames 1 and 6 of the first task: one square each, whatever the annotation
    # jobs drew there (circles and squares from make_shapes_dataset).
    square = [{"frame": f, "label": "square", "type": "rectangle", "points": [4, 4, 30, 20]}
              for f in (1, 6)]  # fmt: skip
    job = cvat.add_gt_job(tasks[0], [1, 6], square, state="completed", stage="acceptance")
    label_names = {lb["id"]: lb["name"] for lb in cvat.labels(tasks[0])}
    drawn = {f: sorted(label_names[s["label_id"]] for s in cvat.annotations(tasks[0])
                       if s["frame"] == f) for f in (1, 6)}  # fmt: skip
    assert any(labels != ["square"] for labels in drawn.values())  # the jobs drew otherwise

    settings = make_settings(cvat_url=cvat.url, export_val_fraction=0.5)
    outcome = await handle(cvat, ctx, settings, "gt-1")
    event = outcome.emits[0].message
    assert (event.train.images, event.val.images) == (14, 2)
    manifest = json.loads(storage.get(PREFIX.format("gt-1") + "manifest.json"))
    assert manifest["splits"]["val"]["source"] == "cvat-ground-truth"
    assert manifest["source"]["ground_truth_jobs"] == str(job["id"])
    local = storage.root / PREFIX.format("gt-1")
    val = records(sorted(local.glob("val-*.tfrecord")))
    train = records(sorted(local.glob("train-*.tfrecord")))
    gt_frames = {f"{tasks[0]}/{names[0][1]}", f"{tasks[0]}/{names[0][6]}"}
    assert set(val) == gt_frames
    assert all(labels == ["square"] for labels in val.values())  # the GT job's, not the jobs'
    assert not gt_frames & set(train)
    assert len(train) == 14  # every other frame of both tasks trains


async def test_a_ground_truth_job_not_accepted_leaves_the_split_by_file_name(
    cvat, ctx, storage, make_settings
):
    tasks, _ = annotated_project(cvat)
    shape = [{"frame": 1, "label": "square", "type": "rectangle", "points": [4, 4, 30, 20]}]
    job = cvat.add_gt_job(tasks[0], [1], shape, state="completed")  # stage still annotation
    empty = cvat.add_gt_job(tasks[1], [2], state="completed", stage="acceptance")
    settings = make_settings(cvat_url=cvat.url, export_val_fraction=0.25)
    await handle(cvat, ctx, settings, "gt-2")
    manifest = json.loads(storage.get(PREFIX.format("gt-2") + "manifest.json"))
    assert manifest["splits"]["val"]["source"] == "file-name-hash"
    assert "ground_truth_jobs" not in manifest["source"]
    unused = manifest["source"]["ground_truth_jobs_unused"]
    assert f"{job['id']} (not accepted yet)" in unused and f"{empty['id']} (no shapes)" in unused
    local = storage.root / PREFIX.format("gt-2")
    both = records(sorted(local.glob("*.tfrecord")))
    assert len(both) == 16  # the annotation jobs' frames, each once, as before


async def test_a_task_by_itself_brings_its_own_accepted_ground_truth_job(
    cvat, ctx, storage, make_settings
):
    """``train --task N``: the task's accepted Ground Truth job is the validation split,
    file names as the task's export has them; a pending one in another task is not
    asked for, and a task without one keeps the split by file name."""
    from services.exporter.handlers import handle_task_annotated

    tasks, names = annotated_project(cvat)
    square = [{"frame": 2, "label": "square", "type": "rectangle", "points": [4, 4, 30, 20]}]
    job = cvat.add_gt_job(tasks[0], [2, 5], square, state="completed", stage="acceptance")
    cvat.add_gt_job(tasks[1], [1], state="new")  # the other task's, not this one's
    settings = make_settings(cvat_url=cvat.url, export_val_fraction=0.5)

    def task_message(task_id: int, job_id: str) -> events_pb2.TaskAnnotated:
        return events_pb2.TaskAnnotated(
            job_id=job_id,
            namespace="default",
            cvat=common_pb2.CvatRef(url=cvat.url, task_id=task_id),
            training=common_pb2.TrainingSpec(model_type="ssd-mobilenet-v2-coco"),
        )

    outcome = await handle_task_annotated(task_message(tasks[0], "gt-t"), ctx, settings=settings)
    assert (outcome.emits[0].message.train.images, outcome.emits[0].message.val.images) == (6, 2)
    manifest = json.loads(storage.get(PREFIX.format("gt-t") + "manifest.json"))
    assert manifest["splits"]["val"]["source"] == "cvat-ground-truth"
    assert manifest["source"]["task_id"] == tasks[0]
    assert manifest["source"]["ground_truth_jobs"] == str(job["id"])
    assert "ground_truth_jobs_unused" not in manifest["source"]
    local = storage.root / PREFIX.format("gt-t")
    val = records(sorted(local.glob("val-*.tfrecord")))
    train = records(sorted(local.glob("train-*.tfrecord")))
    assert val == {names[0][2]: ["square"], names[0][5]: []}  # the GT job's shapes, none on 5
    assert set(train) == set(names[0]) - {names[0][2], names[0][5]}

    await handle_task_annotated(task_message(tasks[1], "gt-u"), ctx, settings=settings)
    manifest = json.loads(storage.get(PREFIX.format("gt-u") + "manifest.json"))
    assert manifest["splits"]["val"]["source"] == "file-name-hash"
    assert manifest["source"]["ground_truth_jobs_unused"].endswith("(not accepted yet)")
    assert "ground_truth_jobs" not in manifest["source"]


async def handle(cvat, ctx, settings, job_id):
    from services.exporter.handlers import handle_task_annotated

    return await handle_task_annotated(project_message(cvat.url, job_id), ctx, settings=settings)


def test_ground_truth_shapes_become_coco_instances_of_the_tasks_categories():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    points = [*encode_cvat_mask(mask)]
    job = {"id": 9, "task_id": 3, "type": "ground_truth"}
    task_meta = {"frames": [{"name": f"f{i}.jpg"} for i in range(4)], "deleted_frames": [3]}
    job_meta = {"included_frames": [0, 2, 3]}
    shapes = [
        {"id": 1, "frame": 0, "label_id": 7, "type": "rectangle", "points": [1, 2, 5, 8]},
        {"id": 2, "frame": 2, "label_id": 8, "type": "polygon", "points": [0, 0, 4, 0, 4, 4]},
        {"id": 3, "frame": 2, "label_id": 7, "type": "mask", "points": points},
        {"id": 4, "frame": 2, "label_id": 7, "type": "polyline", "points": [0, 0, 1, 1]},
        {"id": 5, "frame": 1, "label_id": 7, "type": "rectangle", "points": [1, 2, 5, 8]},
    ]
    labels = [{"id": 7, "name": "cat"}, {"id": 8, "name": "dog"}]
    truth = gt.read(job, task_meta, job_meta, {"shapes": shapes, "tracks": []}, labels)
    # frame 3 is deleted, frame 1 is not a GT frame, polylines have no COCO form
    assert set(truth.frames) == {"f0.jpg", "f2.jpg"} and truth.shapes == 3
    found = gt.instances(truth.frames["f2.jpg"], {"cat": 1, "dog": 2}, 12, 10)
    assert [(i.category_id, i.bbox) for i in found] == [(2, (0, 0, 4, 4)), (1, (3, 2, 4, 3))]
    assert found[0].area == 8 and found[1].area == 12
    with pytest.raises(FailedPrecondition, match="holds tracks"):
        gt.read(job, task_meta, job_meta, {"shapes": [], "tracks": [{"id": 1}]}, labels)


def test_merge_takes_ground_truth_frames_with_their_shapes_outside_completed_jobs():
    categories = (Category(1, "cat"), Category(2, "dog"))
    images = tuple(ImageRecord("default", n, 8, 8, None, ()) for n in ("a.jpg", "b.jpg"))
    truth = gt.GroundTruth(4, 3, {"b.jpg": ({"label": "dog", "type": "rectangle",
                                             "points": [1, 1, 3, 3], "id": 1},)})  # fmt: skip
    merged = merge([(3, CocoExport(categories, images), frozenset({"a.jpg"}))], {3: truth})
    assert [i.file_name for i in merged.images] == ["3/a.jpg", "3/b.jpg"]
    assert merged.images[1].instances[0].category_id == 2
    assert evaluation_frames([truth]) == {"3/b.jpg"}
    missing = gt.GroundTruth(4, 3, {"z.jpg": ()})
    with pytest.raises(FailedPrecondition, match="lacks"):
        merge([(3, CocoExport(categories, images), frozenset({"a.jpg"}))], {3: missing})
