"""The trainer pools on the dashboard: GPU use from the DCGM exporter (gpu
overlay), Pending trainer pods from kube-state-metrics, and the alert on them.

The panels and the alert select trainer pods by name (``pod=~"trainer-.+"``)
and by the labels the DCGM exporter puts on each GPU's series (``namespace``,
``pod``): these tests keep the rendered workloads and the ServiceMonitor
consistent with those selectors.
"""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.promql import metric_names
from tests.deploy.test_dashboard_metrics import alert_queries, dashboard_queries
from tests.deploy.test_kubernetes import by_kind

#: The pod selector the GPU panels, the Pending panel and the alert use.
TRAINER_PODS = re.compile(r"trainer-.+")
DCGM = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}


def _trainer_workloads(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(kind, name) of every Deployment and ScaledJob that runs the trainer image."""
    out = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "ScaledJob":
            pod = doc["spec"]["jobTargetRef"]["template"]["spec"]
        else:
            continue
        if any("preannotate-trainer" in c["image"] for c in pod["containers"]):
            out.append((doc["kind"], doc["metadata"]["name"]))
    return out


def test_every_trainer_pod_matches_the_panels_selector(rendered) -> None:
    """Pods are named <workload>-<suffix>: each trainer workload's name must start
    with trainer- (and no other workload's), or its pods fall out of the panels."""
    for overlay, docs in rendered.items():
        trainers = _trainer_workloads(docs)
        assert trainers, overlay
        for kind, name in trainers:
            assert TRAINER_PODS.fullmatch(f"{name}-x"), f"{overlay}: {kind} {name}"
        others = [
            d["metadata"]["name"]
            for d in docs
            if d["kind"] in ("Deployment", "StatefulSet", "ScaledJob", "Job")
            and (d["kind"], d["metadata"]["name"]) not in trainers
        ]
        assert not [n for n in others if TRAINER_PODS.fullmatch(f"{n}-x")], overlay


def test_the_gpu_overlay_scrapes_the_gpu_operators_dcgm_exporter(rendered) -> None:
    monitors = {
        m["metadata"]["name"]: m for m in by_kind(rendered["overlays/gpu"], "ServiceMonitor")
    }
    dcgm = monitors["preannotate-dcgm-exporter"]["spec"]
    assert dcgm["selector"]["matchLabels"] == {"app": "nvidia-dcgm-exporter"}
    assert dcgm["namespaceSelector"] == {"matchNames": ["gpu-operator"]}
    (endpoint,) = dcgm["endpoints"]
    assert endpoint["port"] == "gpu-metrics"
    # The exporter's pod/namespace labels name the GPU's pod: without honorLabels
    # Prometheus replaces them with the exporter's own (and the panels go blank).
    assert endpoint["honorLabels"] is True
    assert "preannotate-dcgm-exporter" not in {
        m["metadata"]["name"] for m in by_kind(rendered["base"], "ServiceMonitor")
    }


def test_gpu_and_pending_panels_select_trainer_pods(python_tools) -> None:
    seen: set[str] = set()
    for where, expr in dashboard_queries():
        names = metric_names(expr)
        external = names & (DCGM | {"kube_pod_status_phase"})
        if not external:
            continue
        seen |= external
        assert 'pod=~"trainer-.+"' in expr, f"{where}: {expr}"
        assert "by (namespace, pod)" in expr, f"{where}: {expr}"
    assert seen == DCGM | {"kube_pod_status_phase"}


def test_pending_trainer_pods_alert(python_tools) -> None:
    (expr,) = [e for w, e in alert_queries() if w == "alert PreannotateTrainerPodsPending"]
    assert metric_names(expr) == {"kube_pod_status_phase"}
    assert 'phase="Pending"' in expr and 'pod=~"trainer-.+"' in expr
