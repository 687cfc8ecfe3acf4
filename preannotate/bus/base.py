"""The bus interface: publish; consume as a group member with manual commit;
pause and resume; dead-letter.

Two implementations pass the same contract tests (tests/platform/test_bus_contract.py):
``KafkaBus`` (aiokafka, the distributed mode) and ``MemoryBus`` (one process,
the embedded mode). Both keep Kafka's semantics: a key always lands on the same
partition, a group splits partitions between its members, offsets are
committed by hand, and records a member took without committing go to the
next owner of the partition.

Rebalances: a member is told which partitions a rebalance took from it
(``on_lost``); partitions it keeps keep their positions (records already
handed out are not handed out again); and a rebalance waits while the member
settles a record (``settle``: its outcome written, published and committed),
so a partition never moves between a member's publish and its commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from preannotate.errors import PreannotateError

DLQ_SUFFIX = ".dlq"


class CommitFailed(PreannotateError):
    """The partition is no longer owned by this member (it was rebalanced away)."""


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


@dataclass(frozen=True)
class Record:
    """One record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    timestamp_ms: int = 0

    @property
    def event_id(self) -> str:
        return self.headers.get("ce_id", "")

    @property
    def event_type(self) -> str:
        return self.headers.get("ce_type", "")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    compacted: bool = False


@runtime_checkable
class Consumer(Protocol):
    """A member of a consumer group (or, with group None, a reader of every
    partition that commits nothing). Offsets move only with ``commit``."""

    group: str | None

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Leave the group without committing what was not committed."""

    async def poll(self, timeout: float) -> list[Record]:
        """Records of the assigned, unpaused partitions; [] after ``timeout`` seconds.

        Polling also keeps the member alive in its group: call it while a long
        handler runs (with the partitions paused).
        """

    async def commit(self, record: Record) -> None:
        """Mark ``record`` and everything before it on its partition as done.

        Raises ``CommitFailed`` when the partition moved to another member.
        """

    def pause(self) -> None:
        """Stop fetching from every assigned partition (also ones assigned later)."""

    def resume(self) -> None: ...

    def assignment(self) -> set[tuple[str, int]]: ...

    def owns(self, record: Record) -> bool:
        """Whether this member still owns the record's partition."""

    def on_lost(self, callback: Callable[[set[tuple[str, int]]], None]) -> None:
        """Call ``callback`` with the partitions each rebalance takes from this member.

        It runs as the partitions go (a new owner may already read them), before
        any record of a partition assigned again is handed out. Partitions the
        member keeps are not reported, and keep their positions: a record
        handed out before the rebalance is not handed out again.
        """

    def settle(self, record: Record) -> AbstractAsyncContextManager[bool]:
        """Hold the record's partition while its outcome is written and committed.

        ``async with consumer.settle(record) as owned:`` waits for a rebalance in
        progress to end, then yields whether this member owns the partition; a
        rebalance that starts meanwhile waits until the block ends, so a commit
        made in the block is not refused for a partition that was owned.
        """

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between this member's position and the end, per assigned partition."""


Partitions = set[tuple[str, int]]


class LostNotices:
    """The ``on_lost`` part of a consumer, shared by both buses: callbacks told
    which partitions a rebalance took."""

    def __init__(self) -> None:
        self._lost_callbacks: list[Callable[[Partitions], None]] = []

    def on_lost(self, callback: Callable[[Partitions], None]) -> None:
        self._lost_callbacks.append(callback)

    def _tell_lost(self, lost: Partitions) -> None:
        for callback in self._lost_callbacks:
            callback(lost)


@runtime_checkable
class Bus(Protocol):
    """Producer side and consumer factory."""

    #: Whether the producer is idempotent (no duplicates from its own retries).
    idempotent: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ensure_topics(self, topics: Sequence[TopicSpec]) -> None:
        """Create the topics (and nothing else) if they do not exist."""

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, int]:
        """Publish one record and wait until it is durable; (partition, offset)."""

    def consumer(
        self, topics: Sequence[str], group: str | None, *, from_beginning: bool = True
    ) -> Consumer:
        """A new group member for ``topics``; call ``start()`` on it.

        With ``group`` None the consumer reads every partition of ``topics``
        (from the beginning or from the end) and commits nothing.
        """

    async def dead_letter(self, record: Record, error: BaseException, *, group: str) -> None:
        """Send ``record`` to ``<topic>.dlq`` with the error in its headers."""


def dlq_headers(record: Record, error: BaseException, group: str) -> dict[str, str]:
    """The headers a dead-lettered record carries: its own plus where and why."""
    from datetime import UTC, datetime

    headers = dict(record.headers)
    headers.update(
        {
            "dlq_error": f"{type(error).__name__}: {error}"[:4000],
            "dlq_error_type": type(error).__name__,
            "dlq_topic": record.topic,
            "dlq_partition": str(record.partition),
            "dlq_offset": str(record.offset),
            "dlq_group": group,
            "dlq_failed_at": datetime.now(UTC).isoformat(),
        }
    )
    return headers
