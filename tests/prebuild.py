"""Model fixtures built in the background while the light tests run.

Some fixtures are small real models that take minutes to train on 2 cores
(tests/converter/trained.py, tests/inference/modelfactory.py); ``build_once``
trains one in its own process and caches it on disk under a key of its code,
so this matters on a fresh machine (CI). An area's conftest submits
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
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
#: Marks a finished build in its cache folder; holds the build's output.
DONE = "DONE"
#: Seconds one build may take. Generous: a background build runs at a low priority
#: and may wait behind busy tests before it gets the CPU.
BUILD_TIMEOUT = 3600

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


def build_once(module: str, kind: str, base: Path) -> Path:
    """``base``, built once: ``python -m <module> <kind> <folder>`` in a fresh process
    writes into a temporary folder beside it, which becomes ``base`` when it succeeds.
    Older builds of ``kind`` in the same cache folder (other keys) are removed."""
    if (base / DONE).exists():
        return base
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=base.parent))
    proc = subprocess.run(
        [sys.executable, "-m", module, kind, str(tmp)],
        cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"building the {kind} fixture failed:\n{proc.stdout}\n{proc.stderr}")
    (tmp / DONE).write_text(proc.stdout)
    try:
        tmp.rename(base)
    except OSError:  # another session built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in base.parent.glob(f"{kind}-*"):  # builds of older fixture code
        if stale != base:
            shutil.rmtree(stale, ignore_errors=True)
    return base
