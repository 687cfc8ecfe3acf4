"""docs/operations.md and the alert rules: generated parts current, every setting
and every alert documented, every rule well-formed."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO
from tests.deploy.promql import metric_names

OPERATIONS = REPO / "docs" / "operations.md"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_generated_parts_are_current(generate, capsys: pytest.CaptureFixture[str]) -> None:
    code = generate.main(["--check"])
    assert code == 0, f"stale: {capsys.readouterr().out} (run .venv/bin/python deploy/generate.py)"


def test_generate_check_notices_a_stale_table(generate, monkeypatch, tmp_path) -> None:
    copy = tmp_path / "operations.md"
    copy.write_text(
        OPERATIONS.read_text().replace("PREANNOTATE_KAFKA_BOOTSTRAP", "PREANNOTATE_KAFKA", 1)
    )
    monkeypatch.setattr(generate, "OPERATIONS", copy)
    assert generate.main(["--check"]) == 1
    assert generate.main([]) == 0
    assert copy.read_text() == OPERATIONS.read_text()


def test_every_setting_is_documented(generate) -> None:
    shared, per_service = generate.collect()
    assert {"gateway", "exporter", "trainer", "converter", "inference"} <= set(per_service)
    text = OPERATIONS.read_text()
    missing = []
    for s in [*shared, *(s for settings in per_service.values() for s in settings)]:
        assert f"`{s.variable}`" in text
        if not s.doc.strip():
            missing.append(s.variable)
    assert not missing, (
        f"no description for {missing}: add a `#:` comment above the field in its settings "
        "class (or an entry in deploy/generate.py NOTES)"
    )


def test_every_alert_is_well_formed_and_documented(python_tools) -> None:
    text = OPERATIONS.read_text()
    headings = set(re.findall(r"^### (\w+)$", text, flags=re.M))
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        name = rule["alert"]
        assert metric_names(rule["expr"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert f"docs/operations.md#{name.lower()}" in rule["annotations"]["description"], name
        assert name in headings, f"docs/operations.md has no section for {name}"
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
    kinds = " ".join(r["expr"] for r in rules())
    for metric in (
        "preannotate_events_dead_lettered_total",
        "preannotate_consumer_lag",
        "preannotate_jobs",
        "preannotate_trainer_gate_refusals_in_a_row",
        "up",
    ):
        assert metric in kinds, f"no alert reads {metric}"


def test_prometheus_rule_is_the_rule_file() -> None:
    rule = yaml.safe_load((DEPLOY / "k8s" / "base" / "prometheus-rule.yaml").read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def _rule(name: str) -> dict:
    (rule,) = [r for r in rules() if r["alert"] == name]
    return rule


def test_every_always_on_service_has_an_absent_alert(rendered) -> None:
    """Each Deployment that no autoscaler may take to 0 has its
    ``absent(up{job="preannotate-<component>"} == 1)`` term, labelled with its job."""
    docs = rendered["base"]
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"}
    always_on = {
        d["metadata"]["labels"]["app.kubernetes.io/name"]
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] not in scaled
    }
    assert {"preannotate-gateway", "preannotate-tfserving"} <= always_on
    expr = " ".join(_rule("PreannotateServiceAbsent")["expr"].split())
    terms = set(
        re.findall(
            r'label_replace\(absent\(up\{job="([\w-]+)"\} == 1\), "job", "([\w-]+)", "", ""\)',
            expr,
        )
    )
    assert {a for a, b in terms if a == b} == always_on, expr
    assert "{{ $labels.job }}" in _rule("PreannotateServiceAbsent")["annotations"]["summary"]


def test_training_alerts_read_the_kafka_exporter_and_the_step(python_tools) -> None:
    stalled = metric_names(_rule("PreannotateTrainingQueueStalled")["expr"])
    # The Kafka Exporter's lag counts a pool's jobs while it has no replica;
    # the trainers' own gauge stands in where no exporter runs (compose).
    assert {"kafka_consumergroup_lag", "preannotate_consumer_lag"} <= stalled
    assert " unless " in _rule("PreannotateTrainingQueueStalled")["expr"]
    stuck = _rule("PreannotateTrainingStuck")
    assert metric_names(stuck["expr"]) == {
        "preannotate_trainer_step",
        "preannotate_trainer_total_steps",
    }
    assert "changes(preannotate_trainer_step[" in stuck["expr"]
