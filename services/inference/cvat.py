"""CVAT's REST API, the part pre-annotation uses, over aiohttp.

    GET   /api/tasks/{id}/data/meta                      frames, deleted frames
    GET   /api/tasks/{id}/data?type=frame&number=N&quality=original
    GET   /api/labels?task_id=        GET /api/jobs?task_id=        (paginated)
    GET   /api/jobs/{id}/annotations
    PATCH /api/jobs/{id}/annotations?action=create|delete

Auth as the exporter does it: ``Authorization: Bearer <token>`` (personal
access token) or ``Token <key>`` (legacy), and ``X-Organization`` when an
organisation is named. 5xx, 408, 429, timeouts and broken connections are
retried with exponential backoff, then raise ``Unavailable``; 401 is a
configuration problem (``FailedPrecondition``), 403 ``PermissionDenied``, 404
``NotFound``, other 4xx ``InvalidArgument`` with CVAT's answer. The token is
only ever sent to the configured CVAT: a request naming another server is
refused, and so is a pagination link that leads elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp

from preannotate.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

_BODY_CHARS = 300
_RETRY_STATUS = frozenset({408, 429})
_PAGE_SIZE = 500
#: Most shapes sent in one PATCH.
WRITE_CHUNK = 1000


@dataclass(frozen=True)
class CvatConfig:
    url: str
    token: str
    auth_scheme: Literal["bearer", "token"] = "bearer"
    organization: str = ""
    verify_tls: bool = True
    request_timeout: float = 60.0
    retry_attempts: int = 3
    backoff: float = 1.0
    backoff_max: float = 30.0


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, f"{(parts.hostname or '').lower()}:{port}"


def check_same_server(requested: str, configured: str) -> None:
    """Refuse a CVAT URL that is not the configured one (the token must not travel)."""
    if requested and origin(requested) != origin(configured):
        raise InvalidArgument(
            f"CVAT URL {requested!r} is not this deployment's CVAT ({configured!r}); "
            "leave it empty or name the configured server"
        )


def _body_text(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text[:_BODY_CHARS] + ("..." if len(text) > _BODY_CHARS else "")


class _Retryable(Exception):
    """One failed try that a later try may fix."""


class CvatClient:
    """An aiohttp session on one CVAT server, for one organisation context."""

    def __init__(self, config: CvatConfig, session: aiohttp.ClientSession | None = None) -> None:
        if not config.token:
            raise FailedPrecondition(
                "no CVAT token is configured: set PREANNOTATE_CVAT_TOKEN to a personal access "
                "token (or a legacy API key with PREANNOTATE_CVAT_AUTH_SCHEME=token)"
            )
        self.config = config
        scheme = "Bearer" if config.auth_scheme == "bearer" else "Token"
        self.headers = {"Authorization": f"{scheme} {config.token}", "Accept": "application/json"}
        if config.organization:
            self.headers["X-Organization"] = config.organization
        self._session = session
        self._own_session = session is None
        self.requests = 0

    async def __aenter__(self) -> CvatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.request_timeout),
                connector=aiohttp.TCPConnector(
                    limit=32, ssl=None if self.config.verify_tls else False
                ),
            )
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        url = urljoin(self.config.url + "/", path.lstrip("/")) if "://" not in path else path
        if origin(url) != origin(self.config.url):
            raise FailedPrecondition(
                f"CVAT pointed at {url!r}, another server than PREANNOTATE_CVAT_URL "
                f"{self.config.url!r}; the token is not sent there"
            )
        return url

    # -- one request, with retries -------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        raw: bool = False,
    ) -> Any:
        """Send one request (retried as the module doc says); JSON or bytes back."""
        url = self.url(path)
        what = f"{method} {urlsplit(url).path}"
        attempt = 0
        while True:
            attempt += 1
            self.requests += 1
            try:
                async with self._open().request(
                    method, url, params=params, json=body, headers=self.headers
                ) as response:
                    data = await response.read()
                    if response.status < 400:
                        if raw:
                            return data
                        return json.loads(data) if data else None
                    error = self._classify(response.status, data, what)
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = _Retryable(f"{what}: {type(exc).__name__} {exc}".strip())
            except json.JSONDecodeError as exc:
                raise Unavailable(f"CVAT answered {what} with something that is not JSON") from exc
            if not isinstance(error, _Retryable):
                raise error
            if attempt >= self.config.retry_attempts:
                raise Unavailable(
                    f"CVAT at {self.config.url} failed {what} {attempt} times; last: {error}"
                )
            await asyncio.sleep(
                min(self.config.backoff * 2 ** (attempt - 1), self.config.backoff_max)
            )

    def _classify(self, status: int, body: bytes, what: str) -> Exception:
        text = _body_text(body)
        if status >= 500 or status in _RETRY_STATUS:
            return _Retryable(f"{what}: HTTP {status} {text}".strip())
        if status == 401:
            return FailedPrecondition(
                f"CVAT refused the credentials on {what} (401): check PREANNOTATE_CVAT_TOKEN "
                "and PREANNOTATE_CVAT_AUTH_SCHEME"
            )
        if status == 403:
            return PermissionDenied(f"CVAT does not allow {what} (403): {text}")
        if status == 404:
            return NotFound(f"CVAT has no {what.split(' ', 1)[1]} (404): {text}")
        return InvalidArgument(f"CVAT refused {what} ({status}): {text}")

    async def paged(self, path: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every item of a paginated list (follows ``next``)."""
        items: list[dict[str, Any]] = []
        page = await self.request("GET", path, params={**params, "page_size": _PAGE_SIZE})
        while True:
            items += page.get("results", [])
            nxt = page.get("next")
            if not nxt:
                return items
            page = await self.request("GET", nxt)

    # -- the endpoints -------------------------------------------------------------

    async def data_meta(self, task_id: int) -> dict[str, Any]:
        return await self.request("GET", f"/api/tasks/{task_id}/data/meta")

    async def labels(self, task_id: int) -> list[dict[str, Any]]:
        return await self.paged("/api/labels", {"task_id": task_id})

    async def jobs(self, task_id: int) -> list[dict[str, Any]]:
        return await self.paged("/api/jobs", {"task_id": task_id})

    async def frame(self, task_id: int, number: int, quality: str = "original") -> bytes:
        return await self.request(
            "GET",
            f"/api/tasks/{task_id}/data",
            params={"type": "frame", "number": number, "quality": quality},
            raw=True,
        )

    async def job_annotations(self, job_id: int) -> dict[str, Any]:
        return await self.request("GET", f"/api/jobs/{job_id}/annotations")

    async def patch_shapes(self, job_id: int, action: str, shapes: list[dict[str, Any]]) -> int:
        """PATCH ``shapes`` into a job (``action`` create or delete), in chunks; returns how many."""
        if action not in ("create", "delete"):
            raise ValueError(f"action must be create or delete, not {action!r}")
        for start in range(0, len(shapes), WRITE_CHUNK):
            body = {
                "version": 0,
                "tags": [],
                "shapes": shapes[start : start + WRITE_CHUNK],
                "tracks": [],
            }
            await self.request(
                "PATCH", f"/api/jobs/{job_id}/annotations", params={"action": action}, body=body
            )
        return len(shapes)


def is_frame_problem(exc: BaseException) -> bool:
    """Whether a failed frame download is that frame's problem (skip it) rather than
    the run's (credentials, permissions: fail)."""
    return isinstance(exc, NotFound | InvalidArgument | Unavailable)
