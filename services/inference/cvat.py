"""CVAT's REST API, the part pre-annotation uses, over aiohttp.

    GET   /api/tasks/{id}/data/meta                      frames, deleted frames
    GET   /api/tasks/{id}/data?type=frame&number=N&quality=original
    GET   /api/labels?task_id=        GET /api/jobs?task_id=        (paginated)
    GET   /api/jobs/{id}/annotations
    PATCH /api/jobs/{id}/annotations?action=create|delete

Auth, organisation, errors and retries are the shared ones
(``preannotate.cvat``): ``Authorization: Bearer <token>`` (personal access
token) or ``Token <key>`` (legacy), ``X-Organization`` when an organisation is
named; 5xx, 408, 429, timeouts and broken connections are retried with
exponential backoff, then raise ``Unavailable``; 403 is ``PermissionDenied``,
404 ``NotFound``, other 4xx ``InvalidArgument`` with CVAT's answer. One
difference: 401 is ``FailedPrecondition`` here, so that a refused token fails
an annotation run instead of looking like one frame's problem. The token is
only ever sent to the configured CVAT: a request naming another server is
refused, and so is a pagination link that leads elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from preannotate import cvat as shared
from preannotate.errors import FailedPrecondition, Unavailable

_PAGE_SIZE = 500
#: Most shapes sent in one PATCH.
WRITE_CHUNK = 1000


class CvatClient:
    """An aiohttp session on one CVAT server, for one organisation context."""

    def __init__(
        self, config: shared.CvatConnection, session: aiohttp.ClientSession | None = None
    ) -> None:
        if not config.token:
            raise FailedPrecondition(shared.MISSING_TOKEN)
        self.config = config
        self.headers = {**config.headers(), "Accept": "application/json"}
        self._session = session
        self._own_session = session is None

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
        return shared.check_origin(url, self.config)

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

        async def once() -> Any:
            try:
                async with self._open().request(
                    method, url, params=params, json=body, headers=self.headers
                ) as response:
                    data = await response.read()
                    if response.status < 400:
                        if raw:
                            return data
                        return json.loads(data) if data else None
                    reason = response.reason or ""
                    error = shared.http_error(response.status, what, data, self.config, reason)
                    if response.status == 401:  # the deployment's problem: fail, never skip
                        error = FailedPrecondition(str(error))
                    raise error
            except (aiohttp.ClientError, TimeoutError) as exc:
                failed = f"{what} failed: {type(exc).__name__} {exc}".strip()
                raise shared.Retryable(failed) from exc
            except json.JSONDecodeError as exc:
                raise Unavailable(f"CVAT answered {what} with something that is not JSON") from exc

        return await shared.with_retries(once, self.config)

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
