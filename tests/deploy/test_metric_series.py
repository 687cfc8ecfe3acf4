"""The series the alert rules need exist from the start, at 0.

``increase()`` needs an earlier sample: a dead-letter counter that first
appears at 1 never fires PreannotateDeadLetters. Each worker creates its
topic's counters (and its in-flight gauge) at 0 when it starts.
"""

from __future__ import annotations

from prometheus_client import REGISTRY

from preannotate import topics
from preannotate.bus.memory import MemoryBus
from preannotate.handler import Route
from preannotate.runner import Runtime
from preannotate.service import ServiceSpec
from preannotate.settings import ServiceSettings
from preannotate.storage import LocalStorage
from preannotate.v1 import events_pb2

SERVICE = "series-probe"


def _value(name: str, topic: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"service": SERVICE, "topic": topic})


async def test_a_workers_counters_exist_at_zero_before_its_first_record(tmp_path) -> None:
    async def handle(msg, ctx):  # never called: no record is sent
        raise AssertionError("no record was sent")

    spec = ServiceSpec(
        name=SERVICE,
        routes=[Route(topics.TASK_ANNOTATED, handle, stage=events_pb2.JOB_STAGE_EXPORT)],
    )
    settings = ServiceSettings(bus="memory", machine_types="cpu=0")
    names = [
        "preannotate_events_dead_lettered_total",
        "preannotate_events_consumed_total",
        "preannotate_handler_in_flight",
    ]
    assert all(_value(n, topics.TASK_ANNOTATED) is None for n in names)
    rt = Runtime([(spec, settings)], bus=MemoryBus(), storage=LocalStorage(tmp_path / "s"))
    await rt.start()
    try:
        for name in names:
            assert _value(name, topics.TASK_ANNOTATED) == 0.0, name
    finally:
        await rt.stop()


def test_training_durations_have_buckets_past_two_hours() -> None:
    from preannotate.telemetry.metrics import HANDLER_SECONDS

    HANDLER_SECONDS.labels(SERVICE, "train.jobs.bucket-probe").observe(5 * 3600)
    bounds = {
        float(s.labels["le"]): s.value
        for s in next(iter(HANDLER_SECONDS.collect())).samples
        if s.name.endswith("_bucket") and s.labels["topic"] == "train.jobs.bucket-probe"
    }
    finite = sorted(b for b in bounds if b != float("inf"))
    assert finite[-1] >= 24 * 3600
    # A 5-hour training lands in a finite bucket below 8 h: quantiles can tell 3 h from 7 h.
    assert bounds[8 * 3600] == 1 and bounds[4 * 3600] == 0
