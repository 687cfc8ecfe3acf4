"""The runner on both buses: DLQ, retries, the once-ledger, long handlers,
rebalances, status."""

from __future__ import annotations

import asyncio

import pytest

from preannotate import events, topics
from preannotate.bus import MemoryBus, TopicSpec
from preannotate.bus.kafka import KafkaBus
from preannotate.errors import Interrupted, InvalidArgument, Unavailable
from preannotate.handler import Outcome, Route
from preannotate.ledger import Ledger
from preannotate.runner import Runtime
from preannotate.service import ServiceSpec
from preannotate.settings import ServiceSettings
from preannotate.storage import LocalStorage
from preannotate.v1 import events_pb2
from tests.platform.buses import drain, kafka_settings, wait_assigned

pytestmark = pytest.mark.timeout(180)


def task_annotated(job_id: str, task_id: int = 7) -> events_pb2.TaskAnnotated:
    msg = events_pb2.TaskAnnotated(job_id=job_id, namespace="team-a", trigger="test")
    msg.cvat.task_id = task_id
    msg.training.model_type = "ssd-mobilenet-v2-coco"
    return msg


def exported(msg: events_pb2.TaskAnnotated) -> events_pb2.DatasetExported:
    out = events_pb2.DatasetExported(
        job_id=msg.job_id, namespace=msg.namespace, dataset_prefix="x/"
    )
    out.cvat.CopyFrom(msg.cvat)
    return out


class Probe:
    """A handler whose behaviour each test sets, recording what it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.behaviour: dict[str, str] = {}
        self.failures_left: dict[str, int] = {}
        self.stopped: list[str] = []
        self.release = asyncio.Event()  # ends "held" handlers

    async def __call__(self, msg, ctx):
        self.seen.append(msg.job_id)
        what = self.behaviour.get(msg.job_id, "ok")
        await ctx.report(stage=events_pb2.JOB_STAGE_EXPORT, message=f"working on {what}")
        if what == "invalid":
            raise InvalidArgument("task 7 has no labelled shapes: annotate some first")
        if what == "crash":
            raise ZeroDivisionError("bug")
        if what == "flaky" and self.failures_left.get(msg.job_id, 0) > 0:
            self.failures_left[msg.job_id] -= 1
            raise Unavailable("CVAT answered 503")
        if what == "down":
            raise Unavailable("S3 answered 503")
        if what == "timeout":
            raise TimeoutError("no answer")
        if what == "slow":
            await asyncio.sleep(2.5)
        if what == "held":  # runs until released, stopping early when asked to
            while not self.release.is_set():
                if ctx.stop_requested():
                    self.stopped.append(msg.job_id)
                    raise Interrupted("asked to stop")
                await asyncio.sleep(0.05)
        return Outcome.emit(topics.train_jobs("cpu"), exported(msg))


#: The runtime's retry deadline for Unavailable: 5 failures (0.05 s doubling,
#: 1.55 s of waits) fit well within it, a dependency that stays down does not.
DEADLINE = 8.0


@pytest.fixture(params=["memory", "kafka"])
async def runtime(request, tmp_path):
    probe = Probe()
    spec = ServiceSpec(
        name="probe",
        routes=[Route(topics.TASK_ANNOTATED, probe, stage=events_pb2.JOB_STAGE_EXPORT)],
    )
    if request.param == "memory":
        settings = ServiceSettings(
            bus="memory",
            keepalive_seconds=0.5,
            retry_backoff_seconds=0.05,
            retry_attempts=3,
            retry_deadline_seconds=DEADLINE,
        )
        bus = MemoryBus()
    else:
        settings = kafka_settings(
            request.getfixturevalue("kafka_bootstrap"),
            retry_attempts=3,
            retry_deadline_seconds=DEADLINE,
            kafka_partitions=2,
        )
        bus = None
    settings = settings.model_copy(update={"machine_types": "cpu=0"})
    rt = Runtime([(spec, settings)], bus=bus, storage=LocalStorage(tmp_path / "store"))
    rt.probe = probe
    if bus is not None:
        await bus.start()
    await rt.start()
    yield rt
    await rt.stop()


async def until(predicate, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def read_topic(rt, topic: str, n: int, timeout: float = 20.0):
    reader = rt.bus.consumer([topic], None)
    await reader.start()
    try:
        return await drain(reader, n, timeout)
    finally:
        await reader.stop()


async def test_poison_and_invalid_records_go_to_the_dlq_once_and_the_consumer_carries_on(runtime):
    rt = runtime
    rt.probe.behaviour = {"job-bad": "invalid", "job-crash": "crash"}
    await rt.bus.send(topics.TASK_ANNOTATED, b"\xff\xfenot protobuf", key="job-poison")
    for job in ("job-bad", "job-crash", "job-good"):
        await events.publish(rt.bus, topics.TASK_ANNOTATED, task_annotated(job), source="test")
    await until(lambda: "job-good" in rt.probe.seen)
    out = await read_topic(rt, topics.train_jobs("cpu"), 1)
    assert [events.decode(r).job_id for r in out] == ["job-good"]
    dead = await read_topic(rt, topics.TASK_ANNOTATED + ".dlq", 3)
    assert sorted(r.key for r in dead) == ["job-bad", "job-crash", "job-poison"]
    by_key = {r.key: r.headers for r in dead}
    assert "InvalidArgument: task 7 has no labelled shapes" in by_key["job-bad"]["dlq_error"]
    assert by_key["job-poison"]["dlq_error_type"] == "BadEvent"

    def failed(job: str) -> bool:
        status = rt.status_view.get(job)
        return status is not None and status.state == events_pb2.JOB_STATE_FAILED

    # each failed status is written after its DLQ record, on its own partition
    await until(lambda: failed("job-bad") and failed("job-crash"))
    assert "no labelled shapes" in rt.status_view.get("job-bad").message
    crash = rt.status_view.get("job-crash").message
    assert "internal error in probe" in crash and "bug" not in crash
    # nothing more arrives in the DLQ: each went there once
    assert len(await read_topic(rt, topics.TASK_ANNOTATED + ".dlq", 4, timeout=2)) == 3


async def test_unavailable_is_retried_past_the_attempts_until_it_clears(runtime):
    rt = runtime
    rt.probe.behaviour = {"job-flaky": "flaky"}
    rt.probe.failures_left = {"job-flaky": 5}  # more than retry_attempts (3)
    await events.publish(rt.bus, topics.TASK_ANNOTATED, task_annotated("job-flaky"), source="t")
    out = await read_topic(rt, topics.train_jobs("cpu"), 1)
    assert [events.decode(r).job_id for r in out] == ["job-flaky"]
    assert rt.probe.seen.count("job-flaky") == 6
    dead = await read_topic(rt, topics.TASK_ANNOTATED + ".dlq", 1, timeout=1)
    assert dead == []


async def test_unavailable_past_the_deadline_and_other_retryables_past_the_attempts_go_to_the_dlq(
    runtime,
):
    rt = runtime
    rt.probe.behaviour = {"job-down": "down", "job-timeout": "timeout"}
    for job in ("job-down", "job-timeout"):
        await events.publish(rt.bus, topics.TASK_ANNOTATED, task_annotated(job), source="t")
    dead = await read_topic(rt, topics.TASK_ANNOTATED + ".dlq", 2, timeout=DEADLINE + 20)
    assert sorted((r.key, r.headers["dlq_error_type"]) for r in dead) == [
        ("job-down", "Unavailable"),
        ("job-timeout", "TimeoutError"),
    ]
    assert rt.probe.seen.count("job-timeout") == 3  # retry_attempts
    assert rt.probe.seen.count("job-down") > 3  # retried until the deadline
    assert await read_topic(rt, topics.train_jobs("cpu"), 1, timeout=1) == []


async def test_a_rebalance_that_keeps_the_partition_does_not_run_or_publish_twice(
    runtime, unique_name
):
    rt = runtime
    rt.probe.behaviour = {"job-held": "held"}
    await events.publish(rt.bus, topics.TASK_ANNOTATED, task_annotated("job-held"), source="t")
    await until(lambda: "job-held" in rt.probe.seen)
    # a member of the worker's group on another topic: every partition stays where it is
    other = unique_name()
    await rt.bus.ensure_topics([TopicSpec(other, 1)])
    joiner = rt.bus.consumer([other], "preannotate-probe")
    await joiner.start()
    try:
        await wait_assigned(joiner, partitions=1)  # the group has rebalanced
        rt.probe.release.set()
        out = await read_topic(rt, topics.train_jobs("cpu"), 2, timeout=5)
    finally:
        await joiner.stop()
    assert [events.decode(r).job_id for r in out] == ["job-held"], "published twice"
    assert rt.probe.seen == ["job-held"] and rt.probe.stopped == []


async def test_a_revoked_record_is_stopped_and_left_to_the_new_owner_unpublished(tmp_path):
    probe = Probe()
    probe.behaviour = {"job-moves-1": "held"}  # partition 2 of 3 on the memory bus
    spec = ServiceSpec(
        name="probe",
        routes=[Route(topics.TASK_ANNOTATED, probe, stage=events_pb2.JOB_STAGE_EXPORT)],
    )
    settings = ServiceSettings(bus="memory", keepalive_seconds=0.5, kafka_partitions=3)
    bus = MemoryBus()
    rt = Runtime([(spec, settings)], bus=bus, storage=LocalStorage(tmp_path / "s"))
    await rt.start()
    newcomer = bus.consumer([topics.TASK_ANNOTATED], "preannotate-probe")
    try:
        msg = task_annotated("job-moves-1")
        await events.publish(bus, topics.TASK_ANNOTATED, msg, source="t")
        await until(lambda: "job-moves-1" in probe.seen)
        await newcomer.start()  # range assignment: partition 2 moves to the newcomer
        assert newcomer.assignment() == {(topics.TASK_ANNOTATED, 2)}
        await until(lambda: probe.stopped == ["job-moves-1"])
        (again,) = await drain(newcomer, 1)  # left uncommitted for the new owner
        assert events.decode(again).job_id == "job-moves-1"
        await asyncio.sleep(0.5)
    finally:
        await newcomer.stop()
        await rt.stop()
    assert bus.records(topics.train_jobs("cpu")) == []
    assert Ledger(rt.storage).read("team-a", "job-moves-1", "export") is None
    statuses = [events.decode(r) for r in bus.records(topics.JOB_STATUS)]
    assert all(s.state == events_pb2.JOB_STATE_RUNNING for s in statuses)


async def test_a_redelivered_record_is_acted_on_once(runtime):
    rt = runtime
    msg = task_annotated("job-dup")
    await events.publish(rt.bus, topics.TASK_ANNOTATED, msg, source="test")
    await until(lambda: "job-dup" in rt.probe.seen)
    first = await read_topic(rt, topics.train_jobs("cpu"), 1)
    # the same event again, as a redelivery after a crash would bring it
    await events.publish(rt.bus, topics.TASK_ANNOTATED, msg, source="test")
    both = await read_topic(rt, topics.train_jobs("cpu"), 2)
    assert rt.probe.seen.count("job-dup") == 1, "the handler ran twice"
    assert len(both) == 2 and both[1].event_id == first[0].event_id
    assert both[1].value == first[0].value


async def test_a_long_handler_keeps_the_member_alive_and_status_follows(runtime):
    rt = runtime
    rt.probe.behaviour = {"job-slow": "slow"}
    await events.publish(rt.bus, topics.TASK_ANNOTATED, task_annotated("job-slow"), source="t")
    await events.publish(rt.bus, topics.TASK_ANNOTATED, task_annotated("job-after"), source="t")
    out = await read_topic(rt, topics.train_jobs("cpu"), 2)
    assert sorted(events.decode(r).job_id for r in out) == ["job-after", "job-slow"]
    await until(
        lambda: (
            rt.status_view.get("job-slow") is not None
            and rt.status_view.get("job-slow").stage == events_pb2.JOB_STAGE_TRAIN
        )
    )
    status = rt.status_view.get("job-slow")
    assert status.state == events_pb2.JOB_STATE_QUEUED
    assert status.cvat.task_id == 7 and status.training.model_type == "ssd-mobilenet-v2-coco"
    assert status.namespace == "team-a"


@pytest.mark.parametrize("kind", ["memory", "kafka"])
async def test_a_broadcast_route_reaches_every_process_and_leaves_job_status_alone(
    kind, request, tmp_path
):
    if kind == "memory":
        settings = ServiceSettings(bus="memory", keepalive_seconds=0.5)
        bus = MemoryBus()
    else:
        settings = kafka_settings(request.getfixturevalue("kafka_bootstrap"), kafka_partitions=2)
        bus = KafkaBus(settings)
    settings = settings.model_copy(update={"machine_types": "cpu=0"})
    await bus.start()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def spec(name: str) -> ServiceSpec:
        async def register(msg, ctx):
            seen[name].append(msg.job_id)
            await ctx.report(stage=events_pb2.JOB_STAGE_CONVERT, message="must not be written")
            if msg.job_id == "job-bad":
                raise InvalidArgument("cannot load")
            return Outcome.nothing()

        route = Route(
            topics.MODEL_CONVERTED,
            register,
            stage=events_pb2.JOB_STAGE_CONVERT,
            once=False,
            broadcast=True,
            status=False,
        )
        return ServiceSpec(name="inference", routes=[route])

    store = LocalStorage(tmp_path / "s")
    a = Runtime([(spec("a"), settings)], bus=bus, storage=store)
    b = Runtime([(spec("b"), settings)], bus=bus, storage=store)
    await bus.ensure_topics(a.topic_specs())
    old = events_pb2.ModelConverted(job_id="job-old", namespace="team-a")
    await events.publish(bus, topics.MODEL_CONVERTED, old, source="t")
    await a.start()
    await b.start()
    try:
        for job in ("job-1", "job-bad"):
            msg = events_pb2.ModelConverted(job_id=job, namespace="team-a")
            await events.publish(bus, topics.MODEL_CONVERTED, msg, source="t")
        await until(lambda: len(seen["a"]) == 2 and len(seen["b"]) == 2)
        await asyncio.sleep(0.3)
        assert {k: sorted(v) for k, v in seen.items()} == {  # from the end: not job-old
            "a": ["job-1", "job-bad"],
            "b": ["job-1", "job-bad"],
        }
        statuses = await read_topic(a, topics.JOB_STATUS, 1, timeout=2)
        assert statuses == [], "an observer route wrote job status"
        dead = await read_topic(a, topics.MODEL_CONVERTED + ".dlq", 3, timeout=3)
        assert len(dead) == 2  # once per process
    finally:
        await a.stop()
        await b.stop()
        await bus.stop()


async def test_a_record_without_a_namespace_is_kept_under_the_services_namespace(tmp_path):
    async def handle(msg, ctx):
        return Outcome.emit(topics.train_jobs("cpu"), exported(msg))

    spec = ServiceSpec(
        name="probe",
        routes=[Route(topics.TASK_ANNOTATED, handle, stage=events_pb2.JOB_STAGE_EXPORT)],
    )
    settings = ServiceSettings(bus="memory", keepalive_seconds=0.5, namespace="team-z")
    bus, store = MemoryBus(), LocalStorage(tmp_path / "s")
    rt = Runtime([(spec, settings)], bus=bus, storage=store)
    await rt.start()
    try:
        msg = task_annotated("job-ns")
        msg.ClearField("namespace")
        await events.publish(bus, topics.TASK_ANNOTATED, msg, source="test")
        await until(lambda: len(bus.records(topics.train_jobs("cpu"))) == 1)
    finally:
        await rt.stop()
    ledger = Ledger(store)
    assert ledger.read("team-z", "job-ns", "export") is not None
    assert ledger.read("default", "job-ns", "export") is None
