"""Webhook delivery as cvat/apps/webhooks does it.

A delivery is a POST of ``json.dumps(payload)`` (what ``requests``' ``json=``
sends) with ``Content-Type: application/json``, CVAT's User-Agent and, when the
webhook has a secret, ``X-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.
A 5xx, 408 or 429 answer (or no answer: 502/504 as CVAT records them) is
retried after each of ``retry_intervals``, so a receiver can see the same
delivery more than once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from .resources import SERVER_VERSION

USER_AGENT = f"CVAT/{SERVER_VERSION} python-requests/2.32.3"

#: Seconds before each retry of a failed delivery (CVAT waits minutes; tests cannot).
DEFAULT_RETRY_INTERVALS = (0.05, 0.1, 0.2)

_RETRY_STATUSES = (408, 429)


def signature(secret: str, body: bytes) -> str:
    """The X-Signature-256 header value CVAT sends for ``body``."""
    digest = hmac.new(secret.encode("utf-8"), body, digestmod=hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass
class Webhook:
    id: int
    target_url: str
    secret: str
    events: tuple[str, ...]
    project_id: int | None
    organization: str | None
    is_active: bool = True

    def wants(self, event: str, project_id: int | None, organization: str | None) -> bool:
        """Whether this webhook is selected for an event on a resource.

        As CVAT's ``select_webhooks``: a project webhook hears its project; an
        organization webhook (no project) hears its organization; a webhook
        with neither hears everything (the stand-in's catch-all).
        """
        if not self.is_active or event not in self.events:
            return False
        if self.project_id is not None:
            return project_id == self.project_id
        if self.organization is not None:
            return organization == self.organization
        return True


@dataclass
class Delivery:
    """One attempt to deliver a payload; ``status`` 502/504 when unreachable."""

    webhook_id: int
    event: str
    payload: dict[str, Any]
    body: bytes
    headers: dict[str, str]
    status: int
    response: str
    attempt: int
    redelivery: bool = False


class Sender:
    """Delivers payloads; deliveries to one webhook go out in order, one at a
    time (as from a single RQ worker), so tests see a deterministic sequence."""

    def __init__(self, retry_intervals: tuple[float, ...] = DEFAULT_RETRY_INTERVALS) -> None:
        self.retry_intervals = retry_intervals
        self.timeout = 10.0
        self.deliveries: list[Delivery] = []
        self._queues: dict[int, asyncio.Queue[tuple[Webhook, dict[str, Any]]]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        for worker in list(self._workers):
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        self._queues.clear()
        self._outstanding = 0
        self._idle.set()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def schedule(self, webhook: Webhook, payload: dict[str, Any]) -> None:
        """Queue a delivery (with CVAT's retries) behind the webhook's earlier ones."""
        queue = self._queues.get(webhook.id)
        if queue is None:
            queue = self._queues[webhook.id] = asyncio.Queue()
            worker = asyncio.get_running_loop().create_task(self._work(queue))
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        self._outstanding += 1
        self._idle.clear()
        queue.put_nowait((webhook, payload))

    async def drain(self, timeout: float) -> None:
        """Wait until every queued delivery (with its retries) has ended."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def _work(self, queue: asyncio.Queue[tuple[Webhook, dict[str, Any]]]) -> None:
        while True:
            webhook, payload = await queue.get()
            try:
                await self._deliver_with_retries(webhook, payload)
            except Exception as exc:  # keep the queue going; the record shows what broke
                self.deliveries.append(
                    Delivery(
                        webhook_id=webhook.id,
                        event=str(payload.get("event", "")),
                        payload=payload,
                        body=b"",
                        headers={},
                        status=0,
                        response=f"{type(exc).__name__}: {exc}",
                        attempt=1,
                    )
                )
            finally:
                self._outstanding -= 1
                if self._outstanding == 0:
                    self._idle.set()

    async def _deliver_with_retries(self, webhook: Webhook, payload: dict[str, Any]) -> None:
        attempt = 1
        while True:
            delivery = await self.send(webhook, payload, attempt=attempt)
            retryable = delivery.status >= 500 or delivery.status in _RETRY_STATUSES
            if not retryable or attempt > len(self.retry_intervals):
                return
            await asyncio.sleep(self.retry_intervals[attempt - 1])
            attempt += 1

    async def send(
        self,
        webhook: Webhook,
        payload: dict[str, Any],
        *,
        attempt: int = 1,
        body: bytes | None = None,
        signature_value: str | None = None,
        redelivery: bool = False,
    ) -> Delivery:
        """One POST; ``body`` and ``signature_value`` override what CVAT would send."""
        assert self._session is not None, "the stand-in is not started"
        data = json.dumps(payload).encode("utf-8") if body is None else body
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            "Content-Type": "application/json",
        }
        if signature_value is not None:
            headers["X-Signature-256"] = signature_value
        elif webhook.secret:
            headers["X-Signature-256"] = signature(webhook.secret, data)
        try:
            async with self._session.post(
                webhook.target_url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                status, text = response.status, await response.text(errors="replace")
        except TimeoutError as exc:
            status, text = 504, str(exc) or "timed out"
        except aiohttp.ClientError as exc:
            status, text = 502, str(exc)
        delivery = Delivery(
            webhook_id=webhook.id,
            event=str(payload.get("event", "")),
            payload=payload,
            body=data,
            headers=headers,
            status=status,
            response=text,
            attempt=attempt,
            redelivery=redelivery,
        )
        self.deliveries.append(delivery)
        return delivery
