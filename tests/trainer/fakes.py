"""A stand-in for the runner's per-record context (preannotate.handler.Context).

It records every ``report()`` call; ``cancel_after_steps`` / ``stop_after_steps``
turn ``cancel_requested()`` / ``stop_requested()`` true once the training loop
has asked that many times (it asks once before every step), as a user's
CancelJob or a SIGTERM would arrive after that many steps.
"""

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
    service = "trainer"

    def __init__(
        self,
        storage: Any,
        *,
        cancel_after_steps: int | None = None,
        stop_after_steps: int | None = None,
    ) -> None:
        self.storage = storage
        self.bus = None
        self.record = None
        self.log = RecordingLog()
        self.reports: list[dict[str, Any]] = []
        self.cancel_after_steps = cancel_after_steps
        self.stop_after_steps = stop_after_steps
        self.cancel_calls = 0
        self.stop_calls = 0

    async def report(self, **kwargs: Any) -> None:
        self.reports.append(kwargs)

    def cancel_requested(self) -> bool:
        self.cancel_calls += 1
        return self.cancel_after_steps is not None and self.cancel_calls > self.cancel_after_steps

    def stop_requested(self) -> bool:
        self.stop_calls += 1
        return self.stop_after_steps is not None and self.stop_calls > self.stop_after_steps

    async def publish(self, topic: str, message: Any) -> str:
        raise AssertionError("the trainer publishes through its Outcome only")

    # What the tests read.
    def progress_steps(self) -> list[int]:
        return [r["progress"].step for r in self.reports if r.get("progress") is not None]

    def details(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for r in self.reports:
            merged.update(r.get("details") or {})
        return merged
