"""A run that retries a dependency says so in its job status: what failed, which
try comes next and when ("CVAT unreachable (connection refused): ...; try 2 in 0.05 s")."""

from __future__ import annotations

import asyncio
import socket

import pytest

from preannotate import events, topics
from preannotate.bus import MemoryBus
from preannotate.runner import Runtime
from preannotate.storage import LocalStorage
from preannotate.v1 import common_pb2, events_pb2
from preannotate.worker import retry_text
from services.inference.service import build
from tests.inference.helpers import make_settings, publish_model

pytestmark = [pytest.mark.tf, pytest.mark.timeout(120)]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_retry_text_names_the_try_and_the_wait() -> None:
    exc = ConnectionError("CVAT unreachable (connection refused)")
    assert retry_text(exc, 2, 5, 8.0) == "CVAT unreachable (connection refused); try 3 of 5 in 8 s"
    assert (
        retry_text(exc, 1, None, 0.25) == "CVAT unreachable (connection refused); try 2 in 0.25 s"
    )
    assert len(retry_text(RuntimeError("x" * 1000), 1, 3, 1)) < 300


async def test_an_unreachable_cvat_shows_in_the_job_status(tmp_path, retinanet_dir) -> None:
    storage = LocalStorage(tmp_path / "storage")
    publish_model(storage, retinanet_dir, name="shapes")
    settings = make_settings(
        tmp_path,
        cvat_url=f"http://127.0.0.1:{_closed_port()}",
        cvat_retry_attempts=1,
        retry_backoff_seconds=0.05,
        retry_deadline_seconds=0.5,
        metrics_port=0,
    )
    bus = MemoryBus(default_partitions=1)
    runtime = Runtime([(build(settings), settings)], bus=bus, storage=storage)
    await runtime.start()
    try:
        request = events_pb2.AnnotationRequested(
            job_id="ann-unreachable",
            namespace="default",
            cvat=common_pb2.CvatRef(task_id=3),
            model=common_pb2.ModelRef(namespace="default", name="shapes"),
        )
        await events.publish(bus, topics.ANNOTATION_REQUESTED, request, source="gateway")
        async with asyncio.timeout(60):
            while True:
                statuses = [events.decode(r) for r in bus.records(topics.JOB_STATUS)]
                mine = [s for s in statuses if s.job_id == "ann-unreachable"]
                if mine and mine[-1].state == events_pb2.JOB_STATE_FAILED:
                    break
                await asyncio.sleep(0.05)
    finally:
        await runtime.stop()
    retrying = [s.message for s in mine if s.state == events_pb2.JOB_STATE_RUNNING]
    retrying = [m for m in retrying if "; try " in m]
    assert retrying, [s.message for s in mine]
    assert retrying[0].startswith("CVAT unreachable (connection refused): GET /api/tasks/3")
    assert "; try 2 in 0.05 s" in retrying[0]
    assert mine[-1].message.startswith("CVAT unreachable (connection refused)")
