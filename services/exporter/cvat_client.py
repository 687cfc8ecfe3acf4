"""CVAT's dataset export flow: request, poll, download.

    POST /api/tasks/{id}/dataset/export?format=COCO%201.0&save_images=true  -> 202 {"rq_id"}
    GET  /api/requests/{rq_id}     until status is "finished" (result_url) or "failed"
    GET  <result_url>              with the same auth: the zip

Built on cvat-sdk 2.80's *generated* API client (``cvat_sdk.api_client``):
it brings the response models CVAT's OpenAPI schema defines (``RqId``,
``Request``) and typed HTTP errors; the auth and organisation headers are
``preannotate.cvat.cvat_headers``, sent as the client's default headers. The
high-level ``Task.export_dataset`` is not used: it polls with ``time.sleep``
and no deadline, retries nothing, fetches the whole task and the server
version first, and offers no hook for progress or cancel. This module adds
those: every blocking call runs in a thread (``asyncio.to_thread``); 5xx, 408
and 429 answers, timeouts and broken connections are retried with the shared
policy (``preannotate.cvat.with_retries``), then fail with ``Unavailable``
naming the CVAT error; 401, 403 and 404 are not retried (``InvalidArgument``,
``PermissionDenied``, ``NotFound``).
urllib3's own retries are switched off so every try is counted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

from preannotate import cvat
from preannotate.errors import Cancelled, FailedPrecondition, InvalidArgument, Unavailable

EXPORT_FORMAT = "COCO 1.0"
_CHUNK = 1 << 20
T = TypeVar("T")
StatusCallback = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class CvatConfig(cvat.CvatConnection):
    """The shared connection, plus the export flow's limits."""

    export_timeout: float = 3600.0
    poll_interval: float = 2.0
    max_archive_bytes: int = 20 << 30


class CvatExporter:
    """Exports CVAT tasks as COCO 1.0 zips, with images."""

    def __init__(self, config: CvatConfig) -> None:
        if not config.token:
            raise InvalidArgument(cvat.MISSING_TOKEN)
        self.config = config
        self._api: Any = None

    # -- the generated client -------------------------------------------------
    def _client(self) -> Any:
        if self._api is None:
            from cvat_sdk.api_client import ApiClient, Configuration

            conf = Configuration(host=self.config.url, verify_ssl=self.config.verify_tls)
            conf.retries = False  # every try is counted (and backed off) here
            api = ApiClient(conf)
            api.default_headers.update(self.config.headers())
            self._api = api
        return self._api

    def close(self) -> None:
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
            self._api = None

    # -- one call, with retries ----------------------------------------------
    def _classify(self, what: str, exc: BaseException) -> BaseException:
        """The error to raise for ``exc``, or a ``cvat.Retryable``."""
        import urllib3
        from cvat_sdk.api_client import exceptions as api_exc

        if isinstance(exc, api_exc.ApiException):
            if not isinstance(exc.status, int) or not exc.status:  # no HTTP answer at all
                return cvat.Retryable(f"{what} failed: {exc.reason or exc}")
            return cvat.http_error(exc.status, what, exc.body, self.config, exc.reason or "")
        if isinstance(exc, api_exc.OpenApiException):
            return FailedPrecondition(
                f"CVAT's answer to {what} does not match the API cvat-sdk 2.80 knows: {exc}"
            )
        if isinstance(exc, urllib3.exceptions.HTTPError | TimeoutError | ConnectionError):
            return cvat.Retryable(f"{what} failed: {type(exc).__name__}: {exc}")
        return exc

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        async def once() -> T:
            try:
                return await asyncio.to_thread(fn)
            except Exception as exc:
                error = self._classify(what, exc)
                if error is exc:
                    raise
                raise error from exc

        return await cvat.with_retries(once, self.config)

    # -- the flow -------------------------------------------------------------
    async def export_task(
        self,
        task_id: int,
        dest: Path,
        *,
        on_status: StatusCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Path:
        """Ask for, wait for and download task ``task_id``'s export into ``dest``."""
        if task_id <= 0:
            raise InvalidArgument(f"CVAT task id must be a positive number, got {task_id}")
        rq_id = await self.request_export(task_id)
        result_url = await self.wait(rq_id, task_id, on_status=on_status, cancelled=cancelled)
        if on_status is not None:
            await on_status("downloading the export from CVAT")
        return await self.download(result_url, dest)

    async def request_export(self, task_id: int) -> str:
        api = self._client()
        timeout = self.config.request_timeout

        def post() -> Any:
            rq, _ = api.tasks_api.create_dataset_export(
                EXPORT_FORMAT, task_id, save_images=True, _request_timeout=timeout
            )
            return rq

        rq = await self._call(f"POST /api/tasks/{task_id}/dataset/export", post)
        rq_id = getattr(rq, "rq_id", None)
        if not rq_id:
            raise FailedPrecondition(
                f"CVAT accepted the export of task {task_id} but sent no rq_id"
            )
        return str(rq_id)

    async def wait(
        self,
        rq_id: str,
        task_id: int,
        *,
        on_status: StatusCallback | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> str:
        """Poll the request until it ends; returns its result_url."""
        api = self._client()
        timeout = self.config.request_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.export_timeout
        last_seen = ""
        while True:
            request = await self._call(
                f"GET /api/requests/{rq_id}",
                lambda: api.requests_api.retrieve(rq_id, _request_timeout=timeout)[0],
            )
            status = str(getattr(request.status, "value", request.status))
            message = request.get("message") or ""
            if status == "finished":
                result_url = request.get("result_url")
                if not result_url:
                    raise FailedPrecondition(
                        f"CVAT finished exporting task {task_id} (request {rq_id}) but gave no "
                        "result_url: is the task's target storage a cloud storage? Export to "
                        "local storage"
                    )
                return str(result_url)
            if status == "failed":
                raise FailedPrecondition(
                    f"CVAT failed to export task {task_id} as {EXPORT_FORMAT} "
                    f"(request {rq_id}): {message or 'no message'}"
                )
            progress = request.get("progress")
            seen = f"CVAT is preparing the export: {status}" + (
                f" ({float(progress) * 100:.0f}%)" if progress is not None else ""
            )
            if on_status is not None and seen != last_seen:
                await on_status(seen)
            last_seen = seen
            if cancelled is not None and cancelled():
                raise Cancelled(f"cancelled while CVAT was exporting task {task_id}")
            if loop.time() + self.config.poll_interval > deadline:
                raise Unavailable(
                    f"CVAT did not finish exporting task {task_id} within "
                    f"{self.config.export_timeout:g} s (request {rq_id}, last status "
                    f"{status}); PREANNOTATE_CVAT_EXPORT_TIMEOUT_SECONDS"
                )
            await asyncio.sleep(self.config.poll_interval)

    def _result_url(self, result_url: str) -> str:
        url = urljoin(self.config.url + "/", result_url)
        return cvat.check_origin(url, self.config, "CVAT's result_url is")

    async def download(self, result_url: str, dest: Path) -> Path:
        """Stream the export to ``dest`` (replaced), within the size limit."""
        from cvat_sdk.core.helpers import make_request_headers

        api = self._client()
        url = self._result_url(result_url)
        timeout = (self.config.request_timeout, self.config.request_timeout)
        limit = self.config.max_archive_bytes
        dest = Path(dest)

        def fetch() -> Path:
            partial = dest.with_name(dest.name + ".partial")
            response = api.rest_client.GET(
                url,
                headers=make_request_headers(api),
                _parse_response=False,
                _request_timeout=timeout,
            )
            size = 0
            try:
                with open(partial, "wb") as out:
                    while chunk := response.read(_CHUNK, decode_content=True):
                        size += len(chunk)
                        if size > limit:
                            raise InvalidArgument(
                                f"the export is larger than the limit of {limit} bytes "
                                "(PREANNOTATE_EXPORT_MAX_ARCHIVE_BYTES)"
                            )
                        out.write(chunk)
                os.replace(partial, dest)
            finally:
                response.release_conn()
                partial.unlink(missing_ok=True)
            return dest

        return await self._call(f"GET {urlsplit(url).path}", fetch)
