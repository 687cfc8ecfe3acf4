"""The operations HTTP app every service serves on ``metrics_port``.

``/metrics`` is prometheus-client's own aiohttp handler over the default
registry (text or OpenMetrics by the scraper's Accept header, gzip when asked);
``/healthz`` answers while the process lives; ``/readyz`` answers 200 once the
runner has started everything and 503 before that and while it shuts down;
its body carries the runner's facts too (``"auth": "none"`` when a gRPC server
of the process takes calls without a token).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler


def ops_app(
    ready: Callable[[], bool], facts: Mapping[str, object] | None = None
) -> web.Application:
    """The ops app; ``ready()`` tells whether the process takes work, ``facts`` go in /readyz."""
    extra = dict(facts or {})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_request: web.Request) -> web.Response:
        ok = ready()
        return web.json_response(
            {"status": "ready" if ok else "not ready", **extra}, status=200 if ok else 503
        )

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
