"""``preannotate dlq list|replay`` on the real broker, with a real ``RouteWorker``.

A record the handler refuses goes to the DLQ with its reason; ``list`` shows it;
once the cause is fixed, ``replay`` sends it back to its topic, where the worker
handles it; a second ``replay --all`` sends nothing; ``--dry-run`` sends
nothing; a record that does not decode goes only with ``--force``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io

import pytest

from preannotate import events, topics
from preannotate.bus.kafka import KafkaBus
from preannotate.cli import dlq
from preannotate.cli.main import main
from preannotate.errors import InvalidArgument
from preannotate.handler import Outcome, Route
from preannotate.runner import Runtime
from preannotate.service import ServiceSpec
from preannotate.storage import LocalStorage
from preannotate.v1 import events_pb2
from tests.platform.buses import kafka_settings
from tests.platform.test_runner import task_annotated

pytestmark = pytest.mark.timeout(240)

DLQ = topics.TASK_ANNOTATED + ".dlq"


async def until(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        await asyncio.sleep(0.2)


async def read_all(bus: KafkaBus, topic: str):
    reader = bus.consumer([topic], None)
    await reader.start()
    try:
        return await reader.read_to_end()
    finally:
        await reader.stop()


async def cli(*argv: str) -> tuple[int, str, str]:
    """``preannotate dlq ...`` as an operator runs it (settings from the environment)."""
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(["dlq", *argv])

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def service(kafka_bootstrap, tmp_path, monkeypatch):
    """A service whose handler refuses job-fixme until ``state["fixed"]``, and the
    environment the ``dlq`` commands read."""
    settings = kafka_settings(kafka_bootstrap).model_copy(update={"machine_types": "cpu=0"})
    for name, value in {
        "BUS": "kafka",
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "MACHINE_TYPES": "cpu=0",
    }.items():
        monkeypatch.setenv(f"PREANNOTATE_{name}", value)
    state = {"fixed": False, "handled": []}

    async def export(msg, ctx):
        if not state["fixed"]:
            raise InvalidArgument(f"CVAT task {msg.cvat.task_id} has no labels yet")
        state["handled"].append(msg.job_id)
        out = events_pb2.DatasetExported(job_id=msg.job_id, namespace=msg.namespace)
        return Outcome.emit(topics.train_jobs("cpu"), out)

    spec = ServiceSpec(
        name="exporter",
        routes=[Route(topics.TASK_ANNOTATED, export, stage=events_pb2.JOB_STAGE_EXPORT)],
    )
    rt = Runtime([(spec, settings)], storage=LocalStorage(tmp_path / "store"))
    await rt.start()
    rt.state = state
    try:
        yield rt
    finally:
        await rt.stop()


async def test_dead_letters_are_listed_with_their_reason_and_replayed_once(service):
    rt, bus = service, service.bus
    await bus.send(topics.TASK_ANNOTATED, b"\xff\xfenot protobuf", key="job-garbage")
    await events.publish(bus, topics.TASK_ANNOTATED, task_annotated("job-fixme"), source="t")

    async def two_dead() -> bool:
        return len(await read_all(bus, DLQ)) == 2

    await until(two_dead, 60, "both records in the DLQ")

    code, out, _ = await cli("list")
    assert code == 0
    assert f"{DLQ}: 2 records, 0 replayed" in out
    assert f"{topics.MODEL_TRAINED}.dlq: 0 records" in out  # every DLQ, empty ones too
    (fixme,) = [line for line in out.splitlines() if "key=job-fixme" in line]
    assert "new" in fixme and "InvalidArgument: CVAT task 7 has no labels yet" in fixme
    (garbage,) = [line for line in out.splitlines() if "key=job-garbage" in line]
    assert "undecodable" in garbage and "BadEvent" in garbage

    # --dry-run: says what would go, sends and records nothing
    code, out, _ = await cli("replay", DLQ, "--all", "--dry-run")
    assert "would replay key=job-fixme" in out and code == 1  # the garbage needs --force
    assert len(await read_all(bus, topics.TASK_ANNOTATED)) == 2
    assert await bus.committed(dlq.REPLAY_GROUP, DLQ) == {}

    # the cause fixed, the record goes back to its topic and the worker handles it
    rt.state["fixed"] = True
    code, out, _ = await cli("replay", DLQ, "--all")
    assert code == 1, out  # the garbage was left out
    assert "replayed key=job-fixme to task.annotated" in out
    assert "does not decode" in out
    (exported,) = [r for r in await _wait_records(bus, topics.train_jobs("cpu"), 1)]
    assert events.decode(exported).job_id == "job-fixme"
    assert rt.state["handled"] == ["job-fixme"]
    again = [r for r in await read_all(bus, topics.TASK_ANNOTATED) if r.key == "job-fixme"]
    assert len(again) == 2
    assert again[1].headers["dlq_replayed_from"].startswith(f"{DLQ}[")
    assert not any(k.startswith("dlq_error") for k in again[1].headers)
    assert again[1].event_id == again[0].event_id  # the same event, sent again

    # a second replay sends nothing more
    code, out, _ = await cli("replay", DLQ, "--all")
    assert f"{DLQ}: replayed 0 of 1 chosen" in out  # only the garbage is left
    assert len(await read_all(bus, topics.TASK_ANNOTATED)) == 3
    code, out, _ = await cli("list", topics.TASK_ANNOTATED)
    assert f"{DLQ}: 2 records, 1 replayed" in out
    assert "replayed" in next(line for line in out.splitlines() if "key=job-fixme" in line)

    # --offset of a record replayed before: skipped; --force sends the garbage as is
    [fixme_entry] = [e for e in await dlq.read_dlq(bus, DLQ) if e.record.key == "job-fixme"]
    code, out, _ = await cli("replay", DLQ, "--offset", fixme_entry.where)
    assert "replayed before; skipped" in out and code == 0
    [garbage_entry] = [e for e in await dlq.read_dlq(bus, DLQ) if e.record.key == "job-garbage"]
    code, out, _ = await cli("replay", DLQ, "--offset", garbage_entry.where, "--force")
    assert code == 0 and "replayed key=job-garbage" in out
    # ... and the worker dead-letters it again, saying where it came from
    dead = await _wait_records(bus, DLQ, 3)
    assert dead[-1].key == "job-garbage"
    assert (
        dead[-1].headers["dlq_replayed_from"] == f"{DLQ}[{garbage_entry.where.replace(':', ']@')}"
    )
    code, out, _ = await cli("list", DLQ)
    assert f"{DLQ}: 3 records, 2 replayed" in out


async def test_bad_arguments_are_refused_with_what_to_change(service):
    code, _, err = await cli("replay", "no.such.topic.dlq", "--all")
    assert code == 2 and "unknown topic 'no.such.topic.dlq'" in err
    code, _, err = await cli("replay", DLQ, "--offset", "x:1")
    assert code == 2 and "write OFFSET or PARTITION:OFFSET" in err
    code, _, err = await cli("replay", DLQ, "--offset", "0:99")
    assert code == 2 and "no such record" in err


def test_replayed_offsets_are_recorded_as_a_low_mark_and_ranges():
    assert dlq.format_ranges({5, 6, 7, 9}) == "5-7,9"
    assert dlq.parse_ranges("5-7,9") == {5, 6, 7, 9}
    assert dlq.to_commit(0, {0, 1, 3}, first=0) == (2, "3")
    assert dlq.to_commit(2, {2, 3, 5}, first=0) == (4, "5")
    assert dlq.to_commit(0, {3, 4}, first=3) == (5, "")  # offsets below the log start are gone
    assert dlq.replayed_set((4, "2,5-6")) == (4, {5, 6})


async def _wait_records(bus: KafkaBus, topic: str, n: int):
    records: list = []

    async def enough() -> bool:
        records[:] = await read_all(bus, topic)
        return len(records) >= n

    await until(enough, 60, f"{n} records on {topic}")
    return records
