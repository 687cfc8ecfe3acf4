"""A stand-in for the per-record context (``preannotate.handler.Context``,
``preannotate.worker.RecordContext`` in the runner).

``FakeContext`` records every ``report()`` call and every log line; its
storage is a real ``preannotate.storage``. A test turns ``cancel_requested()``
/ ``stop_requested()`` true by setting ``cancel`` / ``stopping``, or after a
number of checks with ``cancel_after_steps`` / ``stop_after_steps`` (the
trainer's loop checks once before every step, so that is as a user's
CancelJob or a SIGTERM arriving after that many steps). Handlers publish
through their ``Outcome``: ``publish()`` fails the test.
"""

from __future__ import annotations

from typing import Any


class RecordingLog:
    """A logger that keeps ``(level, event, fields)`` of every call."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str):
        def log(event: str, *args: Any, **kwargs: Any) -> None:
            self.lines.append((level, event, kwargs))

        return log


class FakeContext:
    """Records report() calls; cancel and stop as the test asks."""

    def __init__(
        self,
        storage: Any,
        *,
        service: str = "test",
        cancel_after_steps: int | None = None,
        stop_after_steps: int | None = None,
    ) -> None:
        self.service = service
        self.storage = storage
        self.bus = None
        self.record = None
        self.log = RecordingLog()
        self.reports: list[dict[str, Any]] = []
        self.cancel = False
        self.stopping = False
        self.cancel_after_steps = cancel_after_steps
        self.stop_after_steps = stop_after_steps
        self.cancel_calls = 0
        self.stop_calls = 0

    async def report(self, **kwargs: Any) -> None:
        self.reports.append(kwargs)

    def cancel_requested(self) -> bool:
        self.cancel_calls += 1
        return self.cancel or _passed(self.cancel_calls, self.cancel_after_steps)

    def stop_requested(self) -> bool:
        self.stop_calls += 1
        return self.stopping or _passed(self.stop_calls, self.stop_after_steps)

    async def publish(self, topic: str, message: Any) -> str:
        raise AssertionError(f"a handler publishes through its Outcome only, not to {topic}")

    # What the tests read.
    def progress_steps(self) -> list[int]:
        return [r["progress"].step for r in self.reports if r.get("progress") is not None]

    def details(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for r in self.reports:
            merged.update(r.get("details") or {})
        return merged


def _passed(calls: int, limit: int | None) -> bool:
    return limit is not None and calls > limit
