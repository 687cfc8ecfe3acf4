"""Training progress: what the loop reports, and when.

``TrainProgress`` is one report of the loop (its ``to_proto`` is the job
status's ``Progress``). ``ProgressClock`` decides when a report is due (every
N seconds, and always at the first and last step), measures images per second
over the last interval, and estimates the time left from the step rate,
smoothed over the intervals so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainProgress:
    step: int
    total: int
    loss: float
    learning_rate: float
    images_per_second: float
    eta_seconds: float
    #: "1/3" for Mask R-CNN stages, "" otherwise.
    stage: str = ""

    def to_proto(self):
        from preannotate.v1 import events_pb2

        return events_pb2.Progress(
            step=self.step,
            total=self.total,
            loss=self.loss,
            eta_seconds=self.eta_seconds,
            images_per_second=self.images_per_second,
            learning_rate=self.learning_rate,
        )


class ProgressClock:
    """Rate-limits reports and measures throughput between them."""

    def __init__(self, interval: float, batch_size: int, clock=time.monotonic) -> None:
        self.interval = interval
        self.batch_size = batch_size
        self.clock = clock
        self._last_time: float | None = None
        self._last_step = 0
        self._rate = 0.0  # steps per second, smoothed

    def start(self, step: int) -> None:
        self._last_time = self.clock()
        self._last_step = step

    def due(self, step: int, total: int, first: bool = False) -> bool:
        if self._last_time is None:
            return True
        return first or step >= total or self.clock() - self._last_time >= self.interval

    def measure(self, step: int, total: int) -> tuple[float, float]:
        """(images per second since the last report, ETA seconds); restarts the interval."""
        now = self.clock()
        if self._last_time is None:
            self._last_time, self._last_step = now, step
            return 0.0, 0.0
        elapsed = now - self._last_time
        steps = step - self._last_step
        if elapsed > 0 and steps > 0:
            rate = steps / elapsed
            self._rate = rate if self._rate == 0 else 0.5 * self._rate + 0.5 * rate
        self._last_time, self._last_step = now, step
        images = (steps * self.batch_size / elapsed) if elapsed > 0 and steps > 0 else 0.0
        eta = (total - step) / self._rate if self._rate > 0 else 0.0
        return images, max(0.0, eta)
