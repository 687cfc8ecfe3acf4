"""The bus contract: the in-process bus and the real Kafka broker behave alike."""

from __future__ import annotations

import asyncio

import pytest

from preannotate.bus import Bus, Consumer, MemoryBus, TopicSpec
from preannotate.errors import Unavailable
from tests.platform.buses import drain, make, wait_assigned

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["memory", "kafka"])
async def bus(request):
    bootstrap = request.getfixturevalue("kafka_bootstrap") if request.param == "kafka" else None
    bus = await make(request.param, bootstrap)
    yield bus
    await bus.stop()


async def test_records_of_one_key_stay_in_order_on_one_partition(bus, unique_name):
    topic = unique_name()
    await bus.ensure_topics([TopicSpec(topic, 3)])
    keys = ["job-a", "job-b", "job-c", "job-d"]
    sent = []
    for i in range(40):
        key = keys[i % len(keys)]
        await bus.send(topic, f"{key}:{i}".encode(), key=key, headers={"n": str(i)})
        sent.append((key, i))
    consumer = bus.consumer([topic], unique_name())
    await consumer.start()
    try:
        got = await drain(consumer, 40)
    finally:
        await consumer.stop()
    assert len(got) == 40
    for key in keys:
        mine = [r for r in got if r.key == key]
        assert [int(r.headers["n"]) for r in mine] == [i for k, i in sent if k == key]
        assert len({r.partition for r in mine}) == 1, f"{key} spread over partitions"


async def test_two_members_of_a_group_split_the_partitions(bus, unique_name):
    topic, group = unique_name(), unique_name()
    await bus.ensure_topics([TopicSpec(topic, 4)])
    a, b = bus.consumer([topic], group), bus.consumer([topic], group)
    await a.start()
    await b.start()
    try:
        await wait_assigned(a, b, partitions=4)
        assert a.assignment().isdisjoint(b.assignment())
        for i in range(60):
            await bus.send(topic, str(i).encode(), key=f"k{i}")
        got_a, got_b = [], []
        for _ in range(60):
            got_a += await a.poll(timeout=0.2)
            got_b += await b.poll(timeout=0.2)
            if len(got_a) + len(got_b) >= 60:
                break
        assert got_a and got_b, "both members should get records"
        assert {(r.topic, r.partition) for r in got_a} <= a.assignment()
        assert {(r.topic, r.partition) for r in got_b} <= b.assignment()
        values = sorted(int(r.value) for r in got_a + got_b)
        assert values == list(range(60)), "every record exactly once across the group"
    finally:
        await a.stop()
        await b.stop()


async def test_uncommitted_records_go_to_the_next_member(bus, unique_name):
    topic, group = unique_name(), unique_name()
    await bus.ensure_topics([TopicSpec(topic, 1)])
    for i in range(3):
        await bus.send(topic, str(i).encode(), key="job-1")
    first = bus.consumer([topic], group)
    await first.start()
    got = await drain(first, 3)
    assert [r.value for r in got] == [b"0", b"1", b"2"]
    await first.commit(got[0])  # only the first is done
    await first.stop()  # dies before committing the rest

    second = bus.consumer([topic], group)
    await second.start()
    try:
        again = await drain(second, 2)
        assert [r.value for r in again] == [b"1", b"2"]
        assert [r.offset for r in again] == [got[1].offset, got[2].offset]
    finally:
        await second.stop()


async def test_pause_stops_delivery_and_resume_brings_it_back(bus, unique_name):
    topic = unique_name()
    await bus.ensure_topics([TopicSpec(topic, 2)])
    consumer = bus.consumer([topic], unique_name())
    await consumer.start()
    try:
        await wait_assigned(consumer, partitions=2)
        consumer.pause()
        for i in range(4):
            await bus.send(topic, str(i).encode(), key=f"k{i}")
        for _ in range(4):
            assert await consumer.poll(timeout=0.3) == []
        consumer.resume()
        got = await drain(consumer, 4)
        assert sorted(r.value for r in got) == [b"0", b"1", b"2", b"3"]
    finally:
        await consumer.stop()


async def test_dead_letter_keeps_the_record_and_says_why(bus, unique_name):
    topic = unique_name()
    await bus.ensure_topics([TopicSpec(topic, 1), TopicSpec(topic + ".dlq", 1)])
    await bus.send(topic, b"\x00poison", key="job-9", headers={"ce_id": "e-1"})
    consumer = bus.consumer([topic], unique_name())
    await consumer.start()
    (record,) = await drain(consumer, 1)
    await bus.dead_letter(record, ValueError("cannot parse"), group="g")
    await consumer.stop()
    reader = bus.consumer([topic + ".dlq"], None)
    await reader.start()
    try:
        (dead,) = await drain(reader, 1)
    finally:
        await reader.stop()
    assert dead.value == b"\x00poison" and dead.key == "job-9"
    assert dead.headers["ce_id"] == "e-1"
    assert dead.headers["dlq_error"] == "ValueError: cannot parse"
    assert dead.headers["dlq_topic"] == topic and dead.headers["dlq_offset"] == str(record.offset)


async def test_producer_is_idempotent(bus, unique_name):
    topic = unique_name()
    await bus.ensure_topics([TopicSpec(topic, 1)])
    await bus.send(topic, b"x", key="k")
    assert bus.idempotent is True
    options = getattr(bus, "producer_options", None)
    if options is not None:  # Kafka: test_infra shows the broker grants such a producer its id
        assert options()["enable_idempotence"] is True and options()["acks"] == "all"


async def test_lag_is_kept_per_assigned_partition_by_its_plain_name(bus, unique_name):
    topic = unique_name()
    await bus.ensure_topics([TopicSpec(topic, 1)])
    for i in range(3):
        await bus.send(topic, str(i).encode(), key="k")
    consumer = bus.consumer([topic], unique_name())
    assert isinstance(bus, Bus) and isinstance(consumer, Consumer)  # the whole interface
    await consumer.start()
    try:
        assert len(await drain(consumer, 3)) == 3
        assert consumer.lag() == {(topic, 0): 0}
    finally:
        await consumer.stop()


async def test_a_reader_of_a_topic_that_does_not_exist_is_refused(bus, unique_name):
    topic = unique_name()
    reader = bus.consumer([topic], None)
    if isinstance(bus, MemoryBus):
        return  # one process: the topic may still be created; the reader then gets it
    with pytest.raises(Unavailable, match="create the topics first"):
        await reader.start()
    await asyncio.sleep(1.0)
    assert topic not in await bus.partitions([topic]), "looking the topic up created it"


async def test_a_rebalance_that_keeps_a_partition_hands_nothing_out_twice(bus, unique_name):
    topic, other, group = unique_name(), unique_name(), unique_name()
    await bus.ensure_topics([TopicSpec(topic, 1), TopicSpec(other, 1)])
    await bus.send(topic, b"in flight", key="job-1")
    a = bus.consumer([topic], group)
    await a.start()
    b = bus.consumer([other], group)  # same group, another topic: a keeps its partition
    try:
        (record,) = await drain(a, 1)
        lost: list[set] = []
        a.on_lost(lost.append)
        a.pause()  # as the worker does while a long handler runs
        await b.start()
        await wait_assigned(b, partitions=1)  # the rebalance is done
        a.resume()
        for _ in range(4):
            assert await a.poll(timeout=0.5) == [], "the record in flight came again"
        assert a.assignment() == {(topic, 0)} and lost == []
        await a.commit(record)
    finally:
        await b.stop()
        await a.stop()


async def test_a_member_is_told_which_partitions_went_and_their_records_move(bus, unique_name):
    topic, group = unique_name(), unique_name()
    await bus.ensure_topics([TopicSpec(topic, 2)])
    a = bus.consumer([topic], group)
    await a.start()
    b = bus.consumer([topic], group)
    try:
        await wait_assigned(a, partitions=2)
        for key in ("k1", "k2", "k3", "k4", "k5", "k6"):
            await bus.send(topic, key.encode(), key=key)
        got = await drain(a, 6)
        assert {r.partition for r in got} == {0, 1}
        lost: list[set] = []
        a.on_lost(lost.append)
        await b.start()
        await wait_assigned(a, b, partitions=2)
        assert lost == [b.assignment()], "the lost partition is the one b now owns"
        moved = [r for r in got if (r.topic, r.partition) in b.assignment()]
        again = await drain(b, len(moved))
        assert sorted(r.value for r in again) == sorted(r.value for r in moved)
        assert await a.poll(timeout=0.5) == []
    finally:
        await b.stop()
        await a.stop()


async def test_a_rebalance_waits_for_a_record_being_settled(bus, unique_name):
    topic, group = unique_name(), unique_name()
    await bus.ensure_topics([TopicSpec(topic, 2)])
    await bus.send(topic, b"done", key="job-1")
    a = bus.consumer([topic], group)
    await a.start()
    b = bus.consumer([topic], group)
    joining = None
    try:
        (record,) = await drain(a, 1)
        async with a.settle(record) as owned:
            assert owned
            joining = asyncio.create_task(b.start())
            # longer than a rebalance takes, shorter than its timeout (Kafka's
            # heartbeats run in the background; a poll would wait for the rebalance)
            await asyncio.sleep(3.0)
            await a.commit(record)  # not refused: the partition could not move meanwhile
        await joining
        await wait_assigned(a, b, partitions=2)  # one partition moved to b
        for _ in range(4):
            again = await a.poll(timeout=0.25) + await b.poll(timeout=0.25)
            assert again == [], "a committed record was handed out again"
    finally:
        if joining is not None:
            await asyncio.gather(joining, return_exceptions=True)
        await b.stop()
        await a.stop()
