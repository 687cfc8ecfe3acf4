"""structlog JSON logs with the service, job id and event id bound, secrets redacted.

``configure(service, level, fmt)`` once at start; then ``get_logger()``.
The route worker binds ``job_id`` and ``event_id`` with structlog's contextvars for
the duration of each record, so every line a handler logs carries them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"(token|password|passwd|secret|authorization|api[_-]?key|credential|private[_-]?key|signature(?!s))",
    re.I,
)
_SECRET_VALUE = [
    (re.compile(r"\b(Bearer|Token|Basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + REDACTED),
    (re.compile(r"(?i)(://[^/\s:@]+:)[^/\s@]+@"), r"\1" + REDACTED + "@"),
    (re.compile(r"(?i)\bsha256=[0-9a-f]{16,}"), "sha256=" + REDACTED),
    (
        re.compile(r"(?i)((?:token|password|secret|api_key|apikey)=)[^&\s;]+"),
        r"\1" + REDACTED,
    ),
]


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        for pattern, repl in _SECRET_VALUE:
            value = pattern.sub(repl, value)
        return value
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_secret_key(k) else redact_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def redact_secrets(_logger, _method, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: secret-looking keys and values become [redacted]."""
    for key, value in list(event_dict.items()):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_value(value)
    return event_dict


def configure(service: str, level: str = "info", fmt: str = "json", stream=None) -> None:
    """Configure structlog (and the stdlib root logger) for one process."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=stream or sys.stderr)


def get_logger(**bound: Any):
    """A lazy logger: it follows ``configure()`` even when made at import time."""
    return structlog.get_logger(**bound)
