"""Pre-annotating a local folder (CvatRef.url = file://<root>) into a CVAT-importable
COCO 1.0 file, with the tiny real models."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from preannotate.errors import InvalidArgument, NotFound
from preannotate.v1 import common_pb2, events_pb2
from services.inference.app import AnnotationJob
from services.inference.targets.folder import ANNOTATIONS, IMAGES
from tests.inference.helpers import make_settings, start_app
from tests.standins.cvat import make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.tf

REPLACE, APPEND = events_pb2.ANNOTATE_MODE_REPLACE, events_pb2.ANNOTATE_MODE_APPEND
_RUNS = itertools.count(1)
BROKEN = 3


def _job(url: str, *, mode=REPLACE, model="shapes", threshold=0.5, task_id=0) -> AnnotationJob:
    return AnnotationJob(
        job_id=f"annotate-{next(_RUNS)}",  # each call a new run (a rerun: same id)
        namespace="default",
        cvat=common_pb2.CvatRef(url=url, task_id=task_id),
        model=common_pb2.ModelRef(name=model),
        threshold=threshold,
        mode=mode,
    )


def _folder(root: Path, images: list[tuple[str, bytes]], broken: int | None = None) -> Path:
    folder = root / IMAGES
    folder.mkdir(parents=True)
    for i, (name, data) in enumerate(images):
        (folder / name).write_bytes(b"not an image at all" if i == broken else data)
    (folder / "notes.txt").write_text("not a frame")  # other files are left alone
    return root


def _coco(root: Path):
    from pycocotools.coco import COCO

    return COCO(str(root / ANNOTATIONS))


def _boxes_by_frame(doc: dict, names: list[str]) -> list[tuple[int, str, list[float], float]]:
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    files = {i["id"]: i["file_name"] for i in doc["images"]}
    out = []
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        out.append((names.index(files[a["image_id"]]), cats[a["category_id"]],
                    [x, y, x + w, y + h], a["score"]))  # fmt: skip
    return sorted(out, key=lambda t: (t[0], t[1], t[2]))


async def test_a_folder_gets_a_coco_file_with_the_boxes_cvat_would_get(app, cvat, tmp_path):
    images, _ = make_shapes_dataset(10, size=(160, 120), seed=71, kind="rectangle")
    names = [n for n, _ in images]
    root = _folder(tmp_path / "heldout", images, broken=BROKEN)
    skipped = []

    async def on_progress(p):
        skipped.extend(p.skipped)

    done = await app.annotate(_job(root.as_uri()), on_progress)

    # The file: COCO that pycocotools reads, in CVAT's export layout.
    coco = _coco(root)
    doc = coco.dataset
    assert [c["name"] for c in doc["categories"]] == ["circle", "square"]
    assert [c["id"] for c in doc["categories"]] == [1, 2]
    assert sorted(i["file_name"] for i in doc["images"]) == sorted(
        n for i, n in enumerate(names) if i != BROKEN
    )
    assert all((i["width"], i["height"]) == (160, 120) for i in doc["images"])
    assert len(doc["annotations"]) == done.shapes_written > 0
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
    for a in doc["annotations"]:
        assert a["iscrowd"] == 0 and a["segmentation"] == []
        assert a["score"] == a["attributes"]["score"] >= 0.5
        assert a["attributes"]["source"] == "auto"
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 160.01 and y + h <= 120.01
        assert a["area"] == pytest.approx(w * h, rel=0.01)
    assert coco.getAnnIds(imgIds=[doc["images"][0]["id"]]) is not None
    # Nothing else was left in the folder (written atomically).
    assert sorted(p.name for p in (root / "annotations").iterdir()) == ["instances_default.json"]

    # The broken image is skipped and reported; the rest were predicted.
    assert [(s.frame, names[BROKEN] in s.reason) for s in done.skipped] == [(BROKEN, True)]
    assert [f for f, _ in skipped] == [BROKEN]
    assert (done.frames_total, done.frames_done) == (10, 9)
    assert list(done.unmatched_classes) == []

    # The same frames as a CVAT task: the same boxes, labels and scores.
    task_id = cvat.add_task("same", labels=shapes_labels(), images=images, segment_size=4)
    cvat.break_frame(task_id, BROKEN)
    on_cvat = await app.annotate(_job("", task_id=task_id))
    assert on_cvat.shapes_written == done.shapes_written
    label_names = {lb["id"]: lb["name"] for lb in cvat.labels(task_id)}
    from_cvat = sorted(
        ((s["frame"], label_names[s["label_id"]], s["points"], s["score"])
         for s in cvat.annotations(task_id)),
        key=lambda t: (t[0], t[1], t[2]),
    )  # fmt: skip
    from_file = _boxes_by_frame(doc, names)
    assert len(from_cvat) == len(from_file)
    for (f1, l1, p1, s1), (f2, l2, p2, s2) in zip(from_cvat, from_file, strict=True):
        assert (f1, l1) == (f2, l2)
        assert p1 == pytest.approx(p2, abs=0.02)
        assert s1 == pytest.approx(s2, abs=1e-4)


async def test_replace_twice_leaves_one_set_and_append_adds_one(app, tmp_path):
    images, _ = make_shapes_dataset(6, size=(160, 120), seed=72, kind="rectangle")
    root = _folder(tmp_path / "data", images)
    first = await app.annotate(_job(root.as_uri(), mode=REPLACE))
    after_first = json.loads((root / ANNOTATIONS).read_text())
    second = await app.annotate(_job(root.as_uri(), mode=REPLACE))
    after_second = json.loads((root / ANNOTATIONS).read_text())
    assert first.shapes_written == second.shapes_written == len(after_second["annotations"]) > 0
    assert after_first == after_second

    # Append merges with the file: images matched by name, new annotation ids.
    third = await app.annotate(_job(root.as_uri(), mode=APPEND))
    merged = _coco(root).dataset
    assert len(merged["annotations"]) == 2 * third.shapes_written
    assert len({a["id"] for a in merged["annotations"]}) == len(merged["annotations"])
    assert merged["images"] == after_second["images"]
    assert merged["categories"] == after_second["categories"]


async def test_append_keeps_foreign_categories_and_images(app, tmp_path):
    images, _ = make_shapes_dataset(3, size=(160, 120), seed=73, kind="rectangle")
    root = _folder(tmp_path / "data", images)
    existing = {
        "info": {"description": "hand-made"},
        "categories": [{"id": 1, "name": "square", "supercategory": ""},
                       {"id": 7, "name": "dog", "supercategory": ""}],
        "images": [{"id": 40, "file_name": images[1][0], "width": 160, "height": 120},
                   {"id": 41, "file_name": "elsewhere.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 5, "image_id": 41, "category_id": 7, "bbox": [1, 1, 2, 2],
                         "area": 4, "iscrowd": 0, "segmentation": []}],
    }  # fmt: skip
    (root / "annotations").mkdir()
    (root / ANNOTATIONS).write_text(json.dumps(existing))
    done = await app.annotate(_job(root.as_uri(), mode=APPEND))
    doc = _coco(root).dataset
    assert doc["info"] == {"description": "hand-made"}
    cats = {c["name"]: c["id"] for c in doc["categories"]}
    assert cats == {"square": 1, "dog": 7, "circle": 8}
    files = {i["file_name"]: i["id"] for i in doc["images"]}
    assert files[images[1][0]] == 40 and files["elsewhere.jpg"] == 41
    assert {files[images[0][0]], files[images[2][0]]} == {42, 43}
    assert len(doc["annotations"]) == 1 + done.shapes_written
    new = [a for a in doc["annotations"] if a["id"] != 5]
    assert min(a["id"] for a in new) == 6
    assert {a["category_id"] for a in new} <= {1, 8}


async def test_a_file_that_is_not_coco_stops_append_but_not_replace(app, tmp_path):
    images, _ = make_shapes_dataset(2, size=(160, 120), seed=74)
    root = _folder(tmp_path / "data", images)
    (root / "annotations").mkdir()
    (root / ANNOTATIONS).write_text("{not json")
    with pytest.raises(InvalidArgument, match=r"cannot be read as JSON.*replace mode"):
        await app.annotate(_job(root.as_uri(), mode=APPEND))
    assert (root / ANNOTATIONS).read_text() == "{not json"
    (root / ANNOTATIONS).write_text(json.dumps({"images": [], "annotations": {}}))
    with pytest.raises(InvalidArgument, match="not a COCO file"):
        await app.annotate(_job(root.as_uri(), mode=APPEND))
    await app.annotate(_job(root.as_uri(), mode=REPLACE))
    assert _coco(root).dataset["categories"][0]["name"] == "circle"


async def test_bad_folders_are_refused_with_what_to_change(app, tmp_path):
    with pytest.raises(NotFound, match="no such folder"):
        await app.annotate(_job((tmp_path / "nowhere").as_uri()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="images/default/ folder"):
        await app.annotate(_job((tmp_path / "empty").as_uri()))
    (tmp_path / "empty" / IMAGES).mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="holds no images"):
        await app.annotate(_job((tmp_path / "empty").as_uri()))
    with pytest.raises(InvalidArgument, match="local path"):
        await app.annotate(_job("file://otherhost/data"))
    assert not (tmp_path / "empty" / ANNOTATIONS).exists()


async def test_the_file_target_guard(storage, tmp_path):
    images, _ = make_shapes_dataset(3, size=(160, 120), seed=75, kind="rectangle")
    allowed = tmp_path / "allowed"
    inside = _folder(allowed / "job", images)
    outside = _folder(tmp_path / "other", images)

    off, _ = await start_app(
        make_settings(tmp_path / "off", inference_allow_file_targets=False), storage
    )
    try:
        with pytest.raises(InvalidArgument, match="PREANNOTATE_INFERENCE_ALLOW_FILE_TARGETS"):
            await off.annotate(_job(inside.as_uri()))
    finally:
        await off.stop()

    app, _ = await start_app(
        make_settings(tmp_path / "rooted", inference_file_target_root=allowed), storage
    )
    try:
        for url in (
            outside.as_uri(),
            f"file://{allowed}/../other",
            f"file://{allowed}/%2e%2e/other",
        ):
            with pytest.raises(InvalidArgument, match="PREANNOTATE_INFERENCE_FILE_TARGET_ROOT"):
                await app.annotate(_job(url))
        assert not (outside / ANNOTATIONS).exists()
        # An image that leads out of the root through a link is skipped, not read.
        os.symlink(outside / IMAGES / images[0][0], inside / IMAGES / "zz-link.jpg")
        done = await app.annotate(_job(inside.as_uri()))
        assert [(s.frame, "outside" in s.reason) for s in done.skipped] == [(3, True)]
        assert done.frames_done == 3 and (inside / ANNOTATIONS).is_file()
    finally:
        await app.stop()


async def test_mask_rcnn_writes_polygons(app, tmp_path):
    images, _ = make_shapes_dataset(4, size=(160, 120), seed=76, kind="mask")
    root = _folder(tmp_path / "cells", images)
    done = await app.annotate(_job(root.as_uri(), model="cells", threshold=0.1))
    coco = _coco(root)
    anns = coco.dataset["annotations"]
    assert len(anns) == done.shapes_written > 0
    for a in anns:
        [polygon] = a["segmentation"]
        assert len(polygon) >= 6 and len(polygon) % 2 == 0
        x, y, w, h = a["bbox"]
        xs, ys = polygon[0::2], polygon[1::2]
        assert (min(xs), min(ys)) == pytest.approx((x, y), abs=0.02)
        assert (max(xs), max(ys)) == pytest.approx((x + w, y + h), abs=0.02)
        mask = coco.annToMask(a)
        assert mask.shape == (120, 160) and mask.sum() > 0
        assert a["area"] > 0
