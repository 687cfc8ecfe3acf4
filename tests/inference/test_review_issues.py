"""Review issues and labels' own thresholds.

A run asked for review issues opens CVAT issues on each job's most doubtful
frames, writes the same shapes as without them, and a rerun opens none twice.
A label's own threshold decides which of its boxes are written (the other
labels keep the run's), and review measures doubt against it.

The inference service runs on the real runner with its gRPC server; CVAT is the
stand-in (its ``/api/issues`` as CVAT 2.x serves them); the serving backend is
scripted so that each frame gets known scores (the frame is told by the image's
width), which makes the ranking's choices checkable.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from preannotate.bus import MemoryBus
from preannotate.runner import Runtime
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference import app as inference_app
from services.inference.backends.base import ImageInput, RawOutput
from services.inference.service import build as build_inference
from tests.inference.helpers import TOKEN as CVAT_TOKEN
from tests.inference.helpers import make_settings, publish_model
from tests.standins.cvat import CvatStandIn, shapes_labels

pytestmark = pytest.mark.timeout(90)

WIDTH, HEIGHT = 100, 80
#: Scores of the boxes the model finds on each frame (class 1, "circle").
SCORES = {
    0: [0.95],  # sure
    1: [0.52],  # just above the threshold: the most doubtful of job 1
    2: [0.9, 0.3],  # a low one, near the band's edge
    3: [],  # nothing: some doubt
    4: [0.97],
    5: [0.45],  # just below: the most doubtful of job 2
}
BOX = [0.1, 0.2, 0.5, 0.6]  # ymin, xmin, ymax, xmax


class ScriptedBackend:
    """Answers each image with the boxes ``SCORES`` gives its frame (width - WIDTH)."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls = 0

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def sync(self) -> None: ...

    async def prepare(self, model: Any) -> None: ...

    async def predict(self, model: Any, images: Sequence[ImageInput]) -> list[RawOutput]:
        self.calls += 1
        out = []
        for image in images:
            scores = SCORES[image.width - WIDTH]
            out.append(
                RawOutput(
                    boxes=np.array([BOX] * len(scores), np.float32).reshape(-1, 4),
                    scores=np.array(scores, np.float32),
                    classes=np.ones(len(scores), np.int64),
                )
            )
        return out


def frames() -> list[tuple[str, bytes]]:
    out = []
    for i in sorted(SCORES):
        buf = io.BytesIO()
        Image.new("RGB", (WIDTH + i, HEIGHT), (90, 90, 90)).save(buf, format="PNG")
        out.append((f"frame-{i}.png", buf.getvalue()))
    return out


def scripted_model(tmp_path: Path, monkeypatch) -> tuple[LocalStorage, ScriptedBackend]:
    """Storage with a published stand-in model, and the backend that answers for it."""
    source = tmp_path / "savedmodel"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"stand-in")
    storage = LocalStorage(tmp_path / "storage")
    publish_model(storage, source)
    backend = ScriptedBackend()
    monkeypatch.setattr(inference_app, "make_backend", lambda *a, **k: backend)
    return storage, backend


@pytest.fixture
async def service(tmp_path: Path, monkeypatch) -> AsyncIterator[tuple]:
    storage, _ = scripted_model(tmp_path, monkeypatch)
    async with CvatStandIn(tokens={CVAT_TOKEN}) as cvat:
        settings = make_settings(tmp_path, cvat_url=cvat.url, metrics_port=0, kafka_partitions=1)
        runtime = Runtime([(build_inference(settings), settings)], bus=MemoryBus(), storage=storage)
        await runtime.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_ports['inference']}")
        try:
            yield inference_pb2_grpc.InferenceServiceStub(channel), cvat
        finally:
            await channel.close()
            await runtime.stop()


async def annotate(stub, task_id: int, review_issues: int = 0, **fields: Any) -> list:
    request = inference_pb2.AnnotateTaskRequest(
        model=common_pb2.ModelRef(name="shapes"),
        cvat=common_pb2.CvatRef(task_id=task_id),
        threshold=0.5,
        review_issues=review_issues,
        **fields,
    )
    return [u async for u in stub.AnnotateTask(request)]


async def test_issues_open_on_each_jobs_most_doubtful_frames(service):
    stub, cvat = service
    task = cvat.add_task("review", shapes_labels(), frames(), segment_size=3)
    updates = await annotate(stub, task, review_issues=1)

    # the shapes are those at or above the threshold, as without review issues
    assert updates[-1].done and updates[-1].shapes_written == 4
    assert sorted(s["frame"] for s in cvat.annotations(task)) == [0, 1, 2, 4]
    jobs = sorted(j["id"] for j in cvat.jobs(task))
    opened = sorted((i["job"], i["frame"]) for i in cvat.issues)
    assert opened == [(jobs[0], 1), (jobs[1], 5)]
    by_frame = {i["frame"]: i for i in cvat.issues}
    # the region is the doubtful box in pixels of that frame; the message has the score
    assert by_frame[5]["position"] == pytest.approx([0.2 * 105, 0.1 * 80, 0.6 * 105, 0.5 * 80])
    assert "circle at score 0.45 (not written" in by_frame[5]["_message"]
    assert "circle at score 0.52 (written" in by_frame[1]["_message"]

    # a rerun opens none twice; with room for two per job, each job gets its next one
    await annotate(stub, task, review_issues=1)
    assert len(cvat.issues) == 2
    await annotate(stub, task, review_issues=2)
    assert sorted((i["job"], i["frame"]) for i in cvat.issues) == [
        (jobs[0], 1),
        (jobs[0], 2),
        (jobs[1], 3),
        (jobs[1], 5),
    ]
    assert "nothing was found" in {i["frame"]: i for i in cvat.issues}[3]["_message"]


async def test_without_review_issues_nothing_is_opened_and_folders_refuse_them(service, tmp_path):
    stub, cvat = service
    task = cvat.add_task("plain", shapes_labels(), frames(), segment_size=3)
    updates = await annotate(stub, task, review_issues=0)
    assert updates[-1].shapes_written == 4 and cvat.issues == []

    folder = tmp_path / "folder"
    (folder / "images").mkdir(parents=True)
    request = inference_pb2.AnnotateTaskRequest(
        model=common_pb2.ModelRef(name="shapes"),
        cvat=common_pb2.CvatRef(url=folder.as_uri()),
        review_issues=1,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [u async for u in stub.AnnotateTask(request)]
    assert "review issues are opened in CVAT tasks only" in err.value.details()


async def test_a_labels_own_threshold_decides_which_of_its_boxes_are_written(service):
    stub, cvat = service
    low = cvat.add_task("low", shapes_labels(), frames(), segment_size=3)
    updates = await annotate(stub, low, label_thresholds={"circle": 0.4})
    # 0.45 on frame 5 is written now; 0.3 on frame 2 still is not
    assert updates[-1].shapes_written == 5
    assert sorted(s["frame"] for s in cvat.annotations(low)) == [0, 1, 2, 4, 5]

    high = cvat.add_task("high", shapes_labels(), frames(), segment_size=3)
    await annotate(stub, high, label_thresholds={"circle": 0.93, "square": 0.1})
    assert sorted(s["frame"] for s in cvat.annotations(high)) == [0, 4]

    # review measures doubt against the label's own threshold
    reviewed = cvat.add_task("reviewed", shapes_labels(), frames(), segment_size=3)
    await annotate(stub, reviewed, review_issues=1, label_thresholds={"circle": 0.93})
    # frame 2: its 0.9 came close to 0.93 and nothing was written on it
    by_frame = {i["frame"]: i["_message"] for i in cvat.issues}
    assert sorted(by_frame) == [2, 4]
    assert "circle at score 0.90 (not written; threshold 0.93)" in by_frame[2]
    assert "circle at score 0.97 (written; threshold 0.93)" in by_frame[4]


async def test_label_thresholds_are_checked_before_anything_is_written(service):
    stub, cvat = service
    task = cvat.add_task("checked", shapes_labels(), frames(), segment_size=3)
    for fields, says in (
        ({"label_thresholds": {"dog": 0.5}}, "label_thresholds names ['dog']"),
        ({"label_thresholds": {"circle": 1.5}}, "label_thresholds['circle'] 1.5 is not in 0..1"),
        ({"label_thresholds": {"circle": 0.4}, "tracks": True}, "label thresholds apply to"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await annotate(stub, task, **fields)
        assert says in err.value.details(), err.value.details()
    assert cvat.annotations(task) == []
