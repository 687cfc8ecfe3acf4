"""The one error mapping and retry policy for CVAT's answers.

An answer of 5xx, 408 or 429, a timeout or a broken connection is
``Retryable``: tried again after ``backoff * 2 ** (try - 1)`` seconds (at most
``backoff_max``), up to ``retry_attempts`` tries, then ``Unavailable`` naming
the last error. The rest is not retried: 401 is ``FailedPrecondition`` (the
token the operator configured was refused: fix the deployment, and an
annotation run fails instead of skipping frames), 403 ``PermissionDenied``,
404 ``NotFound``, any other 4xx ``InvalidArgument``, each with CVAT's answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from preannotate.cvat.settings import CvatConnection
from preannotate.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

T = TypeVar("T")

#: HTTP statuses other than 5xx that a later try may get past.
RETRY_STATUS = frozenset({408, 429})
#: Characters of a CVAT answer quoted in an error message.
BODY_CHARS = 300


class Retryable(Exception):
    """One failed try that a later try may fix; ``str()`` says what failed and how."""


def retryable_status(status: int) -> bool:
    """Whether an HTTP answer with ``status`` is worth another try."""
    return status >= 500 or status in RETRY_STATUS


def body_text(body: Any) -> str:
    """A CVAT answer's body on one line, cut to ``BODY_CHARS``."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = " ".join(str(body or "").split())
    return text[:BODY_CHARS] + ("..." if len(text) > BODY_CHARS else "")


def http_error(
    status: int, what: str, body: Any, connection: CvatConnection, reason: str = ""
) -> Exception:
    """The error for CVAT's answer ``status`` (``reason``, ``body``) to ``what``
    ("GET /api/..."): ``Retryable`` when a later try may get past it."""
    said = f"CVAT answered {status} {reason}".rstrip() + f" to {what}"
    text = body_text(body)
    said += f": {text}" if text else ""
    if retryable_status(status):
        return Retryable(said)
    if status == 401:
        return FailedPrecondition(
            f"{said}. The token was refused: set PREANNOTATE_CVAT_TOKEN to a valid token and "
            f"PREANNOTATE_CVAT_AUTH_SCHEME to how CVAT expects it (now {connection.auth_scheme!r})"
        )
    if status == 403:
        return PermissionDenied(
            f"{said}. The token's user may not do this; check its rights in CVAT and the "
            f"organisation (now {connection.organization or 'none'!r})"
        )
    if status == 404:
        return NotFound(f"{said}. Check the task id and the organisation")
    return InvalidArgument(said)


async def with_retries(call: Callable[[], Awaitable[T]], connection: CvatConnection) -> T:
    """``await call()`` until it does not raise ``Retryable``, as the module doc says."""
    attempts = connection.retry_attempts
    last: Retryable | None = None
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except Retryable as exc:
            last = exc
        if attempt < attempts:
            await asyncio.sleep(connection.delay(attempt))
    raise Unavailable(
        f"{last} (gave up after {attempts} tries; PREANNOTATE_CVAT_RETRY_ATTEMPTS)"
    ) from last
