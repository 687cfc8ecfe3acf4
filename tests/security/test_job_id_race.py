"""Two namespaces naming one new job id at the same instant: only one holds it.

The status views learn of a job when its first status is read back from
job.status, so a replica whose view lags (or two calls at the same instant)
would let a second namespace take an id the first has just started. The id is
held in storage with a compare-and-swap (``preannotate.status.claim_job_id``):
here the gateway and the inference service share storage but not a bus, so the
inference service's view never sees the gateway's job, as a lagging replica's
would not.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from preannotate import topics
from preannotate.errors import AlreadyExists
from preannotate.status import claim_job_id
from preannotate.storage import LocalStorage
from preannotate.v1 import (
    common_pb2,
    events_pb2,
    inference_pb2,
    training_pb2,
)
from services.gateway.jobs import request_job_id
from tests.security.standin import bearer, two_services
from tests.standins.cvat import make_shapes_dataset, shapes_labels

pytestmark = pytest.mark.timeout(90)

ALICE = "token-of-alice-0123456789"
BOB = "token-of-bob-0123456789ab"
TOKENS = {
    "tokens": [
        {"name": "alice", "token": ALICE, "namespaces": ["team-a"]},
        {"name": "bob", "token": BOB, "namespaces": ["team-b"]},
    ]
}


def test_of_many_namespaces_claiming_one_id_at_once_exactly_one_holds_it(tmp_path):
    storage = LocalStorage(tmp_path)
    start = threading.Barrier(8)
    won: list[str] = []

    def claim(namespace: str) -> None:
        start.wait()
        try:
            claim_job_id(storage, "job-1", namespace, events_pb2.JOB_KIND_ANNOTATION)
            won.append(namespace)
        except AlreadyExists:
            pass

    threads = [threading.Thread(target=claim, args=(f"team-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    # the holder may name it again (a retry); a training job may not reuse it
    claim_job_id(storage, "job-1", won[0], events_pb2.JOB_KIND_ANNOTATION)
    with pytest.raises(AlreadyExists):
        claim_job_id(storage, "job-1", won[0], events_pb2.JOB_KIND_TRAINING)


@pytest.fixture
async def stubs(tmp_path: Path, monkeypatch) -> AsyncIterator[tuple]:
    async with two_services(
        tmp_path, monkeypatch, TOKENS, model=("team-b", "cats"), shared_bus=False
    ) as s:
        yield s.training, s.annotating, s.cvat, s.backend, s.gateway_bus


async def test_a_replica_whose_view_lags_still_refuses_a_held_id(stubs):
    training, annotating, cvat, backend, gw_bus = stubs
    reply = await training.CreateAnnotationModel(
        training_pb2.CreateAnnotationModelRequest(
            namespace="team-a",
            cvat=common_pb2.CvatRef(task_id=12),
            model_type="ssd-mobilenet-v2-coco",
            request_id="nightly",
        ),
        metadata=bearer(ALICE),
    )
    assert reply.job_id == request_job_id("team-a", "nightly")
    images, _ = make_shapes_dataset(2, size=(60, 40), seed=7)
    task = cvat.add_task("t", shapes_labels(), images)

    request = inference_pb2.AnnotateTaskRequest(
        model=common_pb2.ModelRef(namespace="team-b", name="cats"),
        cvat=common_pb2.CvatRef(task_id=task),
        threshold=0.5,
        job_id=reply.job_id,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [u async for u in annotating.AnnotateTask(request, metadata=bearer(BOB))]
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert backend.calls == 0 and cvat.annotations(task) == []
    # Bob's own new id still works on the same replica
    request.job_id = "bobs-own-run"
    updates = [u async for u in annotating.AnnotateTask(request, metadata=bearer(BOB))]
    assert updates[-1].done and len(cvat.annotations(task)) == 2
    assert len(gw_bus.records(topics.TASK_ANNOTATED)) == 1
