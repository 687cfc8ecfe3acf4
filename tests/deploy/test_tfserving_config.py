"""TF Serving's config files parse as the protos TF Serving reads them with."""

from __future__ import annotations

import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

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
    import pytest

    with pytest.raises(text_format.ParseError):
        text_format.Parse("prometheus_config { enabled: true }", monitoring_config_class()())
