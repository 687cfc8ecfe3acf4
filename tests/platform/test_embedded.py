"""``preannotate up``: the five services in one process over the in-process bus."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from preannotate.bus import MemoryBus
from preannotate.cli.run import SERVICES
from preannotate.cli.up import embedded_settings
from preannotate.runner import Runtime
from preannotate.v1 import training_pb2, training_pb2_grpc

pytestmark = pytest.mark.timeout(120)

PORTS = {
    "gateway_grpc_port": 0,
    "gateway_http_port": 0,
    "inference_grpc_port": 0,
    "nuclio_port": 0,
    "metrics_port": 0,
}


async def test_up_serves_every_service_in_one_process(tmp_path):
    services = embedded_settings(tmp_path / "storage", **PORTS)
    assert [spec.name for spec, _ in services] == list(SERVICES)
    assert {s.bus for _, s in services} == {"memory"}
    assert {s.storage for _, s in services} == {"local"}
    inference = dict((spec.name, s) for spec, s in services)["inference"]
    assert inference.backend == "inprocess"

    runtime = Runtime(services, bus=MemoryBus())
    await runtime.start()
    try:
        routes = {w.route.topic for w in runtime.workers}
        assert {
            "task.annotated",
            "train.jobs.cpu",
            "model.trained",
            "model.converted",
            "annotation.requested",
        } <= routes
        for name in ("gateway", "inference"):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_ports[name]}") as ch:
                reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_ports['gateway']}") as ch:
            types = await training_pb2_grpc.TrainingServiceStub(ch).ListModelTypes(
                training_pb2.ListModelTypesRequest()
            )
            assert "ssd-mobilenet-v2-coco" in [t.name for t in types.model_types]
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{runtime.metrics_port}"
            async with http.get(base + "/readyz") as resp:
                assert resp.status == 200
            async with http.get(base + "/metrics") as resp:
                assert "preannotate_events_consumed_total" in await resp.text()
            nuclio = f"http://127.0.0.1:{runtime.http_ports['inference']}/api/functions"
            async with http.get(nuclio) as resp:
                assert resp.status == 200 and await resp.json() == {}
    finally:
        await runtime.stop()
    assert not runtime.ready
