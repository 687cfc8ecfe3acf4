"""``CvatClient``: CVAT's REST API over aiohttp, every endpoint preannotate uses.

    POST  /api/tasks/{id}/dataset/export?format=...&save_images=true   (``export``)
    GET   /api/requests/{rq_id}                          an export's progress
    GET   <result_url>                                   streamed to a file (``download``)
    GET   /api/tasks/{id}                                the task (``size``, ``jobs.count``)
    GET   /api/requests?action=create&task_id=           its data being processed
    GET   /api/tasks/{id}/status                         the same, on CVAT before /api/requests
    GET   /api/tasks/{id}/data/meta                      frames, deleted frames
    GET   /api/tasks/{id}/data?type=frame&number=N&quality=original
    GET   /api/labels?task_id=        GET /api/jobs?task_id=        (paginated)
    GET   /api/jobs/{id}/annotations
    PATCH /api/jobs/{id}/annotations?action=create|delete           (in chunks)
    GET   /api/issues?job_id=       POST /api/issues      review issues on a frame

Every request carries ``preannotate.cvat.settings``' headers and goes through
the one error mapping and retry policy (``preannotate.cvat.errors``). The token
is only ever sent to the configured CVAT: a request naming another server is
refused (``connect``), and so is a link CVAT gives that leads elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from preannotate.cvat.errors import Retryable, http_error, with_retries
from preannotate.cvat.refs import check_origin, check_same_server
from preannotate.cvat.settings import MISSING_TOKEN, CvatConnection, CvatSettings
from preannotate.errors import FailedPrecondition, InvalidArgument, Unavailable
from preannotate.v1 import common_pb2

_PAGE_SIZE = 500
#: Most shapes sent in one PATCH.
WRITE_CHUNK = 1000
#: Bytes of a download gathered before one write to disk.
DOWNLOAD_CHUNK = 1 << 20


class CvatClient:
    """An aiohttp session on one CVAT server, for one organisation context."""

    def __init__(
        self, config: CvatConnection, session: aiohttp.ClientSession | None = None
    ) -> None:
        if not config.token:
            raise FailedPrecondition(MISSING_TOKEN)
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

    def url(self, path: str, what: str = "CVAT pointed at") -> str:
        """The absolute URL of ``path`` (or of a link CVAT gave), on the configured CVAT only."""
        url = urljoin(self.config.url + "/", path.lstrip("/")) if "://" not in path else path
        return check_origin(url, self.config, what)

    def _refusal(self, response: aiohttp.ClientResponse, what: str, body: bytes) -> Exception:
        return http_error(response.status, what, body, self.config, response.reason or "")

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
        """Send one request (retried as ``preannotate.cvat.errors`` says); JSON or bytes back."""
        url = self.url(path)
        what = f"{method} {urlsplit(url).path}"

        async def once() -> Any:
            try:
                async with self._open().request(
                    method, url, params=params, json=body, headers=self.headers
                ) as response:
                    data = await response.read()
                    if response.status >= 400:
                        raise self._refusal(response, what, data)
                    if raw:
                        return data
                    return json.loads(data) if data else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _broken(what, exc) from exc
            except json.JSONDecodeError as exc:
                raise Unavailable(f"CVAT answered {what} with something that is not JSON") from exc

        return await with_retries(once, self.config)

    async def download(
        self, path: str, dest: Path, *, max_bytes: int, limit_variable: str = ""
    ) -> Path:
        """Stream ``path`` (a URL CVAT gave, on the configured CVAT) into ``dest``
        (replaced only once the whole answer is in), refused past ``max_bytes``
        (``limit_variable`` names the setting). Each try starts over; the time
        limit applies to connecting and to each read, not to the whole download."""
        url = self.url(path, "CVAT's result_url is")
        what = f"GET {urlsplit(url).path}"
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".partial")
        limit = self.config.request_timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=limit, sock_read=limit)

        async def once() -> Path:
            try:
                async with self._open().get(url, headers=self.headers, timeout=timeout) as response:
                    if response.status >= 400:
                        raise self._refusal(response, what, await response.read())
                    size, pending = 0, bytearray()
                    with open(partial, "wb") as out:
                        async for chunk in response.content.iter_any():
                            size += len(chunk)
                            if size > max_bytes:
                                raise InvalidArgument(
                                    f"{what}: the answer is larger than the limit of "
                                    f"{max_bytes} bytes"
                                    + (f" ({limit_variable})" if limit_variable else "")
                                )
                            pending += chunk
                            if len(pending) >= DOWNLOAD_CHUNK:  # the disk, off the loop
                                block, pending = pending, bytearray()
                                await asyncio.to_thread(out.write, block)
                        await asyncio.to_thread(out.write, pending)
                os.replace(partial, dest)
                return dest
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _broken(what, exc) from exc
            finally:
                partial.unlink(missing_ok=True)

        return await with_retries(once, self.config)

    async def paged(self, path: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every item of a paginated list (follows ``next``, on the configured CVAT only)."""
        items: list[dict[str, Any]] = []
        page = await self.request("GET", path, params={**params, "page_size": _PAGE_SIZE})
        while True:
            items += page.get("results", [])
            nxt = page.get("next")
            if not nxt:
                return items
            page = await self.request("GET", nxt)

    # -- the endpoints -------------------------------------------------------------

    async def start_export(self, task_id: int, fmt: str, *, save_images: bool = True) -> Any:
        """Ask CVAT to export task ``task_id`` as ``fmt``; its answer (``{"rq_id"}``)."""
        return await self.request(
            "POST",
            f"/api/tasks/{task_id}/dataset/export",
            params={"format": fmt, "save_images": "true" if save_images else "false"},
        )

    async def background_request(self, rq_id: str) -> Any:
        """A background request's state (``status``, ``progress``, ``result_url``...)."""
        return await self.request("GET", f"/api/requests/{rq_id}")

    async def task(self, task_id: int) -> dict[str, Any]:
        return await self.request("GET", f"/api/tasks/{task_id}")

    async def data_requests(self, task_id: int) -> list[dict[str, Any]]:
        """The background requests processing the task's data (newest first); CVAT
        versions without the requests API answer 404 (``NotFound``)."""
        return await self.paged("/api/requests", {"action": "create", "task_id": task_id})

    async def legacy_task_status(self, task_id: int) -> dict[str, Any]:
        """The deprecated ``/status``: ``{"state": Queued|Started|Finished|Failed, "message"}``."""
        return await self.request("GET", f"/api/tasks/{task_id}/status")

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

    async def issues(self, job_id: int) -> list[dict[str, Any]]:
        """The job's review issues (``frame``, ``position``, ``resolved``...)."""
        return await self.paged("/api/issues", {"job_id": job_id})

    async def create_issue(self, body: dict[str, Any]) -> dict[str, Any]:
        """Open a review issue: ``{"job", "frame", "position", "message"}``."""
        return await self.request("POST", "/api/issues", body=body)


def _broken(what: str, exc: BaseException) -> Retryable:
    """A try that got no answer (a timeout, a broken connection); the message
    starts with what a person should read first ("CVAT unreachable (connection
    refused)")."""
    return Retryable(f"{_why(exc)}: {what} failed: {type(exc).__name__} {exc}".strip())


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return "CVAT did not answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, ConnectionRefusedError):
            return "CVAT unreachable (connection refused)"
        if isinstance(cause, socket.gaierror):
            return "CVAT unreachable (host name not found)"
        return f"CVAT unreachable ({cause.strerror or type(cause).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "CVAT closed the connection"
    return "the connection to CVAT broke"


def connect(settings: CvatSettings, ref: common_pb2.CvatRef) -> CvatClient:
    """A client on the configured CVAT, in the organisation ``ref`` names (or the
    configured one); a ``ref`` naming another server is refused."""
    check_same_server(ref.url, settings.cvat_url)
    return CvatClient(CvatConnection.from_settings(settings, ref.organization))
