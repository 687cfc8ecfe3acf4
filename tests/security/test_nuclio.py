"""The Nuclio-compatible port (services/inference/nuclio.py), attacked over HTTP on the
real inference service (runner, HTTP server, registry, predictor, postprocessing).

The port has no authentication (CVAT's lambda manager sends none), so it serves only
the namespaces ``PREANNOTATE_NUCLIO_NAMESPACES`` lists; another namespace's model is
answered as a missing one. Bodies and invocations in flight are capped. The backend
is a stand-in answering one fixed box (the real ones need trained fixture models);
everything between the HTTP request and the backend is the service's own code.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from preannotate.bus import MemoryBus
from preannotate.runner import Runtime
from preannotate.storage import LocalStorage
from services.inference import app as inference_app
from services.inference.service import build
from tests.inference.helpers import make_settings, publish_model
from tests.security.standin import GatedBackend, small_png

pytestmark = pytest.mark.timeout(60)

TOKENS = {"tokens": [{"name": "cvat", "token": "token-of-cvat-0123456789", "namespaces": ["*"]}]}


@pytest.fixture
async def nuclio(tmp_path: Path, monkeypatch):
    """(HTTP session on the running service's Nuclio port, the backend)."""
    source = tmp_path / "savedmodel"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"stand-in")
    storage = LocalStorage(tmp_path / "storage")
    publish_model(storage, source, namespace="default", name="shapes")
    publish_model(storage, source, namespace="team-b", name="secret-model")
    backend = GatedBackend()
    monkeypatch.setattr(inference_app, "make_backend", lambda *a, **k: backend)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump(TOKENS))
    settings = make_settings(
        tmp_path,
        tokens_file=tokens,
        metrics_port=0,
        nuclio_max_body_bytes=64 * 1024,
        nuclio_concurrency=1,
    )
    runtime = Runtime([(build(settings), settings)], bus=MemoryBus(), storage=storage)
    await runtime.start()
    url = f"http://127.0.0.1:{runtime.http_ports['inference']}"
    try:
        async with aiohttp.ClientSession(url) as http:
            yield http, backend
    finally:
        await runtime.stop()


async def invoke(http, name: str, body: Any) -> tuple[int, Any, Any]:
    headers = {"x-nuclio-function-name": name}
    data = body if isinstance(body, bytes) else None
    json_body = None if isinstance(body, bytes) else body
    async with http.post(
        "/api/function_invocations", json=json_body, data=data, headers=headers
    ) as r:
        return r.status, await r.json(), r.headers


def image_body() -> dict[str, Any]:
    return {"image": base64.b64encode(small_png()).decode(), "threshold": 0.5}


async def test_listing_shows_only_the_allowed_namespaces_models(nuclio):
    http, _ = nuclio
    async with http.get("/api/functions") as r:
        assert r.status == 200
        listed = await r.json()
    assert set(listed) == {"preannotate.default.shapes"}


async def test_another_namespaces_model_is_answered_as_a_missing_one(nuclio):
    http, backend = nuclio
    hidden, missing = "preannotate.team-b.secret-model", "preannotate.team-b.no-such-model"
    answers = []
    for name in (hidden, missing):
        async with http.get(f"/api/functions/{name}") as r:
            answers.append((r.status, (await r.json())["error"].replace(name, "NAME")))
    assert answers[0] == answers[1] and answers[0][0] == 404

    status, answer, _ = await invoke(http, hidden, image_body())
    assert status == 404 and "secret-model" not in answer["error"].replace(hidden, "")
    assert backend.calls == 0  # the model was never run


async def test_a_body_over_the_limit_is_413_and_not_run(nuclio):
    http, backend = nuclio
    big = {"image": base64.b64encode(b"\0" * 70 * 1024).decode()}
    status, answer, _ = await invoke(http, "preannotate.default.shapes", big)
    assert status == 413 and "PREANNOTATE_NUCLIO_MAX_BODY_BYTES" in answer["error"]
    assert backend.calls == 0


async def test_invocations_over_the_concurrency_limit_are_429_with_retry_after(nuclio):
    http, backend = nuclio
    backend.gate.clear()
    first = asyncio.create_task(invoke(http, "preannotate.default.shapes", image_body()))
    await asyncio.wait_for(backend.waiting.wait(), 10)
    status, answer, headers = await invoke(http, "preannotate.default.shapes", image_body())
    assert status == 429 and headers["Retry-After"] == "1"
    assert "PREANNOTATE_NUCLIO_CONCURRENCY" in answer["error"]
    backend.gate.set()
    status, items, _ = await first
    assert status == 200 and len(items) == 1


async def test_a_legitimate_invocation_answers_shapes(nuclio):
    http, backend = nuclio
    status, items, _ = await invoke(http, "preannotate.default.shapes", image_body())
    assert status == 200 and backend.calls == 1
    [item] = items
    assert item["label"] == "circle" and item["type"] == "rectangle"
    assert item["points"] == pytest.approx([15, 10, 45, 30], abs=1)


def test_the_listed_namespaces_are_served(tmp_path):
    from services.inference.nuclio import allowed_namespaces

    assert allowed_namespaces("", "default") == {"default"}
    assert allowed_namespaces(" team-a, team-b ", "default") == {"team-a", "team-b"}
    with pytest.raises(Exception, match="PREANNOTATE_NUCLIO_NAMESPACES"):
        allowed_namespaces("../etc", "default")
