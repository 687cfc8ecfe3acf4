"""The bus on Apache Kafka, through aiokafka.

The producer is idempotent (``enable_idempotence=True`` forces acks=all), so
its own retries never duplicate a record. Consumers commit by hand. aiokafka
rebalances eagerly (every partition is revoked, then the new assignment
given), so a rebalance listener:

- on revoke, waits for a ``settle`` block in progress (its commit then lands
  before the partition can move) and holds new ones until the assignment;
- on assignment, reports the partitions that went (``on_lost``), seeks each
  partition it kept back to the offset after the last record it handed out
  (Kafka would restart it at the committed offset and hand out the record in
  flight again), and re-pauses a paused member's partitions (pause state does
  not survive reassignment).

Only aiokafka's public API is used: the producer, the admin client (topics and
their partitions) and the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from preannotate.bus.base import (
    CommitFailed,
    LostNotices,
    Record,
    TopicSpec,
    dlq_headers,
    dlq_topic,
)
from preannotate.errors import Unavailable

log = logging.getLogger(__name__)


def _security(settings) -> dict:
    opts: dict = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = ssl.create_default_context()
    if settings.kafka_security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return opts


class KafkaBus:
    """Producer, admin and consumer factory for one Kafka cluster."""

    idempotent = True

    def __init__(self, settings) -> None:
        self.settings = settings
        self.bootstrap = settings.kafka_bootstrap
        self.prefix = settings.kafka_topic_prefix
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    def full(self, topic: str) -> str:
        """The topic's name on the cluster."""
        return self.prefix + topic

    def short(self, topic: str) -> str:
        return topic[len(self.prefix) :] if self.prefix and topic.startswith(self.prefix) else topic

    def producer_options(self) -> dict:
        """The producer's settings: idempotent (so acks=all), no batching delay."""
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.settings.kafka_client_id,
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": 0,
            "request_timeout_ms": 30_000,
            **_security(self.settings),
        }

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(**self.producer_options())
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id=self.settings.kafka_client_id + "-admin",
            **_security(self.settings),
        )
        try:
            await self._producer.start()
            await self._admin.start()
        except KafkaError as exc:
            await self.stop()
            raise Unavailable(f"Kafka at {self.bootstrap} is unreachable: {exc}") from exc

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise RuntimeError("KafkaBus used before start()")
        return self._admin

    async def partitions(self, topics: Sequence[str]) -> dict[str, list[int]]:
        """The partitions of each of ``topics`` that exists on the cluster."""
        wanted = {self.full(t): t for t in topics}
        try:
            # all topics: asking for one by name may make the broker auto-create it
            described = await self._admin_client().describe_topics(None)
        except KafkaError as exc:
            raise Unavailable(f"could not read the topics of {self.bootstrap}: {exc}") from exc
        return {
            wanted[t["topic"]]: sorted(p["partition"] for p in t["partitions"])
            for t in described
            if t["topic"] in wanted and t["error_code"] == 0 and t["partitions"]
        }

    async def ensure_topics(self, topics: Sequence[TopicSpec]) -> None:
        admin = self._admin_client()
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                self.full(spec.name),
                spec.partitions,
                self.settings.kafka_replication,
                topic_configs={"cleanup.policy": "compact"} if spec.compacted else None,
            )
            for spec in topics
            if self.full(spec.name) not in existing
        ]
        if new:
            response = await admin.create_topics(new, timeout_ms=30_000)
            for item in getattr(response, "topic_errors", []):
                name, code = item[0], item[1]
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a racing creator)
                    raise Unavailable(f"could not create topic {name!r}: error code {code}")
            await self._wait_for_metadata([t.name for t in new])

    async def _wait_for_metadata(self, names: list[str]) -> None:
        """Wait until the producer sees every new topic's partitions (leaders
        elected); the producer gives up after its request timeout (30 s)."""
        if self._producer is None:
            raise RuntimeError("KafkaBus used before start()")
        for name in names:
            try:
                await self._producer.partitions_for(name)
            except KafkaError as exc:
                raise Unavailable(f"topic {name!r} has no partitions: {exc!r}") from exc

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, int]:
        if self._producer is None:
            raise RuntimeError("KafkaBus.send() before start()")
        try:
            meta = await self._producer.send_and_wait(
                self.full(topic),
                value,
                key=key.encode() if key is not None else None,
                headers=[(k, v.encode()) for k, v in (headers or {}).items()],
            )
        except KafkaError as exc:
            raise Unavailable(f"could not publish to {topic!r}: {exc}") from exc
        return meta.partition, meta.offset

    def consumer(
        self, topics: Sequence[str], group: str | None, *, from_beginning: bool = True
    ) -> KafkaConsumer:
        return KafkaConsumer(self, list(topics), group, from_beginning)

    async def dead_letter(self, record: Record, error: BaseException, *, group: str) -> None:
        await self.send(
            dlq_topic(record.topic),
            record.value,
            key=record.key,
            headers=dlq_headers(record, error, group),
        )

    async def committed(self, group: str, topic: str) -> dict[int, tuple[int, str]]:
        """``group``'s committed (offset, metadata) per partition of ``topic``."""
        for attempt in range(30):  # a new cluster elects its group coordinator first
            try:
                found = await self._admin_client().list_consumer_group_offsets(group)
                break
            except KafkaError as exc:
                if not exc.retriable or attempt == 29:
                    msg = f"could not read the offsets of group {group!r}: {exc}"
                    raise Unavailable(msg) from exc
                await asyncio.sleep(1.0)
        return {
            tp.partition: (meta.offset, meta.metadata or "")
            for tp, meta in found.items()
            if tp.topic == self.full(topic) and meta.offset >= 0
        }

    async def commit_offsets(
        self, group: str, topic: str, offsets: Mapping[int, tuple[int, str]]
    ) -> None:
        """Commit (offset, metadata) per partition of ``topic`` for ``group``, without
        joining it (for a group of tools, which has no live members)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.settings.kafka_client_id,
            group_id=group,
            enable_auto_commit=False,
            **_security(self.settings),
        )
        try:
            await consumer.start()
            parts = {TopicPartition(self.full(topic), p): m for p, m in offsets.items()}
            consumer.assign(list(parts))
            await consumer.commit({tp: OffsetAndMetadata(o, m) for tp, (o, m) in parts.items()})
        except KafkaError as exc:
            raise Unavailable(f"could not commit offsets of group {group!r}: {exc}") from exc
        finally:
            await consumer.stop()


class KafkaConsumer(LostNotices):
    """A group member (or, with group None, a reader of every partition)."""

    def __init__(self, bus: KafkaBus, topics: list[str], group: str | None, from_beginning: bool):
        super().__init__()
        self.bus = bus
        self.topics = topics
        self.group = group
        self.from_beginning = from_beginning
        self._consumer: AIOKafkaConsumer | None = None
        self._paused = False
        self._next: dict[tuple[str, int], int] = {}
        self._idle = asyncio.Event()  # cleared while a settle block runs
        self._idle.set()
        self._stable = asyncio.Event()  # cleared from revoke to assignment
        self._stable.set()
        self._before: set[tuple[str, int]] = set()

    async def start(self) -> None:
        s = self.bus.settings
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bus.bootstrap,
            client_id=s.kafka_client_id,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self.from_beginning else "latest",
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(100, s.session_timeout_ms // 3),
            rebalance_timeout_ms=s.session_timeout_ms,
            **_security(s),
        )
        try:
            await self._consumer.start()
            if self.group is None:
                found = await self.bus.partitions(self.topics)
                parts = [
                    TopicPartition(self.bus.full(topic), p)
                    for topic in self.topics
                    for p in found.get(topic, [])
                ]
                if not parts:
                    raise Unavailable(f"no partitions for {self.topics}: create the topics first")
                self._consumer.assign(parts)
                if self.from_beginning:
                    await self._consumer.seek_to_beginning(*parts)
                else:
                    await self._consumer.seek_to_end(*parts)
            else:
                self._consumer.subscribe(
                    [self.bus.full(t) for t in self.topics], listener=_Listener(self)
                )
        except KafkaError as exc:
            await self.stop()
            raise Unavailable(f"Kafka consumer for {self.topics} could not start: {exc}") from exc
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        self._stable.set()  # nothing to wait for any more

    async def poll(self, timeout: float) -> list[Record]:
        assert self._consumer is not None, "poll() before start()"
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=100)
        out: list[Record] = []
        for tp in sorted(batches, key=lambda t: (t.topic, t.partition)):
            if batches[tp]:
                self._next[(self.bus.short(tp.topic), tp.partition)] = batches[tp][-1].offset + 1
            for r in batches[tp]:
                out.append(
                    Record(
                        topic=self.bus.short(r.topic),
                        partition=r.partition,
                        offset=r.offset,
                        key=r.key.decode() if r.key is not None else None,
                        value=r.value or b"",
                        headers={k: v.decode("utf-8", "replace") for k, v in r.headers or ()},
                        timestamp_ms=r.timestamp or 0,
                    )
                )
        return out

    async def read_to_end(self) -> list[Record]:
        """Every record from the positions up to each partition's end as it is now."""
        assert self._consumer is not None, "read_to_end() before start()"
        try:
            ends = await self._consumer.end_offsets(list(self._consumer.assignment()))
        except KafkaError as exc:
            raise Unavailable(f"could not read the ends of {self.topics}: {exc}") from exc
        out: list[Record] = []
        for tp, end in ends.items():
            while await self._consumer.position(tp) < end:
                out.extend(await self.poll(timeout=0.5))
        return out

    async def commit(self, record: Record) -> None:
        if self.group is None:
            return
        assert self._consumer is not None
        tp = TopicPartition(self.bus.full(record.topic), record.partition)
        try:
            await self._consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
        except (CommitFailedError, IllegalStateError) as exc:
            raise CommitFailed(f"{record.topic}[{record.partition}]: {exc}") from exc
        except KafkaError as exc:
            raise Unavailable(
                f"commit of {record.topic}[{record.partition}] failed: {exc}"
            ) from exc

    def pause(self) -> None:
        self._paused = True
        if self._consumer is not None:
            self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        if self._consumer is not None:
            self._consumer.resume(*self._consumer.assignment())

    async def _on_revoked(self, revoked) -> None:
        """Wait for a settle block to end, for at most 80% of the rebalance timeout
        (past it the group would drop this member)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.8 * self.bus.settings.session_timeout_ms / 1000
        while not self._idle.is_set():
            left = deadline - loop.time()
            if left <= 0:
                log.warning("a record was still settling when its partitions were revoked")
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), left)
        self._stable.clear()  # no await since the check: no settle block began meanwhile
        self._before = {(self.bus.short(tp.topic), tp.partition) for tp in revoked}

    def _on_assigned(self, assigned) -> None:
        if self._consumer is None:
            return
        now = {(self.bus.short(tp.topic), tp.partition): tp for tp in assigned}
        lost = self._before - set(now)
        for key, tp in now.items():
            if key in self._before and key in self._next:
                self._consumer.seek(tp, self._next[key])  # kept: no record handed out twice
        for key in lost:
            self._next.pop(key, None)
        if self._paused:
            self._consumer.pause(*assigned)
        self._before = set()
        self._stable.set()
        if lost:
            self._tell_lost(lost)

    @asynccontextmanager
    async def settle(self, record: Record) -> AsyncIterator[bool]:
        if self.group is None:
            yield True
            return
        while not (self._stable.is_set() and self._idle.is_set()):
            await (self._idle if self._stable.is_set() else self._stable).wait()
        self._idle.clear()
        try:
            yield self.owns(record)
        finally:
            self._idle.set()

    def assignment(self) -> set[tuple[str, int]]:
        if self._consumer is None:
            return set()
        return {(self.bus.short(tp.topic), tp.partition) for tp in self._consumer.assignment()}

    def owns(self, record: Record) -> bool:
        return (record.topic, record.partition) in self.assignment()

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the partition's high watermark, per assigned partition."""
        if self._consumer is None:
            return {}
        out = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            key = (self.bus.short(tp.topic), tp.partition)
            if high is not None and key in self._next:
                out[key] = max(0, high - self._next[key])
        return out


class _Listener(ConsumerRebalanceListener):
    """Hands aiokafka's rebalance callbacks to the consumer."""

    def __init__(self, owner: KafkaConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked) -> None:
        await self.owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        self.owner._on_assigned(assigned)
