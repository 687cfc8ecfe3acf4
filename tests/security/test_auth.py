"""Starting without tokens: the distributed mode refuses, unless PREANNOTATE_AUTH=none.

The refusal is tried as an operator would meet it (``python -m services.gateway``
with the distributed settings and no tokens file) and through the runner for
both gRPC services; the explicit ``none`` starts on a real Kafka broker, says
so in the log and in /readyz. The CLI warns before it sends a token in the
clear to another machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml
from structlog.testing import capture_logs

from preannotate.bus import MemoryBus
from preannotate.grpc_client import Connection
from preannotate.runner import Runtime
from preannotate.settings import SettingsError
from preannotate.storage import LocalStorage
from preannotate.v1 import training_pb2, training_pb2_grpc
from services.gateway.service import build as build_gateway
from services.gateway.settings import GatewaySettings
from services.inference.service import build as build_inference
from tests.inference.helpers import make_settings as inference_settings

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "token-of-alice-0123456789"
TOKENS = {"tokens": [{"name": "alice", "token": TOKEN, "namespaces": ["default"]}]}
#: Nothing listens there: a service that tried to connect would fail differently.
NO_BROKER = "127.0.0.1:9"


def gateway_settings(tmp_path: Path, **values) -> GatewaySettings:
    base = {
        "bus": "kafka",
        "kafka_bootstrap": NO_BROKER,
        "gateway_grpc_port": 0,
        "gateway_http_port": 0,
        "metrics_port": 0,
        "storage_root": tmp_path / "storage",
    }
    return GatewaySettings(**{**base, **values})


def test_the_gateway_process_refuses_to_start_without_tokens(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREANNOTATE_")}
    env.update(
        PREANNOTATE_BUS="kafka",
        PREANNOTATE_KAFKA_BOOTSTRAP=NO_BROKER,
        PREANNOTATE_STORAGE_ROOT=str(tmp_path / "storage"),
        PREANNOTATE_GATEWAY_GRPC_PORT="0",
        PREANNOTATE_GATEWAY_HTTP_PORT="0",
    )
    out = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode != 0
    assert "refusing to serve gRPC without tokens" in out.stderr
    assert "PREANNOTATE_TOKENS_FILE" in out.stderr and "PREANNOTATE_AUTH=none" in out.stderr
    assert not (tmp_path / "storage").exists()  # stopped before it touched anything


def test_the_runner_refuses_both_grpc_services_without_tokens(tmp_path):
    gateway = gateway_settings(tmp_path)
    with pytest.raises(SettingsError, match="gateway: refusing to serve gRPC without tokens"):
        Runtime([(build_gateway(gateway), gateway)])
    inference = inference_settings(tmp_path, bus="kafka", kafka_bootstrap=NO_BROKER)
    with pytest.raises(SettingsError, match="inference: refusing to serve gRPC without tokens"):
        Runtime([(build_inference(inference), inference)])


def test_a_tokens_file_or_auth_none_lets_it_be_built(tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump(TOKENS))
    for values in ({"tokens_file": tokens}, {"auth": "none"}):
        settings = gateway_settings(tmp_path, **values)
        runtime = Runtime([(build_gateway(settings), settings)])
        assert runtime.open_grpc == ([] if "tokens_file" in values else ["gateway"])


async def readyz(runtime: Runtime) -> dict:
    url = f"http://127.0.0.1:{runtime.metrics_port}/readyz"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_auth_none_starts_on_kafka_warns_and_says_so_in_readyz(tmp_path, kafka_bootstrap):
    settings = gateway_settings(
        tmp_path,
        auth="none",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        kafka_partitions=1,
        session_timeout_ms=6000,
    )
    runtime = Runtime([(build_gateway(settings), settings)], storage=LocalStorage(tmp_path / "s"))
    with capture_logs() as logs:
        await runtime.start()
    try:
        warnings = [e for e in logs if e["log_level"] == "warning"]
        [open_warning] = [e for e in warnings if "gRPC calls are open" in e["event"]]
        assert open_warning["event"].startswith("PREANNOTATE_AUTH=none")
        assert open_warning["services"] == ["gateway"]
        assert await readyz(runtime) == {"status": "ready", "auth": "none"}
        # open means open: a call with no token is served
        port = runtime.grpc_ports["gateway"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = training_pb2_grpc.TrainingServiceStub(channel)
            jobs = await stub.ListJobs(training_pb2.ListJobsRequest())
        assert list(jobs.jobs) == []
    finally:
        await runtime.stop()


async def test_readyz_says_tokens_when_calls_need_them(tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump(TOKENS))
    settings = gateway_settings(tmp_path, bus="memory", tokens_file=tokens)
    runtime = Runtime(
        [(build_gateway(settings), settings)],
        bus=MemoryBus(default_partitions=1),
        storage=LocalStorage(tmp_path / "s"),
    )
    with capture_logs() as logs:
        await runtime.start()
    try:
        assert not [e for e in logs if "gRPC calls are open" in e["event"]]
        assert await readyz(runtime) == {"status": "ready", "auth": "tokens"}
        port = runtime.grpc_ports["gateway"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = training_pb2_grpc.TrainingServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListJobs(training_pb2.ListJobsRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            mine = await stub.ListJobs(
                training_pb2.ListJobsRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),)
            )
        assert list(mine.jobs) == []
    finally:
        await runtime.stop()


def test_the_embedded_mode_is_open_on_loopback_only(tmp_path, monkeypatch):
    import preannotate.cli.up as up
    from preannotate.cli.service_table import SERVICES

    monkeypatch.setattr(up, "SERVICES", {"gateway": SERVICES["gateway"]})
    monkeypatch.setenv("PREANNOTATE_BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("PREANNOTATE_AUTH", "tokens")
    [(spec, settings)] = up.embedded_settings(tmp_path / "storage")
    assert (settings.bus, settings.auth, settings.bind_host) == ("memory", "none", "127.0.0.1")
    assert Runtime([(spec, settings)], bus=MemoryBus()).open_grpc == ["gateway"]


class GatewayConnection(Connection):
    env_prefix = "PREANNOTATE_GATEWAY"
    default_address = "127.0.0.1:50051"


@pytest.mark.parametrize(
    ("address", "token", "tls", "warned"),
    [
        ("gateway.example:50051", TOKEN, False, True),
        ("10.1.2.3:50051", TOKEN, False, True),
        ("gateway.example:50051", TOKEN, True, False),
        ("gateway.example:50051", "", False, False),
        ("127.0.0.1:50051", TOKEN, False, False),
        ("localhost:50051", TOKEN, False, False),
        ("[::1]:50051", TOKEN, False, False),
    ],
)
async def test_the_cli_warns_before_sending_a_token_in_the_clear(
    address, token, tls, warned, capsys
):
    conn = GatewayConnection(address=address, token=token, tls=tls)
    channel = conn.channel()
    await channel.close()
    err = capsys.readouterr().err
    assert ("without TLS" in err) == warned
    if warned:
        assert address in err and "PREANNOTATE_GATEWAY_TLS=1" in err
        assert TOKEN not in err


def test_admin_roles_in_the_tokens_file_are_checked():
    from preannotate.auth import TokenTable
    from preannotate.errors import InvalidArgument

    spec = {"name": "dave", "token": TOKEN, "namespaces": ["team-a"], "admin": ["team-b"]}
    with pytest.raises(InvalidArgument, match=r"tokens\[0\] \(dave\): 'admin' names \['team-b'\]"):
        TokenTable.parse({"tokens": [spec]})
    [entry] = TokenTable.parse({"tokens": [{**spec, "admin": ["*"]}]}).entries
    assert entry.admin is None and entry.namespaces == frozenset({"team-a"})
