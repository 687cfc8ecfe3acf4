"""A redelivered ``annotation.requested`` finishes its run once: the write ledger
(``services.inference.runledger``) makes a rerun resume after the frames an
earlier attempt wrote, and a rerun of a finished run writes nothing.

On the CVAT stand-in with the tiny RetinaNet, through the Kafka handler as the
runner calls it (same record twice = a redelivery)."""

from __future__ import annotations

import json

import pytest

from preannotate import keys
from preannotate.errors import Unavailable
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, events_pb2
from services.inference.handlers import InferenceHandlers
from tests.fakes import FakeContext
from tests.inference.helpers import make_settings, publish_model, start_app
from tests.standins.cvat import make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.tf

APPEND, REPLACE = events_pb2.ANNOTATE_MODE_APPEND, events_pb2.ANNOTATE_MODE_REPLACE


@pytest.fixture(scope="module")
def storage(tmp_path_factory, retinanet_dir):
    storage = LocalStorage(tmp_path_factory.mktemp("resume") / "storage")
    publish_model(storage, retinanet_dir, name="shapes")
    return storage


@pytest.fixture
async def handlers(storage, cvat, tmp_path):
    # Batches of 4 over jobs of 5 frames: the second batch spans two jobs.
    app, _ = await start_app(
        make_settings(tmp_path, cvat_url=cvat.url, cvat_retry_attempts=2), storage
    )
    try:
        yield InferenceHandlers(app)
    finally:
        await app.stop()


def _request(job_id: str, *, task_id: int = 0, url: str = "", mode=APPEND):
    return events_pb2.AnnotationRequested(
        job_id=job_id,
        namespace="default",
        cvat=common_pb2.CvatRef(task_id=task_id, url=url),
        model=common_pb2.ModelRef(name="shapes"),
        threshold=0.5,
        mode=mode,
    )


def _task(cvat, seed: int, manual: list | None = None) -> int:
    images, _ = make_shapes_dataset(12, size=(160, 120), seed=seed, kind="rectangle")
    return cvat.add_task(
        f"resume-{seed}", labels=shapes_labels(), images=images, shapes=manual or [],
        segment_size=5,
    )  # fmt: skip


def _auto_by_frame(cvat, task_id: int) -> dict[int, list]:
    """Frame -> its automatic shapes as (label name, points), sorted."""
    names = {lb["id"]: lb["name"] for lb in cvat.labels(task_id)}
    out: dict[int, list] = {}
    for s in cvat.annotations(task_id):
        if s["source"] == "auto":
            out.setdefault(s["frame"], []).append((names[s["label_id"]], s["points"]))
    return {f: sorted(items) for f, items in sorted(out.items())}


def _same_shapes(got: dict[int, list], want: dict[int, list]) -> bool:
    """Same frames, labels and counts; points within half a pixel (a rerun predicts
    some frames in a smaller batch, which may move the last digits)."""
    if {f: [n for n, _ in v] for f, v in got.items()} != {
        f: [n for n, _ in v] for f, v in want.items()
    }:
        return False
    return all(
        max(abs(a - b) for a, b in zip(p, q, strict=True)) <= 0.5
        for f in want
        for (_, p), (_, q) in zip(got[f], want[f], strict=True)
    )


def _patches(cvat, since: int) -> list[str]:
    return [r.path for r in cvat.request_log[since:] if r.method == "PATCH"]


@pytest.mark.parametrize("mode", [APPEND, REPLACE])
async def test_a_redelivered_run_writes_each_frame_once(handlers, cvat, storage, mode):
    manual = [{"frame": 1, "label": "circle", "type": "rectangle", "points": [1, 1, 9, 9],
               "source": "manual"}]  # fmt: skip
    reference, task_id = _task(cvat, 90, manual), _task(cvat, 90, manual)
    done = await handlers.handle_annotation_requested(
        _request(f"ref-{mode}", task_id=reference, mode=mode), FakeContext(storage)
    )
    expected = _auto_by_frame(cvat, reference)
    assert len(expected) >= 6 and done.emits[0].message.frames_done == 12

    # First delivery: the last job's PATCH keeps failing, after the first two
    # jobs were written; the run fails and the record is left for redelivery.
    last_job = cvat.jobs(task_id)[-1]["id"]
    cvat.fail("PATCH", rf"/api/jobs/{last_job}/annotations", status=503, times=2)
    msg = _request(f"run-{mode}", task_id=task_id, mode=mode)
    with pytest.raises(Unavailable):
        await handlers.handle_annotation_requested(msg, FakeContext(storage))
    partial = _auto_by_frame(cvat, task_id)
    assert partial and max(partial) < 10  # jobs 1 and 2 written, job 3 not

    # Redelivered: resumes after the frames written, each frame gets one set.
    before = len(cvat.request_log)
    outcome = await handlers.handle_annotation_requested(msg, FakeContext(storage))
    assert _same_shapes(_auto_by_frame(cvat, task_id), expected)
    assert [s["source"] for s in cvat.annotations(task_id)].count("manual") == 1
    assert _patches(cvat, before) == [f"/api/jobs/{last_job}/annotations"]  # no delete, no rewrite
    event = outcome.emits[0].message
    assert event.frames_done == 12
    assert event.shapes_written == sum(len(v) for v in expected.values())

    # Redelivered again after it finished (a crash before the commit): nothing
    # written, the same event.
    before = len(cvat.request_log)
    again = await handlers.handle_annotation_requested(msg, FakeContext(storage))
    assert _patches(cvat, before) == []
    assert again.emits[0].message == event
    assert _same_shapes(_auto_by_frame(cvat, task_id), expected)


async def test_the_ledger_records_each_durable_write(handlers, cvat, storage):
    task_id = _task(cvat, 91)
    await handlers.handle_annotation_requested(
        _request("ledger-1", task_id=task_id), FakeContext(storage)
    )
    prefix = keys.job_prefix("default", "ledger-1") + "annotate/"
    names = [k[len(prefix) :].split("/", 1)[1] for k in storage.list(prefix)]
    written = [n for n in names if n.startswith("written/")]
    # Frames 0-11 in batches of 4 over jobs 0-4, 5-9, 10-11: one record per
    # (batch, job): 0-3 | 4, 5-7 | 8-9, 10-11.
    assert len(written) == 5 and "prepared.json" in names and "finished.json" in names
    frames = sorted(
        f
        for k in storage.list(prefix)
        if "/written/" in k
        for f in json.loads(storage.get(k))["frames"]
    )
    assert frames == list(range(12))


async def test_a_folder_rerun_after_it_finished_does_not_append_again(handlers, storage, tmp_path):
    images, _ = make_shapes_dataset(4, size=(160, 120), seed=92, kind="rectangle")
    folder = tmp_path / "heldout" / "images" / "default"
    folder.mkdir(parents=True)
    for name, data in images:
        (folder / name).write_bytes(data)
    msg = _request("folder-1", url=(tmp_path / "heldout").as_uri())
    first = await handlers.handle_annotation_requested(msg, FakeContext(storage))
    path = tmp_path / "heldout" / "annotations" / "instances_default.json"
    count = len(json.loads(path.read_text())["annotations"])
    assert count == first.emits[0].message.shapes_written > 0
    again = await handlers.handle_annotation_requested(msg, FakeContext(storage))
    assert len(json.loads(path.read_text())["annotations"]) == count
    assert again.emits[0].message == first.emits[0].message
