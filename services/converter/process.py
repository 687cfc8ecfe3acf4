"""Start a worker process (``services.converter.worker``) and turn its end into a result or an error.

The wait is asynchronous, so the service keeps serving its consumer while a
job exports; the process is killed when it runs past the timeout, when the
job is cancelled, or when the service stops. A worker's own error keeps its
class (``InvalidArgument``, ``FailedPrecondition``); a crash becomes
``FailedPrecondition`` with the end of its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from preannotate import errors

POLL_SECONDS = 0.5
TAIL_CHARS = 2000
_KNOWN = {
    "InvalidArgument": errors.InvalidArgument,
    "FailedPrecondition": errors.FailedPrecondition,
    "NotFound": errors.NotFound,
    "Unavailable": errors.Unavailable,
}


def worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads:
        env["TF_NUM_INTRAOP_THREADS"] = str(threads)
        env["TF_NUM_INTEROP_THREADS"] = str(max(1, threads // 2))
    return env


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines)[-TAIL_CHARS:]


async def run_worker(
    command: str,
    job: dict[str, Any],
    folder: Path,
    *,
    python: str,
    timeout: float,
    threads: int = 0,
    cancelled: Callable[[], bool] = lambda: False,
    stopping: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Run ``worker <command>`` on ``job``; return its facts or raise its error."""
    folder.mkdir(parents=True, exist_ok=True)
    job_path, result_path, log_path = (
        folder / f"{command}-job.json",
        folder / f"{command}-result.json",
        folder / f"{command}.log",
    )
    job_path.write_text(json.dumps(job, indent=2, default=str))
    result_path.unlink(missing_ok=True)
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            python,
            "-m",
            "services.converter.worker",
            command,
            str(job_path),
            str(result_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=worker_env(threads),
            start_new_session=True,  # its own process group: a kill takes its children too
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            try:
                await asyncio.wait_for(proc.wait(), POLL_SECONDS)
                break
            except TimeoutError:
                pass
            if cancelled():
                raise errors.Cancelled(f"cancelled by a user during the {command} step")
            if stopping():
                raise errors.Interrupted(f"the converter is stopping during the {command} step")
            if loop.time() > deadline:
                raise errors.FailedPrecondition(
                    f"the {command} step ran longer than {timeout:.0f} s and was stopped "
                    "(PREANNOTATE_CONVERT_SUBPROCESS_TIMEOUT_SECONDS)"
                )
    finally:
        await _kill(proc)
    try:
        result = json.loads(result_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise errors.FailedPrecondition(
            f"the {command} step died (exit status {proc.returncode}) without a result:\n"
            f"{_tail(log_path)}"
        ) from None
    if result.get("ok"):
        return result["facts"]
    cls = _KNOWN.get(result.get("error", ""), errors.FailedPrecondition)
    message = result.get("message", "")
    if not result.get("error"):
        message = f"the {command} step failed: {message}\n{_tail(log_path)}"
    raise cls(message)
