"""The in-process bus of the embedded mode, with Kafka's semantics.

Topics have partitions; a key always maps to the same partition; a consumer
group splits the partitions of its topics between its members (range
assignment, rebalanced when a member joins or leaves); offsets move only on
``commit``; a member that stops without committing leaves its records to the
next owner of the partition; paused partitions stay paused across rebalances;
a member is told which partitions a rebalance took (``on_lost``) and keeps the
positions of those it kept; a rebalance waits for a member's ``settle`` block.
Everything runs on one event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from preannotate.bus.base import (
    CommitFailed,
    LostNotices,
    Record,
    TopicSpec,
    dlq_headers,
    dlq_topic,
)
from preannotate.errors import InvalidArgument

MAX_RECORDS = 100


class UnknownTopic(InvalidArgument):
    """Raised when sending to a topic that was never created."""


@dataclass
class _Topic:
    name: str
    partitions: list[list[Record]]
    compacted: bool = False


@dataclass
class _Group:
    name: str
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Held by a member settling a record; a rebalance of the group waits for it.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def partition_for(key: str | None, partitions: int, counter: itertools.count) -> int:
    if key is None:
        return next(counter) % partitions
    return zlib.crc32(key.encode()) % partitions


class _Signal:
    """Wakes every waiting poll when a record or a member changes.

    Each waiter awaits a future of its own: a poll cancelled while it waits
    leaves nothing shared half-done. (An ``asyncio.Condition`` waited on with
    ``wait_for`` could, on Python 3.11, be left unlocked by a cancellation during
    its re-acquire, and its ``async with`` then failed with "Lock is not
    acquired".)
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify_all(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> bool:
        """True when notified, False after ``timeout`` seconds."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)


class MemoryBus:
    """A bus whose topics live in this process's memory."""

    idempotent = True  # one append per send: no producer retries, no duplicates

    def __init__(self, *, default_partitions: int = 3) -> None:
        self.default_partitions = default_partitions
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._changed = _Signal()
        self._round_robin = itertools.count()
        self._readers: list[MemoryConsumer] = []  # members of no group

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ensure_topics(self, topics: Sequence[TopicSpec]) -> None:
        new = set()
        for spec in topics:
            if spec.name not in self._topics:
                self._topics[spec.name] = _Topic(
                    spec.name, [[] for _ in range(spec.partitions)], spec.compacted
                )
                new.add(spec.name)
        for group in list(self._groups.values()):
            if any(new & set(m.topics) for m in group.members):
                async with group.lock:
                    self._rebalance(group)
        for member in self._readers:
            member._assign(self._all_partitions(member.topics))

    def partitions(self, topic: str) -> int:
        return len(self._topic(topic).partitions)

    def _topic(self, name: str) -> _Topic:
        try:
            return self._topics[name]
        except KeyError:
            raise UnknownTopic(f"topic {name!r} does not exist; create it first") from None

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, int]:
        t = self._topic(topic)
        p = partition_for(key, len(t.partitions), self._round_robin)
        log = t.partitions[p]
        record = Record(
            topic=topic,
            partition=p,
            offset=len(log),
            key=key,
            value=bytes(value),
            headers=dict(headers or {}),
            timestamp_ms=int(asyncio.get_running_loop().time() * 1000),
        )
        log.append(record)
        self._changed.notify_all()
        return p, record.offset

    def end_offsets(self, topic: str) -> list[int]:
        return [len(p) for p in self._topic(topic).partitions]

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic`` (all partitions), for tests and tools."""
        return [r for p in self._topic(topic).partitions for r in p]

    def consumer(
        self, topics: Sequence[str], group: str | None, *, from_beginning: bool = True
    ) -> MemoryConsumer:
        return MemoryConsumer(self, list(topics), group, from_beginning)

    async def dead_letter(self, record: Record, error: BaseException, *, group: str) -> None:
        name = dlq_topic(record.topic)
        if name not in self._topics:
            await self.ensure_topics([TopicSpec(name, 1)])
        await self.send(
            name, record.value, key=record.key, headers=dlq_headers(record, error, group)
        )

    # -- groups -----------------------------------------------------------

    async def _join(self, member: MemoryConsumer) -> None:
        if member.group is None:
            self._readers.append(member)
            member._assign(self._all_partitions(member.topics))
            return
        group = self._groups.setdefault(member.group, _Group(member.group))
        async with group.lock:
            group.members.append(member)
            self._rebalance(group)

    async def _leave(self, member: MemoryConsumer) -> None:
        if member.group is None:
            if member in self._readers:
                self._readers.remove(member)
            return
        group = self._groups.get(member.group)
        if group and member in group.members:
            async with group.lock:
                group.members.remove(member)
                self._rebalance(group)

    def _all_partitions(self, topics: Sequence[str]) -> list[tuple[str, int]]:
        return [
            (t, p)
            for t in topics
            if t in self._topics
            for p in range(len(self._topics[t].partitions))
        ]

    def _rebalance(self, group: _Group) -> None:
        """Range assignment per topic over the members subscribed to it."""
        plan: dict[int, list[tuple[str, int]]] = {id(m): [] for m in group.members}
        topics = sorted({t for m in group.members for t in m.topics if t in self._topics})
        for topic in topics:
            members = [m for m in group.members if topic in m.topics]
            parts = len(self._topics[topic].partitions)
            for i in range(parts):
                plan[id(members[i * len(members) // parts])].append((topic, i))
        for member in group.members:
            member._assign(plan[id(member)])

    def _committed(self, group: str | None, tp: tuple[str, int]) -> int | None:
        if group is None:
            return None
        return self._groups[group].committed.get(tp)


class MemoryConsumer(LostNotices):
    """A member of a group on a ``MemoryBus`` (or, with group None, a reader of
    every partition that commits nothing)."""

    def __init__(
        self, bus: MemoryBus, topics: list[str], group: str | None, from_beginning: bool
    ) -> None:
        super().__init__()
        self.bus = bus
        self.topics = topics
        self.group = group
        self.from_beginning = from_beginning
        self._assigned: list[tuple[str, int]] = []
        self._positions: dict[tuple[str, int], int] = {}
        self._paused = False
        self._running = False
        self._wakeup: asyncio.Task | None = None

    async def start(self) -> None:
        self._running = True
        await self.bus._join(self)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        await self.bus._leave(self)
        self.bus._changed.notify_all()

    def _assign(self, partitions: list[tuple[str, int]]) -> None:
        keep = {tp: self._positions[tp] for tp in partitions if tp in self._positions}
        self._positions = {}
        for tp in partitions:
            if tp in keep:
                self._positions[tp] = keep[tp]
                continue
            committed = self.bus._committed(self.group, tp)
            if committed is not None:
                self._positions[tp] = committed
            elif self.from_beginning:
                self._positions[tp] = 0
            else:
                self._positions[tp] = len(self.bus._topics[tp[0]].partitions[tp[1]])
        lost = set(self._assigned) - set(partitions)
        self._assigned = list(partitions)
        if lost and self._running:
            self._tell_lost(lost)

    def _available(self) -> list[Record]:
        if self._paused or not self._running:
            return []
        out: list[Record] = []
        for tp in self._assigned:
            log = self.bus._topics[tp[0]].partitions[tp[1]]
            pos = self._positions[tp]
            if pos < len(log):
                take = log[pos : pos + MAX_RECORDS - len(out)]
                out.extend(take)
                self._positions[tp] = pos + len(take)
            if len(out) >= MAX_RECORDS:
                break
        return out

    async def poll(self, timeout: float) -> list[Record]:
        if not self._running:
            raise RuntimeError("poll() on a consumer that is not started")
        records = self._available()
        if records:
            return records
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._running:
            left = deadline - loop.time()
            if left <= 0 or not await self.bus._changed.wait(left):
                break
            records = self._available()
            if records:
                return records
        await asyncio.sleep(0)
        return []

    async def commit(self, record: Record) -> None:
        if self.group is None:
            return
        tp = (record.topic, record.partition)
        if tp not in self._assigned:
            raise CommitFailed(
                f"{record.topic}[{record.partition}] is no longer assigned to this member"
            )
        committed = self.bus._groups[self.group].committed
        committed[tp] = max(committed.get(tp, 0), record.offset + 1)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wakeup = asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        self.bus._changed.notify_all()

    def assignment(self) -> set[tuple[str, int]]:
        return set(self._assigned)

    def owns(self, record: Record) -> bool:
        return (record.topic, record.partition) in self._assigned

    @asynccontextmanager
    async def settle(self, record: Record) -> AsyncIterator[bool]:
        if self.group is None:
            yield True
            return
        async with self.bus._groups[self.group].lock:
            yield self.owns(record)

    def lag(self) -> dict[tuple[str, int], int]:
        return {
            tp: len(self.bus._topics[tp[0]].partitions[tp[1]]) - self._positions[tp]
            for tp in self._assigned
        }
