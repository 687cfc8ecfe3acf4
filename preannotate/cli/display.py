"""How the long commands show progress: a rich bar on a terminal, plain lines elsewhere.

``preannotate quickstart``, ``train``/``watch``, ``annotate`` and ``weights pull``
run for minutes. On a terminal they draw rich progress bars. Where stdout is
not a terminal (CI, ``| tee``, a log file) rich draws nothing until the end, so
they print plain lines instead (``Lines``): one at each change of stage, one at
most every ``INTERVAL`` seconds while figures move, and the last one again
every ``INTERVAL`` seconds while nothing changes, e.g.::

    train: running, step 300/600, loss 0.4100, 5.2 img/s, 2 min 10 s elapsed

The mode (``choose``): ``--progress bar|plain|none`` (``add_option``), else
``PREANNOTATE_PROGRESS``, else ``bar`` on a terminal and ``plain`` elsewhere;
``none`` prints only the commands' final lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable

from rich.console import Console

MODES = ("bar", "plain", "none")
#: The environment variable that picks the mode when ``--progress`` is not given.
ENV = "PREANNOTATE_PROGRESS"
#: Seconds between two plain lines of the same stage.
INTERVAL = 15.0


def _mode(text: str) -> str:
    if text in ("auto", *MODES):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a progress mode: use bar, plain or none (--progress or {ENV})"
    )


def add_option(parser: argparse.ArgumentParser) -> None:
    """Declare ``--progress`` (default: ``PREANNOTATE_PROGRESS``, else by the terminal)."""
    parser.add_argument(
        "--progress",
        type=_mode,  # argparse converts a string default too: a bad ENV is refused at parse
        default=os.environ.get(ENV) or "auto",
        metavar="{bar,plain,none}",
        help=f"progress display (or {ENV}); default: bars on a terminal, plain lines "
        f"every {INTERVAL:.0f} s and at each stage elsewhere",
    )


def choose(console: Console, requested: str = "") -> str:
    """The mode to use: ``requested``, else ``PREANNOTATE_PROGRESS``, else by the terminal.

    ``console.is_terminal`` is rich's own test (stdout a TTY, or forced), so
    ``bar`` is chosen exactly where rich would draw.
    """
    mode = _checked(requested or os.environ.get(ENV) or "auto")
    if mode == "auto":
        return "bar" if console.is_terminal else "plain"
    return mode


def _checked(mode: str) -> str:
    try:
        return _mode(mode)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


def elapsed(seconds: float) -> str:
    """``45 s``, ``2 min 10 s``, ``1 h 5 min``."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


class Lines:
    """Plain progress lines on ``console``; ``enabled=False`` prints nothing (bar/none modes)."""

    def __init__(
        self,
        console: Console,
        *,
        enabled: bool = True,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.enabled = console, enabled
        self.interval, self.clock = interval, clock
        self.started = clock()
        self._key: str | None = None
        self._text = ""
        self._printed_at = 0.0

    @classmethod
    def for_mode(cls, console: Console, mode: str, **options) -> Lines:
        return cls(console, enabled=mode == "plain", **options)

    def show(self, text: str, *, key: str | None = None) -> None:
        """Note the latest state; print it when ``key`` (default: ``text``) changed or
        ``interval`` seconds passed since the last line."""
        if not self.enabled:
            return
        key = text if key is None else key
        changed, self._key, self._text = key != self._key, key, text
        if changed or self.clock() - self._printed_at >= self.interval:
            self._print()

    def beat(self) -> None:
        """Print the latest state again when no line was printed for ``interval`` seconds."""
        silent = self.clock() - self._printed_at >= self.interval
        if self.enabled and self._key is not None and silent:
            self._print()

    @contextlib.asynccontextmanager
    async def beating(self) -> AsyncIterator[Lines]:
        """``beat()`` in the background while the block runs (a stage silent for minutes)."""
        if not self.enabled:
            yield self
            return
        task = asyncio.create_task(self._beat_forever())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(max(min(self.interval / 4, 1.0), 0.05))
            self.beat()

    def _print(self) -> None:
        now = self.clock()
        self.console.print(
            f"{self._text}, {elapsed(now - self.started)} elapsed",
            markup=False,
            highlight=False,
            soft_wrap=True,  # one line in a log, whatever the width
        )
        self._printed_at = now
