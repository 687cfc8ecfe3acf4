"""TF Serving's config files parse as the protos TF Serving reads them with."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

from tests.conftest import load_file
from tests.deploy.conftest import DEPLOY, K8S

CONFIG = K8S / "base" / "tfserving"


def monitoring_config_class():
    """tensorflow_serving/config/monitoring_config.proto, which tensorflow-serving-api
    does not ship: two messages, built here from their published definition."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="preannotate_test/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    prom = fdp.message_type.add(name="PrometheusConfig")
    prom.field.add(name="enable", number=1, type=8, label=1)  # bool
    prom.field.add(name="path", number=2, type=9, label=1)  # string
    mon = fdp.message_type.add(name="MonitoringConfig")
    mon.field.add(
        name="prometheus_config",
        number=1,
        type=11,
        label=1,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    )


def test_model_config_parses_and_lists_no_model() -> None:
    config = text_format.Parse(
        (CONFIG / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    assert config.WhichOneof("config") == "model_config_list"
    assert len(config.model_config_list.config) == 0


def test_monitoring_config_enables_prometheus_where_prometheus_scrapes() -> None:
    config = text_format.Parse(
        (CONFIG / "monitoring.config").read_text(), monitoring_config_class()()
    )
    assert config.prometheus_config.enable
    path = config.prometheus_config.path
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "preannotate-tfserving")
    assert job["metrics_path"] == path
    k8s = (K8S / "base" / "tfserving.yaml").read_text()
    assert f"prometheus.io/path: {path}" in k8s
    assert f"path: {path}" in (K8S / "base" / "monitoring.yaml").read_text()


def test_a_wrong_field_does_not_parse() -> None:
    with pytest.raises(text_format.ParseError):
        text_format.Parse("prometheus_config { enabled: true }", monitoring_config_class()())


# -- the newest N versions of each model ----------------------------------------


def _entry(namespace: str, name: str, version: int):
    from services.inference.registry import ModelEntry

    return ModelEntry(namespace=namespace, name=name, version=version, classes=("a",))


def _backend(entries, keep):
    from services.inference.backends.tfserving import TfServingBackend

    return TfServingBackend(
        "127.0.0.1:1", lambda key: f"/models/{key}", lambda: entries, keep_versions=keep
    )


def _listed(config) -> dict[str, list[int]]:
    return {
        c.name: list(c.model_version_policy.specific.versions)
        for c in config.model_config_list.config
    }


def test_tfserving_is_asked_for_the_newest_versions_only() -> None:
    from preannotate.errors import FailedPrecondition

    entries = [_entry("default", "boxes", v) for v in (1, 2, 3, 4, 5)]
    entries += [_entry("team-b", "masks", v) for v in (7, 9)]
    backend = _backend(entries, keep=3)

    assert _listed(backend.model_config()) == {
        "default.boxes": [3, 4, 5],
        "team-b.masks": [7, 9],
    }
    # A version not yet in the catalog counts as the newest: 4, 5, 6.
    assert _listed(backend.model_config(_entry("default", "boxes", 6)))["default.boxes"] == [
        4,
        5,
        6,
    ]
    # A quarantined version keeps its place among the newest (the mirror holds the same N).
    backend.quarantined[("default", "boxes", 5)] = "bad"
    assert _listed(backend.model_config())["default.boxes"] == [3, 4]

    backend.check_servable(_entry("default", "boxes", 3))
    with pytest.raises(FailedPrecondition) as caught:
        backend.check_servable(_entry("default", "boxes", 2))
    assert "newest 3" in str(caught.value) and "[3, 4, 5]" in str(caught.value)
    assert "PREANNOTATE_TFSERVING_KEEP_VERSIONS" in str(caught.value)

    every = _backend(entries, keep=None)
    assert _listed(every.model_config())["default.boxes"] == [1, 2, 3, 4, 5]


def test_the_setting_reaches_the_backend_and_the_mirror_keeps_as_many(tmp_path) -> None:
    from preannotate.storage import LocalStorage
    from services.inference.backends import make_backend
    from services.inference.settings import InferenceSettings

    settings = InferenceSettings(backend="tfserving", tfserving_keep_versions=2)
    backend = make_backend(settings, LocalStorage(tmp_path), lambda: [])
    assert backend.keep_versions == 2
    sync = load_file(CONFIG / "serving_sync.py", "serving_sync_keep_default")
    default = InferenceSettings.model_fields["tfserving_keep_versions"].default
    assert default == sync.KEEP_VERSIONS


def test_the_promoted_version_and_the_one_before_stay_loaded_however_old() -> None:
    entries = [_entry("default", "boxes", v) for v in (1, 2, 3, 4, 5)]
    pinned = {("default", "boxes", 2), ("default", "boxes", 1), ("default", "gone", 1)}
    from services.inference.backends.tfserving import TfServingBackend

    backend = TfServingBackend(
        "127.0.0.1:1",
        lambda key: f"/models/{key}",
        lambda: entries,
        keep_versions=2,
        pinned=lambda: pinned,
    )
    # three candidates refused after 2 was promoted: 2 (and 1, rollback's target) stay
    assert _listed(backend.model_config()) == {"default.boxes": [1, 2, 4, 5]}
    backend.check_servable(entries[1])
    with pytest.raises(Exception, match="older than the newest 2"):
        backend.check_servable(entries[2])
