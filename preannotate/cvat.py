"""What every service that talks to CVAT shares: its settings, the auth headers,
the retry policy, and the rules for a ``CvatRef.url``.

- ``CvatSettings``: the connection fields (``PREANNOTATE_CVAT_URL``,
  ``PREANNOTATE_CVAT_TOKEN``, ...), one set of variables for the exporter and
  the inference service; each service's settings class extends it.
- ``CvatConnection``: those fields as a frozen value for one organisation
  context, built with ``CvatConnection.from_settings``.
- ``cvat_headers``: ``Authorization: Bearer <token>`` (a personal access
  token) or ``Token <key>`` (a legacy API key), and ``X-Organization`` when an
  organisation is named.
- ``http_error`` and ``with_retries``: the one error and retry policy. An
  answer of 5xx, 408 or 429, a timeout or a broken connection is
  ``Retryable``: tried again after ``backoff * 2 ** (try - 1)`` seconds (at
  most ``backoff_max``), up to ``retry_attempts`` tries, then ``Unavailable``
  naming the last error. 401 is ``InvalidArgument`` (fix the token), 403
  ``PermissionDenied``, 404 ``NotFound``, other 4xx ``InvalidArgument``, each
  with CVAT's answer.
- ``check_origin``, ``check_same_server`` and ``file_ref_path``: the token only
  ever goes to the configured CVAT (same scheme, host and port), and a
  ``CvatRef.url`` names either that CVAT or, with ``file://``, a local path
  that must stay under a configured root.
- ``coco_document`` and ``coco_image``: the frame of a "COCO 1.0" file as CVAT
  exports it (``annotations/instances_default.json``), for whoever writes one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from preannotate.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from preannotate.settings import ServiceSettings

T = TypeVar("T")
AuthScheme = Literal["bearer", "token"]

#: HTTP statuses other than 5xx that a later try may get past.
RETRY_STATUS = frozenset({408, 429})
#: Characters of a CVAT answer quoted in an error message.
BODY_CHARS = 300
MISSING_TOKEN = (
    "no CVAT token is configured: set PREANNOTATE_CVAT_TOKEN to a personal access token "
    "(or a legacy API key with PREANNOTATE_CVAT_AUTH_SCHEME=token)"
)


class CvatSettings(ServiceSettings):
    """The CVAT connection, read from ``PREANNOTATE_CVAT_*`` (shared by every service
    that talks to CVAT, so one set of variables serves them all)."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    cvat_url: str = "http://127.0.0.1:8080"
    """CVAT's address as CVAT calls itself (http:// or https://, no path)."""

    cvat_token: SecretStr = SecretStr("")
    """A personal access token, or a legacy API key with ``cvat_auth_scheme=token``."""

    cvat_auth_scheme: AuthScheme = "bearer"
    """How the token is sent: "bearer" (Authorization: Bearer) or "token" (Authorization: Token)."""

    cvat_organization: str = ""
    """Organisation slug sent as X-Organization; a request's or event's own organisation wins."""

    cvat_verify_tls: bool = True
    """Whether CVAT's TLS certificate is checked (https only)."""

    cvat_request_timeout_seconds: float = Field(60.0, gt=0)
    """Time limit of one request to CVAT."""

    cvat_retry_attempts: int = Field(3, ge=1)
    """Tries of one request that fails with 5xx, 408, 429, a timeout or a broken connection."""

    cvat_retry_backoff_seconds: float = Field(1.0, ge=0)
    """Wait before the second try; doubled for each further try, up to the max."""

    cvat_retry_backoff_max_seconds: float = Field(30.0, ge=0)
    """Longest wait between two tries."""

    @field_validator("cvat_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL, e.g. http://cvat:8080")
        return value.rstrip("/")


def cvat_headers(
    token: str, scheme: AuthScheme = "bearer", organization: str = ""
) -> dict[str, str]:
    """The headers that authenticate a request to CVAT (and pick the organisation)."""
    if scheme not in ("bearer", "token"):
        raise ValueError(f"auth scheme must be 'bearer' or 'token', not {scheme!r}")
    headers = {"Authorization": f"{'Bearer' if scheme == 'bearer' else 'Token'} {token}"}
    if organization:
        headers["X-Organization"] = organization
    return headers


@dataclass(frozen=True)
class CvatConnection:
    """One CVAT server and organisation context, with the retry policy."""

    url: str
    token: str
    auth_scheme: AuthScheme = "bearer"
    organization: str = ""
    verify_tls: bool = True
    request_timeout: float = 60.0
    retry_attempts: int = 3
    backoff: float = 1.0
    backoff_max: float = 30.0

    @classmethod
    def from_settings(cls, settings: CvatSettings, organization: str = "", **extra: Any) -> Self:
        """The settings' connection; ``organization`` (a request's own) wins when set.
        ``extra`` fills the fields a subclass adds."""
        return cls(
            url=settings.cvat_url,
            token=settings.cvat_token.get_secret_value(),
            auth_scheme=settings.cvat_auth_scheme,
            organization=organization or settings.cvat_organization,
            verify_tls=settings.cvat_verify_tls,
            request_timeout=settings.cvat_request_timeout_seconds,
            retry_attempts=settings.cvat_retry_attempts,
            backoff=settings.cvat_retry_backoff_seconds,
            backoff_max=settings.cvat_retry_backoff_max_seconds,
            **extra,
        )

    def headers(self) -> dict[str, str]:
        return cvat_headers(self.token, self.auth_scheme, self.organization)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1, 2, ...)."""
        return min(self.backoff * 2 ** (attempt - 1), self.backoff_max)


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
        return InvalidArgument(
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


def origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) of a URL, the default port filled in."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, f"{(parts.hostname or '').lower()}:{port}"


def check_origin(url: str, connection: CvatConnection, what: str = "CVAT pointed at") -> str:
    """``url`` if it is on the configured CVAT; a link CVAT gave that leads elsewhere
    (a pagination link, a result_url) is refused: the token is not sent there."""
    if origin(url) != origin(connection.url):
        raise FailedPrecondition(
            f"{what} {url!r}, another server than PREANNOTATE_CVAT_URL {connection.url!r}; "
            "the token is not sent there. Set PREANNOTATE_CVAT_URL to the address CVAT calls "
            "itself"
        )
    return url


def check_same_server(requested: str, configured: str) -> None:
    """Refuse a CVAT URL that is not the configured one (the token must not travel)."""
    if requested and origin(requested) != origin(configured):
        raise InvalidArgument(
            f"CVAT URL {requested!r} is not this deployment's CVAT ({configured!r}, "
            "PREANNOTATE_CVAT_URL); leave it empty or name the configured server"
        )


def is_file_ref(url: str) -> bool:
    """Whether a ``CvatRef.url`` names a local path (``file://...``) rather than CVAT."""
    return url.startswith("file://")


def file_ref_path(url: str, root: Path | None, root_variable: str) -> Path:
    """The resolved local path a ``file://`` URL names, refused unless it is an
    absolute local path and (when ``root`` is set) lies at or under ``root``;
    ``root_variable`` names the setting in the refusal."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise InvalidArgument(f"{url!r} is not a file:// URL")
    if parts.netloc not in ("", "localhost"):
        raise InvalidArgument(f"{url!r}: a file:// URL must name a local path (file:///...)")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise InvalidArgument(f"{url!r}: a file:// URL must hold an absolute path")
    resolved = path.resolve()
    if root is not None and not is_under(resolved, root):
        raise InvalidArgument(f"{url!r} is outside {root} ({root_variable}): move it there")
    return resolved


def is_under(path: Path, root: Path) -> bool:
    """Whether ``path`` (resolved) is ``root`` (resolved) or lies under it."""
    base = Path(root).resolve()
    return path == base or base in path.parents


def coco_document(classes: Sequence[str]) -> dict[str, Any]:
    """An empty "COCO 1.0" file as CVAT exports it, with ``classes`` as the
    categories (ids 1..K in that order)."""
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": [
            {"id": i, "name": name, "supercategory": ""} for i, name in enumerate(classes, 1)
        ],
        "images": [],
        "annotations": [],
    }


def coco_image(image_id: int, file_name: str, width: int, height: int) -> dict[str, Any]:
    """One entry of a CVAT "COCO 1.0" file's ``images``."""
    return {
        "id": image_id,
        "width": width,
        "height": height,
        "file_name": file_name,
        "license": 0,
        "flickr_url": "",
        "coco_url": "",
        "date_captured": 0,
    }
