"""The gateway's settings, policy file and spec: bad files stop it at start, with the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from preannotate.auth import TokenAuthInterceptor
from preannotate.errors import InvalidArgument
from preannotate.grpc_errors import ErrorInterceptor
from preannotate.settings import SettingsError
from services.gateway import main as gateway_main
from services.gateway.service import build
from services.gateway.settings import GatewaySettings
from tests.gateway.conftest import POLICY, TOKENS, write_yaml


def settings(tmp_path, **kw) -> GatewaySettings:
    return GatewaySettings(bus="memory", machine_types="cpu=0,gpu-2=2", **kw)


def entry(**changes):
    return {**POLICY["projects"][0], **changes}


def test_defaults_and_the_spec(tmp_path):
    s = settings(tmp_path)
    assert (s.gateway_grpc_port, s.gateway_http_port) == (50051, 8090)
    spec = build(s)
    assert spec.name == "gateway" and spec.routes == []
    assert spec.grpc[0].name == "preannotate.v1.TrainingService"
    assert [type(i) for i in spec.grpc_interceptors] == [ErrorInterceptor]
    assert spec.grpc_tls is None and spec.http_routes


def test_tokens_add_the_auth_interceptor(tmp_path):
    spec = build(settings(tmp_path, tokens_file=write_yaml(tmp_path / "t.yaml", TOKENS)))
    assert [type(i) for i in spec.grpc_interceptors] == [ErrorInterceptor, TokenAuthInterceptor]


def test_tls_needs_both_files(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ValidationError, match="tls_cert_file and tls_key_file"):
        settings(tmp_path, tls_cert_file=cert)
    with pytest.raises(ValidationError, match="not a readable file"):
        settings(tmp_path, tls_cert_file=cert, tls_key_file=tmp_path / "missing.pem")
    spec = build(settings(tmp_path, tls_cert_file=cert, tls_key_file=cert))
    assert spec.grpc_tls == (str(cert), str(cert))


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        (
            {"projects": [entry(model_type="yolo")]},
            ["projects[0] (project 3)", "unknown model type"],
        ),
        ({"projects": [entry(arguments="epochs=abc")]}, ["project 3", "epochs='abc'"]),
        ({"projects": [entry(arguments="speed=3")]}, ["unknown argument 'speed'", "allowed"]),
        ({"projects": [entry(machine_type="tpu")]}, ["unknown machine type 'tpu'"]),
        ({"projects": [entry(base_model="team-b/x")]}, ["same namespace"]),
        ({"projects": [entry(namespace="Team A")]}, ["projects.0.namespace", "not allowed"]),
        ({"projects": [entry(trigger="sometimes")]}, ["projects.0.trigger"]),
        ({"projects": [entry(colour="red")]}, ["projects.0.colour", "Extra inputs"]),
        ({"projects": [entry(), entry()]}, ["project 3 is listed twice"]),
        ({"projekts": []}, ["projekts"]),
    ],
)
def test_a_bad_policy_is_refused_at_build_with_the_entry_and_key(tmp_path, policy, says):
    path = write_yaml(tmp_path / "policy.yaml", policy)
    with pytest.raises(InvalidArgument) as info:
        build(settings(tmp_path, webhook_policy_file=path))
    for fragment in says:
        assert fragment in str(info.value), str(info.value)


def test_a_policy_that_is_not_yaml(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("projects: [\n")
    with pytest.raises(InvalidArgument, match="is not YAML"):
        build(settings(tmp_path, webhook_policy_file=path))


def test_main_turns_a_bad_file_into_a_settings_error(tmp_path, monkeypatch):
    path = write_yaml(tmp_path / "policy.yaml", {"projects": [entry(model_type="yolo")]})
    monkeypatch.setenv("PREANNOTATE_BUS", "memory")
    monkeypatch.setenv("PREANNOTATE_WEBHOOK_POLICY_FILE", str(path))
    monkeypatch.setattr(gateway_main.runner, "run", lambda *a: pytest.fail("must not run"))
    with pytest.raises(SettingsError, match="unknown model type 'yolo'"):
        gateway_main.main()
    monkeypatch.setenv("PREANNOTATE_GATEWAY_GRPC_PORT", "99999")
    with pytest.raises(SettingsError, match="PREANNOTATE_GATEWAY_GRPC_PORT"):
        gateway_main.main()


async def test_open_access_is_logged_as_a_warning_at_start(gateway_cleanup):
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        await gateway_cleanup()
        await gateway_cleanup(tokens=True)
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert len([w for w in warnings if "gRPC calls are open" in w]) == 1
    assert any("PREANNOTATE_TOKENS_FILE" in w for w in warnings)


def test_a_bad_tokens_file_is_refused_at_build(tmp_path):
    path = write_yaml(tmp_path / "tokens.yaml", {"tokens": [{"name": "a", "token": "short"}]})
    with pytest.raises(InvalidArgument) as info:
        build(settings(tmp_path, tokens_file=path))
    assert str(path) in str(info.value) and "16+ characters" in str(info.value)
