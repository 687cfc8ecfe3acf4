"""Every metric the Grafana dashboard and the alert rules query is one a service exports.

The exported metrics are read from prometheus_client's REGISTRY after importing
``preannotate.telemetry.metrics`` and every ``services/<name>/metrics.py``, in a
fresh interpreter (so that no other test's metrics count, and so that we can
see that none of these modules imports TensorFlow). Metrics of other
exporters (TF Serving, Prometheus' ``up``, Strimzi's Kafka Exporter, NVIDIA's
DCGM exporter, kube-state-metrics) are accepted by an explicit list, ``EXTERNAL``,
each with its source.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO
from tests.deploy.promql import exported_name, metric_names, variable_query_names

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "preannotate.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

#: Metrics that come from outside preannotate's code, by who exports them.
EXTERNAL = {
    # TF Serving, with --monitoring_config_file (its names, "/" made ":").
    ":tensorflow:serving:request_count": "counter",
    ":tensorflow:serving:request_latency": "histogram",
    ":tensorflow:serving:runtime_latency": "histogram",
    # Prometheus itself, per scrape target.
    "up": "gauge",
    # Strimzi's Kafka Exporter (the Kafka resource's spec.kafkaExporter), per
    # consumergroup, topic and partition.
    "kafka_consumergroup_lag": "gauge",
    # NVIDIA's dcgm-exporter (the GPU Operator's; deploy/k8s/overlays/gpu/
    # dcgm-exporter.yaml scrapes it), per GPU, with the namespace, pod and
    # container the GPU is assigned to: utilisation in %, frame buffer in MiB.
    "DCGM_FI_DEV_GPU_UTIL": "gauge",
    "DCGM_FI_DEV_FB_USED": "gauge",
    "DCGM_FI_DEV_FB_FREE": "gauge",
    # kube-state-metrics (kube-prometheus-stack's), per namespace, pod, phase.
    "kube_pod_status_phase": "gauge",
}

_REGISTRY_SCRIPT = """
import importlib, json, sys
from pathlib import Path
from prometheus_client import REGISTRY
modules = ["preannotate.telemetry.metrics"]
modules += [f"services.{p.parent.name}.metrics" for p in sorted(Path("services").glob("*/metrics.py"))]
for name in modules:
    importlib.import_module(name)
families = {}
for family in REGISTRY.collect():
    suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
    families[family.name + suffix] = family.type
print(json.dumps({
    "modules": modules,
    "families": families,
    "tensorflow": sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")),
}))
"""


@pytest.fixture(scope="module")
def exported() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _REGISTRY_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"importing the metrics modules failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target of the dashboard, rows included."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((f"panel {panel['title']!r}", target["expr"]))
            visit(panel.get("panels", []))

    visit(dashboard["panels"])
    return out


def dashboard_variable_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']!r}", query))
    return out


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(f"alert {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


def test_metrics_modules_do_not_import_tensorflow(exported: dict[str, Any]) -> None:
    assert "preannotate.telemetry.metrics" in exported["modules"]
    assert not exported["tensorflow"], (
        f"importing {exported['modules']} imported TensorFlow ({exported['tensorflow'][:3]}): "
        "a metrics module must stay light"
    )


def test_every_dashboard_metric_is_exported(python_tools, exported: dict[str, Any]) -> None:
    families = {**exported["families"], **EXTERNAL}
    queries = dashboard_queries()
    assert len(queries) >= 10
    used = set()
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: {expr!r} reads no metric"
        for name in names:
            assert exported_name(name, families), (
                f"{where} queries {name!r}, which no service exports "
                f"(exported: {sorted(exported['families'])})"
            )
            used.add(exported_name(name, families))
    for where, query in dashboard_variable_queries():
        for name in variable_query_names(query):
            assert exported_name(name, families), f"{where} reads {name!r}, which nobody exports"


def test_every_alert_metric_is_exported(python_tools, exported: dict[str, Any]) -> None:
    families = {**exported["families"], **EXTERNAL}
    for where, expr in alert_queries():
        for name in metric_names(expr):
            assert exported_name(name, families), f"{where} reads {name!r}, which nobody exports"


def test_the_dashboard_has_the_panels_operations_needs(python_tools, exported) -> None:
    """Jobs by state, training loss and images/s, lag and DLQ per topic, inference
    frames/s and latency, TF Serving's request rate, models' mAP, promotions and
    corrections."""
    used: dict[str, str] = {}
    for _where, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, expr)
    for name in [
        "preannotate_jobs",
        "preannotate_trainer_loss",
        "preannotate_trainer_images_per_second",
        "preannotate_consumer_lag",
        "preannotate_events_dead_lettered_total",
        ":tensorflow:serving:request_count",
        "kafka_consumergroup_lag",
        "preannotate_trainer_step",
        "preannotate_trainer_queue_wait_seconds_bucket",
        "kube_pod_status_phase",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
    ]:
        assert name in used, f"no panel shows {name}"
    assert "by (state)" in used["preannotate_jobs"].replace("  ", " ")
    assert "job_id" in used["preannotate_trainer_loss"]
    assert "topic" in used["preannotate_consumer_lag"]
    assert "topic" in used["preannotate_events_dead_lettered_total"]
    assert "machine_type" in used["preannotate_trainer_queue_wait_seconds_bucket"]
    # Per trainer pod: the pods the DCGM exporter assigns GPUs to, the Pending ones.
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "kube_pod_status_phase"):
        assert "by (namespace, pod)" in used[name] and 'pod=~"trainer-.+"' in used[name], name
    assert 'phase="Pending"' in used["kube_pod_status_phase"]
    # Models: mAP of every version over time, which is promoted, decisions, corrections.
    for name in [
        "preannotate_trainer_gate_candidate_map",
        "preannotate_trainer_gate_candidate_version",
        "preannotate_trainer_gate_promoted_map",
        "preannotate_trainer_gate_promoted_version",
        "preannotate_trainer_promotion_decisions_total",
        "preannotate_gateway_promotions_total",
        "preannotate_gateway_promoted_version",
        "preannotate_gateway_corrections_per_100_objects",
        "preannotate_gateway_corrections_version",
        "preannotate_gateway_corrections_total",
    ]:
        assert name in used, f"no panel shows {name}"
        assert (
            "by (namespace, model" in used[name]
            or "by (decision)" in used[name]
            or ("by (action)" in used[name])
        ), f"{name}: {used[name]}"
    inference = {n for n in exported["families"] if n.startswith("preannotate_inference_")}
    assert inference, "services/inference/metrics.py exports no preannotate_inference_* metric"
    shown = {exported_name(n, exported["families"]) for n in used} & inference
    assert len(shown) >= 2, f"inference panels show {shown}; exported {sorted(inference)}"


def test_promql_reader_finds_names_and_refuses_nonsense(python_tools) -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{x=~"$job_id"}[$__rate_interval])))'
        ' / on() group_left b_total offset 5m + {__name__="c"}'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(x[5m])")
    families = {"a_seconds": "histogram", "b_total": "counter"}
    assert exported_name("a_seconds_bucket", families) == "a_seconds"
    assert exported_name("b_total_count", families) is None


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "preannotate"
    ids = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            ids.append(panel["id"])
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
                assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
            visit(panel.get("panels", []))

    visit(dashboard["panels"])
    assert len(ids) == len(set(ids))
    assert Path(DASHBOARD).read_text().endswith("\n")
