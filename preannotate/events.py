"""Protobuf events on the bus, with CloudEvents binary-mode headers.

The record value is the serialised message; the headers follow the CloudEvents
Kafka binding (``ce_specversion``, ``ce_id``, ``ce_type``, ``ce_source``,
``ce_time``, ``ce_subject``, ``content-type``); the key is the job id, so one
job's events stay ordered on one partition.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.message import DecodeError, Message

from preannotate.bus.base import Bus, Record
from preannotate.errors import BadEvent
from preannotate.topics import message_type

CONTENT_TYPE = "application/protobuf"
SPEC_VERSION = "1.0"


def ce_type(message: Message) -> str:
    return message.DESCRIPTOR.full_name


def headers_for(message: Message, *, source: str, event_id: str | None = None) -> dict[str, str]:
    return {
        "ce_specversion": SPEC_VERSION,
        "ce_id": event_id or str(uuid.uuid4()),
        "ce_type": ce_type(message),
        "ce_source": f"/preannotate/{source}",
        "ce_time": datetime.now(UTC).isoformat(),
        "ce_subject": getattr(message, "job_id", "") or "",
        "content-type": CONTENT_TYPE,
    }


async def publish(
    bus: Bus, topic: str, message: Message, *, source: str, event_id: str | None = None
) -> str:
    """Publish ``message`` on ``topic`` keyed by its job id; returns the event id."""
    expected = message_type(topic)
    if not isinstance(message, expected):
        raise TypeError(f"{topic} carries {expected.DESCRIPTOR.full_name}, not {ce_type(message)}")
    job_id = getattr(message, "job_id", "")
    if not job_id:
        raise BadEvent(f"{ce_type(message)} for {topic} has no job_id")
    headers = headers_for(message, source=source, event_id=event_id)
    await bus.send(topic, message.SerializeToString(), key=job_id, headers=headers)
    return headers["ce_id"]


def decode(record: Record) -> Message:
    """The message in ``record``; ``BadEvent`` when it is not what its topic carries."""
    cls = message_type(record.topic)
    kind = record.headers.get("ce_type")
    if kind and kind != cls.DESCRIPTOR.full_name:
        raise BadEvent(f"{record.topic} carries {cls.DESCRIPTOR.full_name}, record says {kind}")
    content = record.headers.get("content-type")
    if content and content != CONTENT_TYPE:
        raise BadEvent(f"content-type {content!r} on {record.topic}; expected {CONTENT_TYPE}")
    try:
        message = cls.FromString(record.value)
    except DecodeError as exc:
        raise BadEvent(
            f"{record.topic} record at offset {record.offset} is not a "
            f"{cls.DESCRIPTOR.full_name}: {exc}"
        ) from exc
    if not getattr(message, "job_id", ""):
        raise BadEvent(
            f"{cls.DESCRIPTOR.full_name} at {record.topic}:{record.offset} has no job_id"
        )
    return message
