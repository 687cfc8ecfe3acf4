"""deploy/k8s: kustomize builds every overlay, and what it renders is valid and whole.

Core kinds are checked against Kubernetes' own JSON schemas (kubernetes-validate,
strict: unknown fields fail); the custom resources against strict schemas of
ours (crd_schemas.py) and against the upstream CRD models (validate_crds.mjs).
Then the parts must agree: every topic of every trainer pool has its
KafkaTopic, every pool a Deployment with its GPUs and a ScaledObject on its
topic, every Service selects a pod and names ports it has.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from preannotate import topics
from preannotate.settings import load, parse_pools
from tests.deploy.conftest import BUILD_TIMEOUT, DEPLOY, OVERLAYS, REPO, run
from tests.deploy.crd_schemas import SCHEMAS

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT)

#: Kubernetes versions the manifests must be valid for: the oldest with every
#: feature used (gRPC probes are GA in 1.27) and the newest the schemas know.
K8S_VERSIONS = ["1.29.0", "1.37.0"]
CORE_GROUPS = {
    "v1",
    "apps/v1",
    "batch/v1",
    "policy/v1",
    "autoscaling/v2",
    "networking.k8s.io/v1",
}
OUR_IMAGES = re.compile(
    r"^(?:.*/)?preannotate-(gateway|exporter|trainer|converter|inference)(?::|$)"
)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def namespace(docs: list[dict[str, Any]]) -> str:
    """The namespace the objects render in; the base's own is "preannotate"."""
    return config_and_meta(docs)["metadata"].get("namespace", "preannotate")


def config_and_meta(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return named(docs, "ConfigMap", "preannotate-config")


def config_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    return config_and_meta(docs)["data"]


def containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Deployment, container) of every container of our images."""
    out = []
    for dep in by_kind(docs, "Deployment"):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            if OUR_IMAGES.match(c["image"]) and "command" not in c:
                out.append((dep, c))
    return out


def trainer_groups(pools: list[str]) -> dict[str, str]:
    """Each pool's consumer group, from the trainer service's own spec."""
    code = (
        "import json, sys\n"
        "from services.trainer.service import build\n"
        "from services.trainer.settings import TrainerSettings\n"
        "pools = sys.argv[1:]\n"
        "out = {}\n"
        "for pool in pools:\n"
        "    s = TrainerSettings(machine_types=','.join(p + '=0' for p in pools), machine_type=pool)\n"
        "    spec = build(s)\n"
        "    out[pool] = spec.routes[0].group or 'preannotate-' + spec.name\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *pools],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, f"could not build the trainer's spec:\n{done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_are_valid(rendered, python_tools, overlay: str) -> None:
    import kubernetes_validate

    docs = [d for d in rendered[overlay] if d["apiVersion"] in CORE_GROUPS]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ConfigMap"}
    for version in K8S_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{overlay}: {doc['kind']} {doc['metadata']['name']} ({version}): {exc}"
                )


def test_kubernetes_validate_catches_a_bad_field(python_tools) -> None:
    """The check checks: a probe field misspelt, a port as text."""
    import kubernetes_validate

    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"selector": {"a": "b"}, "ports": [{"port": "80", "targetPort": 80}], "tpye": "x"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_our_schemas(rendered, overlay: str) -> None:
    custom = [d for d in rendered[overlay] if d["apiVersion"] not in CORE_GROUPS]
    monitoring = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    # The dev overlay brings its own Kafka and no Prometheus Operator objects.
    expected = (
        {"ScaledObject", "KafkaTopic", "Kafka", "KafkaNodePool"}
        if overlay == "overlays/dev"
        else {"ScaledObject", "KafkaTopic", *monitoring}
    )
    assert {d["kind"] for d in custom} == expected
    for doc in custom:
        schema = SCHEMAS[(doc["apiVersion"], doc["kind"])]
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
        assert not errors, f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {errors[0]}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_the_upstream_crds(rendered, node_root: Path, overlay: str) -> None:
    custom = [d for d in rendered[overlay] if d["apiVersion"] not in CORE_GROUPS]
    results = _validate_with_node(node_root, custom)
    assert len(results) == len(custom)
    bad = [r for r in results if r["error"]]
    assert not bad, f"{overlay}: {bad}"


def test_upstream_crd_check_catches_a_bad_type(node_root: Path) -> None:
    topic = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {"name": "t", "labels": {"strimzi.io/cluster": "c"}},
        "spec": {"partitions": "six", "replicas": 1},
    }
    scaler = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "s"},
        "spec": {"scaleTargetRef": {"name": "t"}, "triggers": [{"type": "kafka"}]},
    }
    results = _validate_with_node(node_root, [topic, scaler])
    assert "partitions" in results[0]["error"]
    assert "metadata" in results[1]["error"]


def _validate_with_node(node_root: Path, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    assert node, "checking the CRDs needs Node.js (node is not on PATH)"
    done = run(
        [node, str(Path(__file__).with_name("validate_crds.mjs")), str(node_root)],
        input=json.dumps(objects),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_topic_and_dlq_has_a_kafka_topic(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    pools = parse_pools(config_data(docs)["PREANNOTATE_MACHINE_TYPES"])
    wanted = set()
    for name in topics.all_topics(sorted(pools)):
        wanted |= {name, f"{name}.dlq"}
    made = {d["spec"]["topicName"]: d for d in by_kind(docs, "KafkaTopic")}
    assert set(made) == wanted, (
        f"{overlay}: missing {sorted(wanted - set(made))}, extra {sorted(set(made) - wanted)}"
    )
    for name, doc in made.items():
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == "preannotate"
        compacted = doc["spec"].get("config", {}).get("cleanup.policy") == "compact"
        assert compacted == (name in topics.COMPACTED), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pool_has_a_trainer_and_a_scaler(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    data = config_data(docs)
    pools = parse_pools(data["PREANNOTATE_MACHINE_TYPES"])
    assert data["PREANNOTATE_DEFAULT_MACHINE_TYPE"] in pools
    partitions = {
        d["spec"]["topicName"]: d["spec"]["partitions"] for d in by_kind(docs, "KafkaTopic")
    }
    groups = trainer_groups(sorted(pools))
    trainers = [
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].startswith("trainer-")
    ]
    assert sorted(d["metadata"]["name"] for d in trainers) == sorted(f"trainer-{p}" for p in pools)
    for pool, gpus in pools.items():
        dep = named(docs, "Deployment", f"trainer-{pool}")
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["PREANNOTATE_MACHINE_TYPE"] == pool
        limits = container["resources"].get("limits", {})
        assert int(limits.get("nvidia.com/gpu", 0)) == gpus, f"trainer-{pool}: GPU limit"
        assert "nvidia.com/gpu" not in container["resources"].get("requests", {})
        assert "replicas" not in dep["spec"], f"trainer-{pool}: KEDA owns the replica count"

        scaler = named(docs, "ScaledObject", f"trainer-{pool}")
        assert scaler["spec"]["scaleTargetRef"]["name"] == f"trainer-{pool}"
        (trigger,) = scaler["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["topic"] == topics.train_jobs(pool)
        assert meta["consumerGroup"] == groups[pool]
        host, port = data["PREANNOTATE_KAFKA_BOOTSTRAP"].rsplit(":", 1)
        assert meta["bootstrapServers"] == f"{host}.{namespace(docs)}.svc:{port}"
        assert meta["offsetResetPolicy"] == "earliest"
        assert scaler["spec"]["maxReplicaCount"] <= partitions[meta["topic"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(rendered, overlay: str) -> None:
    grpc_ports = {
        "gateway": "PREANNOTATE_GATEWAY_GRPC_PORT",
        "inference": "PREANNOTATE_INFERENCE_GRPC_PORT",
    }
    seen = set()
    for dep, c in containers(rendered[overlay]):
        component = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        seen.add(component)
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == int(config_data(rendered[overlay])["PREANNOTATE_METRICS_PORT"])
        live, ready = c["livenessProbe"], c["readinessProbe"]
        assert live["httpGet"] == {"path": "/healthz", "port": "metrics"}
        if component in grpc_ports:
            assert ready["grpc"]["port"] == int(env[grpc_ports[component]]) == ports["grpc"]
        else:
            assert ready["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert seen == {"gateway", "exporter", "trainer", "converter", "inference"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_name_their_ports(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    deployments = by_kind(docs, "Deployment")
    for svc in by_kind(docs, "Service"):
        selector = svc["spec"]["selector"]
        matches = [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)}"
        ports = {
            p["name"]
            for c in matches[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{svc['metadata']['name']}: {port['targetPort']}"
        assert svc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "preannotate"
        assert svc["metadata"]["labels"]["app.kubernetes.io/name"].startswith("preannotate-")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered, overlay: str) -> None:
    """ConfigMaps a pod reads exist (kustomize renamed generated ones); the one
    Secret made outside the repo is preannotate-secrets."""
    docs = rendered[overlay]
    configmaps = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
    for dep in by_kind(docs, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps
        for c in pod["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps
                if "secretRef" in src:
                    assert src["secretRef"]["name"] == "preannotate-secrets"
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in pod.get("volumes", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_preannotate_variable_is_a_setting(rendered, generate, overlay: str) -> None:
    known = generate.all_variables()
    docs = rendered[overlay]
    names = set(config_data(docs))
    for _dep, c in containers(docs):
        names |= {e["name"] for e in c.get("env", [])}
    for secret in by_kind(docs, "Secret"):
        names |= set(secret.get("data", {})) | set(secret.get("stringData", {}))
    unknown = sorted(n for n in names if n.startswith("PREANNOTATE_") and n not in known)
    assert not unknown, f"{overlay}: read by no settings class: {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_settings_load_from_the_manifests(
    rendered, generate, overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Each container would start: its settings class accepts the ConfigMap and its env
    (a tokens file the manifest names is mounted from the preannotate-tokens Secret;
    here an empty one stands in for it)."""
    classes = generate.settings_classes()
    docs = rendered[overlay]
    checked = set()
    for dep, c in containers(docs):
        component = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        for key in list(os.environ):
            if key.startswith("PREANNOTATE_"):
                monkeypatch.delenv(key)
        for key, value in config_data(docs).items():
            monkeypatch.setenv(key, value)
        for e in c.get("env", []):
            monkeypatch.setenv(e["name"], e["value"])
            if e["name"] == "PREANNOTATE_TOKENS_FILE":
                mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
                assert e["value"].startswith(mounts["tokens"] + "/")
                assert volumes["tokens"]["secret"]["secretName"] == "preannotate-tokens"
                stand_in = tmp_path / "tokens.yaml"
                stand_in.write_text("tokens: []\n")
                monkeypatch.setenv(e["name"], str(stand_in))
        settings = load(classes[component])
        if component in ("gateway", "inference"):
            # A gRPC service either needs tokens or is open on purpose (the dev overlay).
            assert settings.tokens_file is not None or settings.auth == "none"
        assert settings.bus == "kafka" and settings.storage == "s3"
        checked.add(component)
    assert checked == {"gateway", "exporter", "trainer", "converter", "inference"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_scraped_and_locked_down(rendered, overlay: str) -> None:
    for dep in by_kind(rendered[overlay], "Deployment"):
        template = dep["spec"]["template"]
        notes = template["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        ports = {
            p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
        }
        assert int(notes["prometheus.io/port"]) in ports
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        for c in template["spec"]["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert "limits" in c["resources"] and "requests" in c["resources"]
            gpu = c["resources"]["limits"].get("nvidia.com/gpu")
            assert gpu is None or dep["metadata"]["name"].startswith("trainer-gpu")


def test_tfserving_mirrors_the_models_the_inference_service_names(rendered) -> None:
    docs = rendered["base"]
    tfs = named(docs, "Deployment", "tfserving")["spec"]
    assert tfs["replicas"] == 1
    pod = tfs["template"]["spec"]
    serving, sync = pod["containers"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in serving["args"])
    assert "model_config_file_poll_wait_seconds" not in flags
    mounts = {m["mountPath"]: m["name"] for m in serving["volumeMounts"]}
    sync_env = {e["name"]: e["value"] for e in sync["env"]}
    sync_mounts = {m["mountPath"]: m["name"] for m in sync["volumeMounts"]}
    (inference,) = [c for d, c in containers(docs) if c["name"] == "inference"]
    env = {e["name"]: e["value"] for e in inference["env"]}
    base = env["PREANNOTATE_TFSERVING_BASE_PATH"]
    assert mounts[base] == sync_mounts[sync_env["SERVING_SYNC_DEST"]]
    assert env["PREANNOTATE_TFSERVING_ADDRESS"] == f"tfserving:{flags['port']}"
    config = mounts[str(Path(flags["model_config_file"]).parent)]
    cm = next(v for v in pod["volumes"] if v["name"] == config)["configMap"]["name"]
    files = named(docs, "ConfigMap", cm)["data"]
    assert Path(flags["model_config_file"]).name in files
    assert Path(flags["monitoring_config_file"]).name in files


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_reads_kafka_by_its_full_service_name(rendered, overlay: str) -> None:
    """KEDA's scaler runs in KEDA's namespace: a short Service name does not resolve there."""
    docs = rendered[overlay]
    scalers = by_kind(docs, "ScaledObject") + by_kind(docs, "ScaledJob")
    assert scalers
    for scaler in scalers:
        for trigger in scaler["spec"]["triggers"]:
            for server in trigger["metadata"]["bootstrapServers"].split(","):
                host = server.rsplit(":", 1)[0]
                assert host.endswith(f".{namespace(docs)}.svc"), (
                    f"{overlay}: {scaler['metadata']['name']} names {server}"
                )
    if overlay == "overlays/dev":
        assert namespace(docs) == "preannotate-dev"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_has_a_tag_or_digest(rendered, overlay: str) -> None:
    for dep in by_kind(rendered[overlay], "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            last = c["image"].rsplit("/", 1)[-1]
            assert ":" in last or "@" in last, (
                f"{overlay}: {dep['metadata']['name']}/{c['name']} runs {c['image']} untagged"
            )


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels expected: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _allowed_from(docs: list[dict[str, Any]], dep: dict[str, Any], port: int) -> list | None:
    """The peers that may reach ``port`` of the Deployment's pods under the
    NetworkPolicies; None where a rule lets any source in."""
    labels = dep["spec"]["template"]["metadata"]["labels"]
    peers: list[dict[str, Any]] = []
    for policy in by_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not _selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and port not in [p["port"] for p in ports]:
                continue
            if not rule.get("from"):
                return None
            peers.extend(rule["from"])
    return peers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_allow_the_flow(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    policies = by_kind(docs, "NetworkPolicy")
    denies = [
        p
        for p in policies
        if p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")
    ]
    deployments = by_kind(docs, "Deployment")
    for dep in deployments:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert any(_selects(p["spec"]["podSelector"], labels) for p in denies), (
            f"{overlay}: no default-deny policy selects {dep['metadata']['name']}'s pods"
        )
    dep = {d["metadata"]["name"]: d for d in deployments}
    inference_labels = dep["inference"]["spec"]["template"]["metadata"]["labels"]

    # Open to any source: the gateway's gRPC and webhook ports, nothing else.
    for d in deployments:
        for c in d["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports", []):
                anyone = _allowed_from(docs, d, p["containerPort"]) is None
                expected = d["metadata"]["name"] == "gateway" and p["name"] in ("grpc", "http")
                assert anyone == expected, f"{overlay}: {d['metadata']['name']}:{p['name']}"

    # Nuclio: CVAT's pods in CVAT's namespace only.
    nuclio = _allowed_from(docs, dep["inference"], 8070)
    assert nuclio, f"{overlay}: nobody may call the Nuclio port"
    for peer in nuclio:
        assert peer["namespaceSelector"]["matchLabels"], peer
        assert peer["podSelector"]["matchLabels"], peer
        assert "ipBlock" not in peer
    # inference gRPC: pods of this namespace.
    assert _allowed_from(docs, dep["inference"], 50052) == [{"podSelector": {}}]

    # TF Serving's gRPC only from the inference pods; its REST also from Prometheus.
    prometheus = _allowed_from(docs, dep["converter"], 9100)
    assert prometheus and all(
        p["podSelector"]["matchLabels"] and "namespaceSelector" in p for p in prometheus
    )
    from_inference = _allowed_from(docs, dep["tfserving"], 8500)
    assert from_inference
    for peer in from_inference:
        assert set(peer) == {"podSelector"} and _selects(peer["podSelector"], inference_labels)
    rest = _allowed_from(docs, dep["tfserving"], 8501)
    assert rest is not None
    assert all(p in from_inference or p in prometheus for p in rest)
    # Every pod's metrics port: Prometheus only.
    for d in deployments:
        if d["metadata"]["name"] != "tfserving":
            assert _allowed_from(docs, d, 9100) == prometheus, d["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grafana_dashboard_is_a_configmap_for_the_sidecar(rendered, overlay: str) -> None:
    """Grafana's dashboard sidecar (kube-prometheus-stack) loads ConfigMaps labelled
    grafana_dashboard: "1": the dashboard compose provisions is one, unchanged."""
    dashboards = [
        d
        for d in by_kind(rendered[overlay], "ConfigMap")
        if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) == 1, f"{overlay}: {len(dashboards)} dashboard ConfigMaps"
    (dashboard,) = dashboards
    source = DEPLOY / "grafana" / "dashboards" / "preannotate.json"
    assert dashboard["data"] == {"preannotate.json": source.read_text()}
    assert json.loads(dashboard["data"]["preannotate.json"])["uid"] == "preannotate"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_kafka_exporter_of_our_cluster_is_scraped(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    bootstrap = config_data(docs)["PREANNOTATE_KAFKA_BOOTSTRAP"].split(",")[0]
    cluster = bootstrap.split(":")[0].split(".")[0].removesuffix("-kafka-bootstrap")
    if overlay == "overlays/dev":  # no Prometheus Operator there
        assert not by_kind(docs, "PodMonitor")
        return
    (monitor,) = by_kind(docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "strimzi.io/name": f"{cluster}-kafka-exporter"
    }
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "tcp-prometheus"
