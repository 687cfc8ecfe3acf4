"""deploy/compose: the real ``docker compose config`` accepts it, and it holds every part."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from preannotate.settings import load
from tests.deploy.conftest import BUILD_TIMEOUT, COMPOSE_FILE, DEPLOY, REPO, run

SERVICES = ["gateway", "exporter", "trainer", "converter", "inference"]
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT)


#: What deploy/compose/.env must set (the file has no default passwords).
REQUIRED = {
    "MINIO_ROOT_USER": "minio-admin-from-env",
    "MINIO_ROOT_PASSWORD": "minio-password-from-env",
    "GRAFANA_ADMIN_PASSWORD": "grafana-password-from-env",
    "PREANNOTATE_WEBHOOK_SECRET": "webhook-secret-from-env",
}
#: The infrastructure: published on 127.0.0.1 only.
INFRASTRUCTURE = ["kafka", "minio", "tfserving", "prometheus", "grafana"]


def compose_config(compose_bin: Path, *args: str, file: Path = COMPOSE_FILE, required: bool = True):
    # A clean environment: the file's own defaults and the required secrets must be enough.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREANNOTATE_", "COMPOSE_"))}
    for key in (*REQUIRED, "GRAFANA_ADMIN_USER"):
        env.pop(key, None)
    if required:
        env.update(REQUIRED)
    return run(
        [str(compose_bin), "-f", str(file), *args, "config", "--format", "json"],
        cwd=file.parent,
        env=env,
    )


@pytest.fixture(scope="module")
def config(compose_bin: Path) -> dict[str, Any]:
    done = compose_config(compose_bin, "--profile", "cpu")
    assert done.returncode == 0, f"docker compose config refused the file:\n{done.stderr}"
    return json.loads(done.stdout)


def test_compose_config_accepts_the_default_profile(compose_bin: Path) -> None:
    done = compose_config(compose_bin)
    assert done.returncode == 0, done.stderr
    assert not done.stderr.strip(), f"docker compose config warns: {done.stderr}"
    services = json.loads(done.stdout)["services"]
    assert "trainer" in services and "trainer-cpu" not in services


def test_compose_config_refuses_a_broken_file(compose_bin: Path, tmp_path: Path) -> None:
    """The validator validates: an unknown key and a dangling depends_on fail."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    data["services"]["gateway"]["restart_policy"] = "always"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    done = compose_config(compose_bin, file=broken)
    assert done.returncode != 0
    assert "restart_policy" in done.stderr

    data = yaml.safe_load(COMPOSE_FILE.read_text())
    data["services"]["gateway"]["depends_on"] = {"zookeeper": {"condition": "service_started"}}
    broken.write_text(yaml.safe_dump(data))
    done = compose_config(compose_bin, file=broken)
    assert done.returncode != 0
    assert "zookeeper" in done.stderr


def test_every_part_is_there(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in [
        *SERVICES,
        "trainer-cpu",
        "kafka",
        "minio",
        "minio-bucket",
        "tfserving",
        "serving-sync",
        "prometheus",
        "grafana",
    ]:
        assert name in services, f"compose has no service {name!r}"
    assert not any("zookeeper" in name for name in services)


def test_kafka_runs_in_kraft_mode(config: dict[str, Any]) -> None:
    kafka = config["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@")
    # Kafka's cluster id: 16 bytes, base64url without padding.
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    bootstrap = {s["environment"]["PREANNOTATE_KAFKA_BOOTSTRAP"] for s in _ours(config).values()}
    assert bootstrap == {"kafka:9092"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_minio_bucket_is_made_before_the_services(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["minio-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    bucket = services["minio-bucket"]["environment"]["BUCKET"]
    for name, service in _ours(config).items():
        assert service["depends_on"]["minio-bucket"]["condition"] == (
            "service_completed_successfully"
        ), name
        env = service["environment"]
        assert env["PREANNOTATE_STORAGE"] == "s3"
        assert env["PREANNOTATE_S3_BUCKET"] == bucket
        assert env["PREANNOTATE_S3_ENDPOINT"] == "http://minio:9000"


def test_trainer_asks_for_gpus(config: dict[str, Any]) -> None:
    trainer = config["services"]["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    pools = _pools(trainer["environment"])
    assert pools[trainer["environment"]["PREANNOTATE_MACHINE_TYPE"]] == devices[0]["count"]
    cpu = config["services"]["trainer-cpu"]
    assert pools[cpu["environment"]["PREANNOTATE_MACHINE_TYPE"]] == 0
    assert "deploy" not in cpu or not cpu["deploy"].get("resources")


def test_services_build_from_their_dockerfiles(config: dict[str, Any]) -> None:
    for name in SERVICES:
        build = config["services"][name]["build"]
        assert Path(build["context"]).resolve() == REPO
        assert build["dockerfile"] == f"services/{name}/Dockerfile"
        assert (REPO / build["dockerfile"]).is_file()
        assert config["services"][name]["image"].startswith(f"preannotate-{name}:")


def test_tfserving_has_a_model_config_and_prometheus(config: dict[str, Any]) -> None:
    tfs = config["services"]["tfserving"]
    assert tfs["image"].startswith("tensorflow/serving:")
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in tfs["command"])
    assert flags["port"] == "8500"
    assert "rest_api_port" in flags
    assert "model_config_file_poll_wait_seconds" not in flags
    mounts = {m["target"]: m for m in tfs["volumes"]}
    for flag in ("model_config_file", "monitoring_config_file"):
        mount = mounts[flags[flag]]
        assert mount["type"] == "bind" and Path(mount["source"]).is_file()
    inference = config["services"]["inference"]["environment"]
    assert inference["PREANNOTATE_BACKEND"] == "tfserving"
    assert inference["PREANNOTATE_TFSERVING_ADDRESS"] == f"tfserving:{flags['port']}"
    models = mounts[inference["PREANNOTATE_TFSERVING_BASE_PATH"]]
    sync = config["services"]["serving-sync"]
    sync_mounts = {m["target"]: m for m in sync["volumes"]}
    dest = sync_mounts[sync["environment"]["SERVING_SYNC_DEST"]]
    assert dest["type"] == models["type"] == "volume"
    assert dest["source"] == models["source"]


def test_bind_mounts_point_at_files_of_the_repo(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                source = Path(mount["source"])
                assert source.exists(), f"{name}: {source} does not exist"
                assert source.resolve().is_relative_to(DEPLOY)


def test_every_preannotate_variable_is_a_setting(config: dict[str, Any], generate) -> None:
    known = generate.all_variables()
    for name, service in config["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("PREANNOTATE_"):
                assert key in known, f"{name}: {key} is read by no settings class"


@pytest.mark.parametrize("name", [*SERVICES, "trainer-cpu"])
def test_service_settings_load_from_the_compose_environment(
    config: dict[str, Any],
    name: str,
    generate,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Each service would start: its settings class accepts the environment compose gives it."""
    service = name.removesuffix("-cpu")
    cls = generate.settings_classes()[service]
    for key in list(os.environ):
        if key.startswith("PREANNOTATE_"):
            monkeypatch.delenv(key)
    for key, value in config["services"][name]["environment"].items():
        monkeypatch.setenv(key, "" if value is None else str(value))
    if "PREANNOTATE_TOKENS_FILE" in os.environ:  # a container path: a local one instead
        tokens = tmp_path / "tokens.yaml"
        tokens.write_text("tokens: []\n")
        monkeypatch.setenv("PREANNOTATE_TOKENS_FILE", str(tokens))
    settings = load(cls)
    assert settings.bus == "kafka" and settings.storage == "s3"
    assert settings.bind_host == "0.0.0.0"
    assert settings.metrics_port == 9100


def test_prometheus_scrapes_every_service(config: dict[str, Any]) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped: dict[str, tuple[int, str]] = {}
    for job in prom["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                scraped[host] = (sd["port"], job.get("metrics_path", "/metrics"))
    for name, service in _ours(config).items():
        assert scraped.get(name) == (
            int(service["environment"]["PREANNOTATE_METRICS_PORT"]),
            "/metrics",
        )
    assert scraped["tfserving"] == (8501, "/monitoring/prometheus/metrics")
    assert all(j["job_name"].startswith("preannotate-") for j in prom["scrape_configs"][:6])
    assert "/etc/prometheus/alerts.yml" in prom["rule_files"]
    mounts = {m["target"]: m["source"] for m in config["services"]["prometheus"]["volumes"]}
    assert Path(mounts["/etc/prometheus/alerts.yml"]) == DEPLOY / "prometheus" / "alerts.yml"


def test_grafana_is_provisioned(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]
    mounts = {m["target"]: Path(m["source"]) for m in grafana["volumes"] if m["type"] == "bind"}
    provider = yaml.safe_load(
        (mounts["/etc/grafana/provisioning/dashboards"] / "preannotate.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == DEPLOY / "grafana" / "dashboards"
    datasource = yaml.safe_load(
        (mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "preannotate.json").read_text())
    current = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert current["current"]["value"] == datasource["uid"]


def _ours(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The preannotate services of the compose file (those built from services/)."""
    return {
        name: s
        for name, s in config["services"].items()
        if s.get("image", "").split(":")[0] in {f"preannotate-{n}" for n in SERVICES}
        and name != "serving-sync"
    }


def _pools(env: dict[str, str]) -> dict[str, int]:
    from preannotate.settings import parse_pools

    return parse_pools(env["PREANNOTATE_MACHINE_TYPES"])


# -- secure by default (docs/security.md) ---------------------------------------------


def test_compose_refuses_to_start_without_the_secrets(compose_bin: Path) -> None:
    done = compose_config(compose_bin, required=False)
    assert done.returncode != 0
    # Compose names the first missing secret it meets, and its order of services
    # is not fixed (a CI run got PREANNOTATE_WEBHOOK_SECRET, others MINIO_ROOT_*).
    named = [name for name in REQUIRED if f"set {name} in .env" in done.stderr]
    assert named, done.stderr


def test_no_default_password_is_shipped(config: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    assert "dev-secret" not in text
    for name in REQUIRED:
        assert f"${{{name}:?" in text, f"{name} must be required (${{{name}:?...}})"
    example = (COMPOSE_FILE.parent / ".env.example").read_text()
    values = dict(
        line.split("=", 1) for line in example.splitlines() if "=" in line and line[0] != "#"
    )
    assert set(REQUIRED) <= set(values)
    assert all(not values[k] for k in REQUIRED if k != "MINIO_ROOT_USER")
    services = config["services"]
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "minio-password-from-env"
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "grafana-password-from-env"
    for service in _ours(config).values():
        assert service["environment"]["PREANNOTATE_S3_SECRET_KEY"] == "minio-password-from-env"
    ignored = (COMPOSE_FILE.parent / ".gitignore").read_text().split()
    assert {".env", "tokens.yaml"} <= set(ignored)


def test_infrastructure_ports_are_bound_to_localhost(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in INFRASTRUCTURE:
        ports = services[name].get("ports", [])
        assert ports, f"{name} publishes nothing: the test would prove nothing"
        for port in ports:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} on every interface"
    assert "--web.enable-lifecycle" not in services["prometheus"]["command"]


def test_the_nuclio_port_stays_on_the_internal_network(config: dict[str, Any]) -> None:
    inference = config["services"]["inference"]
    published = {int(p["target"]) for p in inference.get("ports", [])}
    nuclio = int(inference["environment"]["PREANNOTATE_NUCLIO_PORT"])
    assert nuclio not in published
    assert str(nuclio) in {str(p) for p in inference.get("expose", [])}
    assert inference["environment"]["PREANNOTATE_NUCLIO_NAMESPACES"] == "default"
    assert config["networks"]["default"]["name"] == "preannotate"


def test_every_grpc_service_requires_tokens(config: dict[str, Any], generate) -> None:
    classes = generate.settings_classes()
    grpc = [n for n in SERVICES if "tokens_file" in classes[n].model_fields]
    assert sorted(grpc) == ["gateway", "inference"]
    for name in grpc:
        service = config["services"][name]
        env = service["environment"]
        assert env["PREANNOTATE_AUTH"] == "tokens"
        path = env["PREANNOTATE_TOKENS_FILE"]
        targets = {s["source"]: s.get("target", "") for s in service["secrets"]}
        assert path in (targets["preannotate-tokens"], "/run/secrets/preannotate-tokens")
    assert config["secrets"]["preannotate-tokens"]["file"].endswith("tokens.yaml")
