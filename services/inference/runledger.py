"""The write ledger of an annotation run: what it has written, kept in storage, so a
redelivered ``annotation.requested`` resumes the run instead of writing twice.

One run is one job id and what it was asked (target, model, mode, threshold:
``run_key``). Its records live under
``<namespace>/jobs/<job_id>/annotate/<run key>/``, each one small object
written once, after the write it records succeeded:

    prepared.json          replace mode's removal of earlier shapes is done
    written/<n>.json       one durable write: its frames and how many shapes
    finished.json          the run's result, after the target's ``finish``

Only ``put``/``get``/``list`` of the storage seam are used. A record written
per write (not one growing file rewritten) keeps a long run's ledger traffic
linear in its frames.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from preannotate.errors import NotFound
from preannotate.keys import job_prefix
from preannotate.storage.base import Storage

PREPARED = "prepared.json"
FINISHED = "finished.json"
WRITTEN = "written/"


def run_key(*parts: object) -> str:
    """A short stable name for what a run was asked (target, model, mode, threshold)."""
    text = "\n".join(str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunState:
    """What an earlier attempt of the run left behind."""

    #: Shapes replace mode removed, once that is done; None while not done.
    deleted: int | None = None
    #: Frame -> shapes written on it, for every frame whose write succeeded.
    written: dict[int, int] = field(default_factory=dict)
    #: The result of a finished run (``finished.json``), if it finished.
    finished: dict[str, Any] | None = None
    #: Write records read (the next record's number).
    records: int = 0


class RunLedger:
    """Reads and writes one run's records (blocking; call from a thread)."""

    def __init__(self, storage: Storage, namespace: str, job_id: str, key: str) -> None:
        self.storage = storage
        self.prefix = f"{job_prefix(namespace, job_id)}annotate/{key}/"
        self._next = 0

    def load(self) -> RunState:
        state = RunState(finished=self._read(FINISHED))
        prepared = self._read(PREPARED)
        if prepared is not None:
            state.deleted = int(prepared["deleted"])
        for key in self.storage.list(self.prefix + WRITTEN):
            record = json.loads(self.storage.get(key))
            per_frame = record["shapes"]
            for frame in record["frames"]:
                state.written[int(frame)] = int(per_frame.get(str(frame), 0))
            state.records += 1
        self._next = state.records
        return state

    def prepared(self, deleted: int) -> None:
        self._write(PREPARED, {"deleted": deleted})

    def written(self, frames: Sequence[int], shapes: dict[int, int]) -> None:
        """One durable write of ``frames``; ``shapes``: frame -> shapes written on it."""
        name = f"{WRITTEN}{self._next:08d}.json"
        self._next += 1
        self._write(
            name,
            {"frames": list(frames), "shapes": {str(f): n for f, n in shapes.items() if n}},
        )

    def finished(self, result: dict[str, Any]) -> None:
        self._write(FINISHED, result)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.storage.get(self.prefix + name))
        except NotFound:
            return None

    def _write(self, name: str, body: dict[str, Any]) -> None:
        body = {**body, "at": datetime.now(UTC).isoformat()}
        self.storage.put(self.prefix + name, json.dumps(body).encode())
