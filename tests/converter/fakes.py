"""A small stand-in for the runner's per-record context (preannotate.handler.Context)."""

from __future__ import annotations

from typing import Any


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str):
        def log(event: str, *args: Any, **kwargs: Any) -> None:
            self.lines.append((level, event, kwargs))

        return log


class FakeContext:
    """Records report() calls; storage is a real preannotate.storage."""

    service = "converter"

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.bus = None
        self.record = None
        self.log = RecordingLog()
        self.reports: list[dict[str, Any]] = []
        self.cancel = False
        self.stopping = False

    async def report(self, **kwargs: Any) -> None:
        self.reports.append(kwargs)

    def cancel_requested(self) -> bool:
        return self.cancel

    def stop_requested(self) -> bool:
        return self.stopping

    async def publish(self, topic: str, message: Any) -> str:
        raise AssertionError("the converter publishes through its Outcome only")
