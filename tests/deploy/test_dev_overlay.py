"""deploy/k8s/overlays/dev is self-contained: with the Strimzi and KEDA operators
in the cluster, ``kubectl apply -k`` of it brings up everything the base needs
(its Kafka, MinIO and the bucket), with secrets make-secrets.sh generates into
git-ignored files, none committed.

The overlay is rendered from a copy of deploy/k8s with generated secrets
(``conftest.dev_copy``); the working tree is never written.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from preannotate.auth import TokenTable
from tests.deploy.conftest import BUILD_TIMEOUT, DEV, K8S, REPO, copy_k8s, make_dev_secrets, run
from tests.deploy.test_kubernetes import by_kind, config_data, named

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT)

GENERATED = ("secrets.env", "tokens.yaml", "token")
#: Every variable of preannotate-secrets; none may have a value in a committed file.
SECRET_KEYS = (
    "PREANNOTATE_S3_ACCESS_KEY",
    "PREANNOTATE_S3_SECRET_KEY",
    "PREANNOTATE_WEBHOOK_SECRET",
    "PREANNOTATE_CVAT_TOKEN",
    "PREANNOTATE_KAFKA_SASL_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
)


@pytest.fixture(scope="module")
def dev(rendered) -> list[dict[str, Any]]:
    return rendered[DEV]


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def test_the_kafka_cluster_is_the_one_the_base_names(dev) -> None:
    data = config_data(dev)
    host, port = data["PREANNOTATE_KAFKA_BOOTSTRAP"].rsplit(":", 1)
    (kafka,) = by_kind(dev, "Kafka")
    # Strimzi names the bootstrap Service <cluster>-kafka-bootstrap.
    assert f"{kafka['metadata']['name']}-kafka-bootstrap" == host
    listeners = {listener["port"]: listener for listener in kafka["spec"]["kafka"]["listeners"]}
    assert listeners[int(port)]["tls"] is False  # PREANNOTATE_KAFKA_SECURITY_PROTOCOL: PLAINTEXT
    assert kafka["metadata"]["annotations"] == {
        "strimzi.io/kraft": "enabled",
        "strimzi.io/node-pools": "enabled",
    }
    assert "topicOperator" in kafka["spec"]["entityOperator"]  # makes the KafkaTopics

    (pool,) = by_kind(dev, "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    assert pool["spec"]["replicas"] == 1 and pool["spec"]["storage"] == {"type": "ephemeral"}
    # One broker holds every replica: of the topics and of Kafka's own.
    brokers = pool["spec"]["replicas"]
    for topic in by_kind(dev, "KafkaTopic"):
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["replicas"] <= brokers
    config = kafka["spec"]["kafka"]["config"]
    assert int(data["PREANNOTATE_KAFKA_REPLICATION"]) <= brokers
    assert config["offsets.topic.replication.factor"] <= brokers
    assert config["transaction.state.log.replication.factor"] <= brokers
    for d in dev:
        assert d["metadata"].get("namespace", "preannotate-dev") == "preannotate-dev"


def test_minio_serves_the_endpoint_and_a_job_makes_the_bucket(dev) -> None:
    data = config_data(dev)
    endpoint = urlsplit(data["PREANNOTATE_S3_ENDPOINT"])
    service = named(dev, "Service", endpoint.hostname)
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == endpoint.port]
    minio = named(dev, "Deployment", "minio")
    pod = minio["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    # MinIO's root user is the services' key pair.
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert env["MINIO_ROOT_USER"] == {
        "name": "preannotate-secrets",
        "key": "PREANNOTATE_S3_ACCESS_KEY",
    }
    assert env["MINIO_ROOT_PASSWORD"] == {
        "name": "preannotate-secrets",
        "key": "PREANNOTATE_S3_SECRET_KEY",
    }

    job = named(dev, "Job", "minio-bucket")
    (mc,) = job["spec"]["template"]["spec"]["containers"]
    script = " ".join(mc["args"])
    assert f"http://{endpoint.hostname}:{endpoint.port}" in script
    assert '"dev/$PREANNOTATE_S3_BUCKET"' in script and "--ignore-existing" in script
    sources = {next(iter(s.values()))["name"] for s in mc["envFrom"]}
    assert sources == {"preannotate-config", "preannotate-secrets"}
    assert data["PREANNOTATE_S3_BUCKET"]
    for image in (container["image"], mc["image"]):
        last = image.rsplit("/", 1)[-1]
        assert ":" in last or "@" in last, image


def test_every_secret_a_pod_reads_is_rendered(dev) -> None:
    secrets = {d["metadata"]["name"]: d for d in by_kind(dev, "Secret")}
    pods = [
        (d["kind"], d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in dev
        if d["kind"] in ("Deployment", "Job")
    ]
    assert {name for kind, name, _ in pods if kind == "Job"} == {"minio-bucket"}
    seen = set()
    for kind, name, pod in pods:
        for vol in pod.get("volumes", []):
            if "secret" in vol:
                ref = vol["secret"]["secretName"]
                assert ref in secrets, f"{kind} {name} mounts Secret {ref}, not rendered"
                seen.add(ref)
        for c in pod["containers"] + pod.get("initContainers", []):
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    ref = src["secretRef"]["name"]
                    assert ref in secrets, f"{kind} {name} reads Secret {ref}, not rendered"
                    seen.add(ref)
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["data"], f"{kind} {name}: {ref}"
                    seen.add(ref["name"])
    assert seen == set(secrets) == {"preannotate-secrets", "preannotate-tokens"}


def test_the_secrets_are_the_generated_ones(dev, dev_copy: Path) -> None:
    import base64

    folder = dev_copy / DEV
    values = _env_file(folder / "secrets.env")
    data = named(dev, "Secret", "preannotate-secrets")["data"]
    assert {k: base64.b64decode(v).decode() for k, v in data.items()} == values
    assert len(values["PREANNOTATE_S3_SECRET_KEY"]) >= 32
    assert len({values[k] for k in values if k != "PREANNOTATE_CVAT_TOKEN"}) == 3

    # The gRPC token: the tokens file the services mount knows the CLI's token.
    tokens = base64.b64decode(named(dev, "Secret", "preannotate-tokens")["data"]["tokens.yaml"])
    token = (folder / "token").read_text().strip()
    assert token.encode() not in tokens  # only its SHA-256 is in the cluster
    assert hashlib.sha256(token.encode()).hexdigest().encode() in tokens
    mounted = folder / "mounted-tokens.yaml"
    mounted.write_bytes(tokens)
    entry = TokenTable.load(mounted).lookup(token)
    assert entry is not None and entry.name == "dev"
    # Open gRPC is not needed any more: the gateway and inference require tokens.
    for name in ("gateway", "inference"):
        (c,) = named(dev, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert "PREANNOTATE_AUTH" not in env and env["PREANNOTATE_TOKENS_FILE"]


def test_each_run_makes_new_secrets_and_keeps_existing_ones(tmp_path: Path) -> None:
    first, second = (copy_k8s(tmp_path / n) for n in ("a", "b"))
    for k8s in (first, second):
        assert make_dev_secrets(k8s).returncode == 0
    a, b = (_env_file(k / DEV / "secrets.env") for k in (first, second))
    assert a["PREANNOTATE_S3_SECRET_KEY"] != b["PREANNOTATE_S3_SECRET_KEY"]
    assert (first / DEV / "token").read_text() != (second / DEV / "token").read_text()
    assert oct((first / DEV / "secrets.env").stat().st_mode & 0o777) == "0o600"

    again = make_dev_secrets(first)  # a running MinIO keeps its keys
    assert again.returncode == 0 and "keeping" in again.stderr
    assert _env_file(first / DEV / "secrets.env") == a
    forced = make_dev_secrets(first, "--force")
    assert forced.returncode == 0
    assert _env_file(first / DEV / "secrets.env") != a


def test_without_generated_secrets_kustomize_says_which_file(
    kustomize_bin: Path, tmp_path: Path
) -> None:
    k8s = copy_k8s(tmp_path)
    done = run([str(kustomize_bin), "build", str(k8s / DEV)])
    assert done.returncode != 0
    assert "secrets.env" in done.stderr and "no such file or directory" in done.stderr


def test_no_secret_value_is_committed() -> None:
    """The overlay's files hold no secret: no literals, no Secret objects, no
    value for a secret variable; the generated files are git-ignored."""
    folder = K8S / DEV
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--cached", "--exclude-standard", str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    files = [REPO / f for f in listed]
    assert {f.name for f in files} >= {"kustomization.yaml", "kafka.yaml", "minio.yaml"}
    assigned = re.compile(rf"\b({'|'.join(SECRET_KEYS)})\s*[=:]\s*[^\s\"'$]")
    for path in files:
        assert path.name not in GENERATED, f"{path} would be committed"
        text = path.read_text()
        if path.suffix == ".sh":
            continue  # the script writes the names with generated values
        assert not assigned.search(text), f"{path}: {assigned.search(text).group(0)}"
        for doc in yaml.safe_load_all(text) if path.suffix == ".yaml" else []:
            if not doc:
                continue
            assert doc.get("kind") != "Secret", f"{path}: a Secret object"
            for gen in doc.get("secretGenerator", []):
                assert "literals" not in gen, f"{path}: secretGenerator {gen['name']} literals"
                assert set(gen.get("envs", []) + gen.get("files", [])) <= set(GENERATED)
    ignored = subprocess.run(
        ["git", "check-ignore", *(str(folder / name) for name in GENERATED)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert sorted(Path(p).name for p in ignored) == sorted(GENERATED)


def test_the_kafka_schemas_refuse_what_strimzi_v1_dropped_or_misspelt(dev) -> None:
    """Our strict schemas check: a v1beta2-era ``spec.kafka.replicas`` or a misspelt
    role fails here, where Strimzi's CRD would prune or reject it at apply time."""
    import copy

    import jsonschema

    from tests.deploy.crd_schemas import SCHEMAS

    (kafka,) = by_kind(dev, "Kafka")
    (pool,) = by_kind(dev, "KafkaNodePool")
    old = copy.deepcopy(kafka)
    old["spec"]["kafka"]["replicas"] = 1
    typo = copy.deepcopy(pool)
    typo["spec"]["roles"] = ["controler", "broker"]
    for doc in (old, typo):
        schema = SCHEMAS[(doc["apiVersion"], doc["kind"])]
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(doc)), doc["kind"]
    for doc in (kafka, pool):
        schema = SCHEMAS[(doc["apiVersion"], doc["kind"])]
        assert not list(jsonschema.Draft202012Validator(schema).iter_errors(doc))


def test_committed_offsets_outlive_every_record_they_point_past(dev) -> None:
    """A trainer pool scaled to 0 is an empty consumer group; Kafka drops an empty
    group's offsets after ``offsets.retention.minutes`` (7 days by default, the
    topics' own retention). Were they dropped while its records were still kept,
    KEDA (``offsetResetPolicy: earliest``) would count every kept record as lag and
    wake every GPU of the pool for records already handled."""
    (kafka,) = by_kind(dev, "Kafka")
    kept_ms = int(kafka["spec"]["kafka"]["config"]["offsets.retention.minutes"]) * 60_000
    timed = 0
    for topic in by_kind(dev, "KafkaTopic"):
        config = topic["spec"].get("config", {})
        if "compact" in str(config.get("cleanup.policy", "")):
            continue  # job.status: the newest record of each key is kept, not the oldest
        assert 0 < int(config["retention.ms"]) < kept_ms, topic["metadata"]["name"]
        timed += 1
    assert timed >= 6
