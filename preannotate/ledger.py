"""The once-ledger: what each (job id, stage) published, kept in storage.

Before a handler's events are published, the route worker
(``preannotate.worker``) writes them to
``<namespace>/jobs/<job_id>/stages/<stage>.json``. A record redelivered after
a crash (its offset was not committed) finds the entry, and the worker only
re-publishes the same events with the same event ids, so the work is done
once and the next stage still gets its event.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import Message

from preannotate.errors import NotFound
from preannotate.keys import job_prefix
from preannotate.storage.base import Storage
from preannotate.topics import message_type


@dataclass(frozen=True)
class Entry:
    topic: str
    message: Message
    event_id: str


class Ledger:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @staticmethod
    def key(namespace: str, job_id: str, stage: str) -> str:
        return f"{job_prefix(namespace, job_id)}stages/{stage}.json"

    def read(self, namespace: str, job_id: str, stage: str) -> list[Entry] | None:
        try:
            body = json.loads(self.storage.get(self.key(namespace, job_id, stage)))
        except NotFound:
            return None
        return [
            Entry(
                topic=e["topic"],
                message=message_type(e["topic"]).FromString(base64.b64decode(e["value"])),
                event_id=e["event_id"],
            )
            for e in body["emits"]
        ]

    def write(self, namespace: str, job_id: str, stage: str, entries: list[Entry]) -> None:
        body = {
            "job_id": job_id,
            "stage": stage,
            "at": datetime.now(UTC).isoformat(),
            "emits": [
                {
                    "topic": e.topic,
                    "type": e.message.DESCRIPTOR.full_name,
                    "value": base64.b64encode(e.message.SerializeToString()).decode(),
                    "event_id": e.event_id,
                }
                for e in entries
            ],
        }
        self.storage.put(self.key(namespace, job_id, stage), json.dumps(body).encode())
