"""Model fixtures built in the background while the light tests run.

Some fixtures are small real models that take minutes to train on 2 cores
(tests/converter/trained.py, tests/inference/modelfactory.py); they are cached
on disk, so this matters on a fresh machine (CI). An area's conftest submits
its builds by the fixture that returns them (``register``); once the tests are
collected and ordered, the root conftest submits the builds they need in the
order they need them (``submit_for``). They run one at a time in a background
thread at a low CPU priority, and the session fixture takes the result
(``result``): waiting for it if it is still building, building it there and
then if it was never submitted. The root conftest runs the light areas first,
so the builds use the CPU they leave idle.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

#: Niceness of the builds' thread (and so of the training processes it starts).
NICENESS = 15

_lock = threading.Lock()
_futures: dict[str, Future] = {}
_pool: ThreadPoolExecutor | None = None
_builds: dict[str, Callable[[], object]] = {}


def _lower_priority() -> None:
    # On Linux the niceness is per thread, and a child process inherits its
    # forking thread's: the builds' subprocesses run at this priority.
    # Not Linux, or not allowed: build at full priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


def register(fixture: str, build: Callable[[], object]) -> None:
    """``build`` makes what the session fixture named ``fixture`` returns."""
    _builds[fixture] = build


def submit_for(items) -> None:
    """Submit the registered builds that ``items`` (pytest items) use, first used first."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in _builds:
                submit(fixture, _builds[fixture])


def submit(name: str, build: Callable[[], T]) -> None:
    """Queue ``build`` under ``name`` (once; later submissions of a name are ignored)."""
    global _pool
    with _lock:
        if name in _futures:
            return
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="prebuild", initializer=_lower_priority
            )
        _futures[name] = _pool.submit(build)


def result(fixture: str):
    """What the build registered for ``fixture`` returns: from its background build if
    one was submitted, else built now."""
    with _lock:
        future = _futures.get(fixture)
    if future is None:
        return _builds[fixture]()
    return future.result()


def shutdown() -> None:
    """Cancel the builds not started yet, wait for the one running (end of session)."""
    with _lock:
        pool = _pool
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
