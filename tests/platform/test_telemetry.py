"""Logs carry service/job/event and never a secret; /metrics serves the counters."""

from __future__ import annotations

import io
import json

import structlog
from aiohttp.test_utils import TestClient, TestServer

from preannotate.ops import ops_app
from preannotate.telemetry import logging as tlog
from preannotate.telemetry import metrics


def lines_of(fn) -> list[dict]:
    stream = io.StringIO()
    tlog.configure("exporter", "info", "json", stream=stream)
    fn()
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def test_json_lines_carry_service_job_and_event_ids():
    def emit():
        with structlog.contextvars.bound_contextvars(job_id="job-1", event_id="e-9"):
            tlog.get_logger().info("exporting", task=12)

    (line,) = lines_of(emit)
    assert line["service"] == "exporter" and line["job_id"] == "job-1"
    assert line["event_id"] == "e-9" and line["event"] == "exporting" and line["task"] == 12
    assert line["level"] == "info" and "timestamp" in line


def test_secrets_are_redacted_by_key_and_by_value():
    def emit():
        tlog.get_logger().info(
            "calling CVAT",
            token="abcd1234secret",
            headers={"Authorization": "Bearer xyz987654321", "Accept": "json"},
            url="https://admin:hunter2@cvat.local/api",
            note="sent Token 0123456789abcdef and X-Signature-256 sha256=" + "ab" * 32,
            webhook_secret="s3cr3t",
            s3_secret_key="AKIA",
            x_signature_256="sha256=" + "cd" * 32,
            signatures={"serving_default": "images -> detections"},
        )

    (line,) = lines_of(emit)
    text = json.dumps(line)
    for secret in (
        "abcd1234secret",
        "xyz987654321",
        "hunter2",
        "0123456789abcdef",
        "s3cr3t",
        "AKIA",
        "ab" * 32,
        "cd" * 32,
    ):
        assert secret not in text, secret
    # A SavedModel's signatures are not a webhook signature.
    assert line["signatures"] == {"serving_default": "images -> detections"}
    assert line["headers"]["Accept"] == "json"
    assert line["token"] == tlog.REDACTED and "cvat.local/api" in line["url"]


async def test_the_ops_app_serves_metrics_health_and_readiness():
    metrics.EVENTS_CONSUMED.labels("exporter", "task.annotated").inc()
    metrics.EVENTS_DEAD_LETTERED.labels("exporter", "task.annotated").inc()
    metrics.HANDLER_SECONDS.labels("exporter", "task.annotated").observe(0.2)
    ready = False
    async with TestClient(TestServer(ops_app(lambda: ready))) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.text()
        for name in (
            'preannotate_events_consumed_total{service="exporter",topic="task.annotated"}',
            'preannotate_events_dead_lettered_total{service="exporter",topic="task.annotated"}',
            'preannotate_handler_seconds_bucket{le="0.25",service="exporter",topic="task.annotated"}',
        ):
            assert name in text, name
        openmetrics = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert openmetrics.content_type == "application/openmetrics-text"
        assert (await openmetrics.text()).endswith("# EOF\n")

        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        ready = True
        resp = await client.get("/readyz")
        assert resp.status == 200 and (await resp.json()) == {"status": "ready"}
