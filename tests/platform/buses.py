"""Helpers for the bus contract tests: build either bus, drain consumers."""

from __future__ import annotations

import asyncio
import uuid

from preannotate.bus import MemoryBus, Record
from preannotate.bus.base import Consumer
from preannotate.settings import ServiceSettings


def kafka_settings(bootstrap: str, **overrides) -> ServiceSettings:
    """Settings for a test's own corner of the shared broker (its own topic prefix)."""
    overrides.setdefault("kafka_topic_prefix", f"t{uuid.uuid4().hex[:8]}.")
    return ServiceSettings(
        bus="kafka",
        kafka_bootstrap=bootstrap,
        session_timeout_ms=6000,
        keepalive_seconds=0.5,
        retry_backoff_seconds=0.05,
        **overrides,
    )


async def make(kind: str, bootstrap: str | None):
    if kind == "memory":
        bus = MemoryBus()
    else:
        from preannotate.bus.kafka import KafkaBus

        bus = KafkaBus(kafka_settings(bootstrap))
    await bus.start()
    return bus


async def drain(consumer: Consumer, n: int, timeout: float = 20.0) -> list[Record]:
    """Poll until ``n`` records came (or ``timeout``); returns what came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out: list[Record] = []
    while len(out) < n and loop.time() < deadline:
        out.extend(await consumer.poll(timeout=0.5))
    return out


async def wait_assigned(*consumers: Consumer, partitions: int, timeout: float = 30.0) -> None:
    """Poll every consumer until their assignments cover ``partitions`` without overlap."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for c in consumers:
            c.pause()
            await c.poll(timeout=0.1)
            c.resume()
        sets = [c.assignment() for c in consumers]
        total = sum(len(s) for s in sets)
        if all(sets) and total == partitions and len(set().union(*sets)) == partitions:
            return
    raise AssertionError(f"assignments never settled: {[c.assignment() for c in consumers]}")
