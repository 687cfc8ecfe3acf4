"""The bus: one interface (``base``), Kafka (``kafka``) and in-process (``memory``)."""

from __future__ import annotations

from preannotate.bus.base import Bus, CommitFailed, Consumer, Record, TopicSpec, dlq_topic
from preannotate.bus.memory import MemoryBus

__all__ = [
    "Bus",
    "CommitFailed",
    "Consumer",
    "MemoryBus",
    "Record",
    "TopicSpec",
    "dlq_topic",
    "make_bus",
]


def make_bus(settings) -> Bus:
    """The bus that ``settings.bus`` names."""
    if settings.bus == "memory":
        return MemoryBus(default_partitions=settings.kafka_partitions)
    from preannotate.bus.kafka import KafkaBus

    return KafkaBus(settings)
