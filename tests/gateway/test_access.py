"""Bearer tokens and TLS on the gateway's gRPC server (preannotate.auth)."""

from __future__ import annotations

import datetime
import hashlib

import grpc
import pytest

from preannotate import topics
from preannotate.auth import Access, TokenTable, bearer_token
from preannotate.errors import InvalidArgument, PermissionDenied, Unauthenticated
from preannotate.v1 import common_pb2, training_pb2, training_pb2_grpc
from tests.gateway.conftest import TOKEN_A, TOKEN_ALL, TOKEN_B, statuses, write_model

pytestmark = pytest.mark.timeout(60)


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def create(namespace: str = "", task: int = 5) -> training_pb2.CreateAnnotationModelRequest:
    return training_pb2.CreateAnnotationModelRequest(
        namespace=namespace,
        cvat=common_pb2.CvatRef(task_id=task),
        model_type="ssd-mobilenet-v2-coco",
    )


@pytest.fixture
async def secured(gateway_cleanup):
    gw = await gateway_cleanup(tokens=True)
    async with gw.channel() as channel:
        gw.stub = training_pb2_grpc.TrainingServiceStub(channel)
        yield gw


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


async def test_no_token_or_an_unknown_one_is_unauthenticated(secured):
    stub = secured.stub
    code, details = await code_of(stub.ListJobs(training_pb2.ListJobsRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    code, details = await code_of(
        stub.ListJobs(training_pb2.ListJobsRequest(), metadata=auth("not-a-known-token-xyz"))
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and "not known" in details
    code, _ = await code_of(
        stub.ListJobs(training_pb2.ListJobsRequest(), metadata=(("authorization", TOKEN_A),))
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await code_of(stub.CreateAnnotationModel(create("team-a")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert await secured.published(topics.TASK_ANNOTATED, expect=0, timeout=0) == []


async def test_a_token_used_on_another_namespace_is_permission_denied(secured):
    stub = secured.stub
    code, details = await code_of(
        stub.CreateAnnotationModel(create("team-b"), metadata=auth(TOKEN_A))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'alice'" in details and "team-b" in details and "team-a" in details
    code, _ = await code_of(
        stub.ListModels(common_pb2.ListModelsRequest(namespace="team-a"), metadata=auth(TOKEN_B))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = await code_of(
        stub.ListJobs(training_pb2.ListJobsRequest(namespace="team-a"), metadata=auth(TOKEN_B))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # bob's namespace is team-b; the gateway's default namespace (team-a) is not his
    code, _ = await code_of(stub.CreateAnnotationModel(create(""), metadata=auth(TOKEN_B)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert await secured.published(topics.TASK_ANNOTATED, expect=0, timeout=0) == []
    assert statuses(secured) == []


async def test_each_caller_sees_only_its_namespaces(secured):
    stub = secured.stub
    a = await stub.CreateAnnotationModel(create("team-a"), metadata=auth(TOKEN_A))
    b = await stub.CreateAnnotationModel(create("team-b"), metadata=auth(TOKEN_B))
    [event_a, event_b] = await secured.published(topics.TASK_ANNOTATED, expect=2)
    assert (event_a.requested_by, event_b.requested_by) == ("alice", "bob")
    mine = await stub.ListJobs(training_pb2.ListJobsRequest(), metadata=auth(TOKEN_A))
    assert [j.job_id for j in mine.jobs] == [a.job_id]
    every = await stub.ListJobs(training_pb2.ListJobsRequest(), metadata=auth(TOKEN_ALL))
    assert {j.job_id for j in every.jobs} == {a.job_id, b.job_id}
    # another namespace's job is not there for alice: not found, not cancellable
    for call in (stub.GetJob, stub.CancelJob):
        code, _ = await code_of(
            call(training_pb2.GetJobRequest(job_id=b.job_id), metadata=auth(TOKEN_A))
        )
        assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await code_of(
        _drain(stub.WatchJob(training_pb2.GetJobRequest(job_id=b.job_id), metadata=auth(TOKEN_A)))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    got = await stub.GetJob(training_pb2.GetJobRequest(job_id=b.job_id), metadata=auth(TOKEN_B))
    assert got.namespace == "team-b"
    write_model(secured.storage, "team-b", "cats", 1)
    models = await stub.ListModels(
        common_pb2.ListModelsRequest(namespace="team-b"), metadata=auth(TOKEN_B)
    )
    assert [m.ref.name for m in models.models] == ["cats"]


async def _drain(stream) -> None:
    async for _ in stream:
        pass


async def test_health_stays_open_without_a_token(secured):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with secured.channel() as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_when_a_certificate_is_configured(gateway_cleanup, tmp_path):
    cert, key = _self_signed(tmp_path)
    gw = await gateway_cleanup(tokens=True, tls_cert_file=cert, tls_key_file=key)
    port = gw.runtime.grpc_ports["gateway"]
    creds = grpc.ssl_channel_credentials(cert.read_bytes())
    async with grpc.aio.secure_channel(
        f"localhost:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        reply = await stub.ListModelTypes(
            training_pb2.ListModelTypesRequest(), metadata=auth(TOKEN_A)
        )
        assert reply.model_types
    # a plaintext client gets nowhere
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        code, _ = await code_of(
            stub.ListModelTypes(
                training_pb2.ListModelTypesRequest(), metadata=auth(TOKEN_A), timeout=5
            )
        )
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# --- the tokens file and the helpers -------------------------------------------------


def test_tokens_file_entries_are_checked():
    good = {"name": "a", "token": "x" * 16, "namespaces": ["team-a"]}
    TokenTable.parse({"tokens": [good]})
    bad = [
        ({"tokens": []}, "lists no tokens"),
        ({"users": []}, "'tokens' list"),
        ({"tokens": [{**good, "extra": 1}]}, "unknown keys ['extra']"),
        ({"tokens": [{**good, "name": ""}]}, "'name'"),
        ({"tokens": [{**good, "token": "short"}]}, "16+ characters"),
        ({"tokens": [{**good, "sha256": "ab"}]}, "exactly one of"),
        ({"tokens": [{"name": "a", "sha256": "zz", "namespaces": ["x"]}]}, "64 hex digits"),
        ({"tokens": [{**good, "namespaces": []}]}, "non-empty list"),
        ({"tokens": [{**good, "namespaces": ["Team A"]}]}, "not a valid namespace"),
        ({"tokens": [good, {**good, "name": "b"}]}, "repeats an earlier token"),
    ]
    for data, says in bad:
        with pytest.raises(InvalidArgument) as info:
            TokenTable.parse(data)
        assert says in str(info.value), (data, str(info.value))


def test_a_bad_tokens_file_is_named_with_each_bad_entry(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tokens:\n"
        "  - {name: alice, token: a-long-enough-token-1, namespaces: [team-a]}\n"
        "  - {name: bob, token: short, namespaces: [team-b], role: admin}\n"
        "  - 5\n"
    )
    with pytest.raises(InvalidArgument) as info:
        TokenTable.load(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"tokens file {str(path)!r} is not valid:"
    assert lines[1:] == [
        "  tokens[1] (bob): a token must be a string of 16+ characters",
        "  tokens[1] (bob): unknown keys ['role']; allowed: name, token, sha256, namespaces, admin, cvat_projects, cvat_organizations",
        "  tokens[2]: expected a mapping, got int",
    ]


def test_the_accepted_format_is_unchanged():
    # names written as numbers are their text; keys beside 'tokens' are ignored;
    # '*' among namespaces means every namespace
    digest = hashlib.sha256(b"s3cr3t-token-value-1").hexdigest()
    table = TokenTable.parse(
        {
            "version": 1,
            "tokens": [
                {"name": 7, "token": "a-long-enough-token-1", "namespaces": ["team-a", "team-b"]},
                {"name": "ci", "sha256": digest.upper(), "namespaces": ["team-a", "*"]},
            ],
        }
    )
    first, second = table.entries
    assert (first.name, first.namespaces) == ("7", frozenset({"team-a", "team-b"}))
    assert (second.name, second.namespaces) == ("ci", None)
    assert table.lookup("s3cr3t-token-value-1") is second


def test_a_token_is_found_by_its_hash():
    token = "s3cr3t-token-value-1"
    table = TokenTable.parse(
        {
            "tokens": [
                {
                    "name": "ci",
                    "sha256": hashlib.sha256(token.encode()).hexdigest(),
                    "namespaces": ["*"],
                }
            ]
        }
    )
    entry = table.lookup(token)
    assert entry is not None and entry.name == "ci" and entry.namespaces is None
    assert table.lookup(token + "x") is None


def test_access_and_bearer_helpers():
    access = Access("alice", frozenset({"team-a"}))
    assert access.check("team-a") == "team-a"
    with pytest.raises(PermissionDenied):
        access.check("team-b")
    assert access.visible() == ["team-a"] and Access.open().visible() is None
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("Authorization", b"bearer  abc ")]) == "abc"
    for metadata in ([], [("authorization", "Basic abc")], [("authorization", "Bearer ")]):
        with pytest.raises(Unauthenticated):
            bearer_token(metadata)
