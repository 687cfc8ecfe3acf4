"""deploy/k8s/components/trainer-jobs: the gpu-1 pool as one Kubernetes Job per training.

The component is opt-in (docs/operations.md, "Trainer pools as Jobs"), so no
shipped overlay uses it: an overlay like a user's, in a temporary folder,
renders it over the base with another namespace. Its pods run
``preannotate run trainer --once`` (tests/platform/test_run_once.py runs that
command on the real broker).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from preannotate import topics
from preannotate.settings import parse_pools
from tests.deploy.conftest import BUILD_TIMEOUT, K8S, run
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.test_kubernetes import (
    _validate_with_node,
    by_kind,
    config_data,
    named,
    trainer_groups,
)
from tests.deploy.test_volumes import check_kubernetes_mounts

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT)

POOL = "gpu-1"
NAMESPACE = "team-x"
#: Seconds a stopping training may take to finish its step, checkpoint and upload.
CHECKPOINT_GRACE = 600

OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {namespace}
resources:
  - {base}
components:
  - {component}
replacements:
  - source:
      kind: ConfigMap
      name: preannotate-config
      fieldPath: metadata.namespace
    targets:
      - select:
          kind: ScaledObject
        fieldPaths: [spec.triggers.0.metadata.bootstrapServers]
        options: {{delimiter: ".", index: 1}}
      - select:
          kind: ScaledJob
        fieldPaths: [spec.triggers.0.metadata.bootstrapServers]
        options: {{delimiter: ".", index: 1}}
"""


@pytest.fixture(scope="module")
def docs(kustomize_bin: Path, tmp_path_factory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("overlay")
    (folder / "kustomization.yaml").write_text(
        OVERLAY.format(
            namespace=NAMESPACE,
            # kustomize takes relative paths only.
            base=os.path.relpath(K8S / "base", folder),
            component=os.path.relpath(K8S / "components" / "trainer-jobs", folder),
        )
    )
    done = run([str(kustomize_bin), "build", str(folder)])
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return named(docs, "ScaledJob", f"trainer-{POOL}")


def test_the_pool_is_a_scaled_job_on_its_topic(docs) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", f"trainer-{POOL}") not in names
    assert ("ScaledObject", f"trainer-{POOL}") not in names
    assert ("Deployment", "trainer-cpu") in names  # the other pools stay as they are

    job = _job(docs)
    spec = job["spec"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    data = config_data(docs)
    pools = parse_pools(data["PREANNOTATE_MACHINE_TYPES"])
    assert meta["topic"] == topics.train_jobs(POOL)
    assert meta["consumerGroup"] == trainer_groups(sorted(pools))[POOL]
    host, port = data["PREANNOTATE_KAFKA_BOOTSTRAP"].rsplit(":", 1)
    assert meta["bootstrapServers"] == f"{host}.{NAMESPACE}.svc:{port}"
    partitions = {
        d["spec"]["topicName"]: d["spec"]["partitions"] for d in by_kind(docs, "KafkaTopic")
    }
    assert spec["maxReplicaCount"] <= partitions[meta["topic"]]
    # The lag counts running jobs (their offset is committed when they end):
    # the default strategy subtracts the running Jobs from it.
    assert spec["scalingStrategy"]["strategy"] == "default"
    assert meta["lagThreshold"] == "1"

    target = spec["jobTargetRef"]
    assert target["backoffLimit"] == 0 and target["parallelism"] == target["completions"] == 1
    pod = target["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"].endswith(":dev")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PREANNOTATE_MACHINE_TYPE"] == POOL
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == pools[POOL]


def test_each_job_trains_once_then_exits(docs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container runs ``preannotate run trainer --once`` (the image's command, one
    record), and gives up after a while when another Job took the record."""
    from preannotate.cli import run as run_command
    from preannotate.cli.main import main
    from preannotate.cli.service_table import ServiceEntry
    from preannotate.settings import load
    from services.trainer.settings import TrainerSettings

    (container,) = _job(docs)["spec"]["jobTargetRef"]["template"]["spec"]["containers"]
    program, *argv = container["command"]
    assert program == "preannotate" and argv[:2] == ["run", "trainer"]

    # The settings the pod starts with: the ConfigMap, its env, and what the command
    # sets (the CLI as the image runs it, with the trainer's main stood in for).
    for key in list(os.environ):
        if key.startswith("PREANNOTATE_"):
            monkeypatch.delenv(key)
    env = {**config_data(docs), **{e["name"]: e["value"] for e in container["env"]}}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # run sets it in os.environ; monkeypatch puts the test's environment back.
    monkeypatch.setenv("PREANNOTATE_MAX_RECORDS", "0")
    started = []
    stand_in = ServiceEntry("trainer", lambda: _Parts(started))
    monkeypatch.setitem(run_command.TABLE, "trainer", stand_in)
    assert main(argv) == 0 and started == ["trainer"]
    settings = load(TrainerSettings)
    assert settings.max_records == 1
    assert settings.machine_type == POOL
    # Long enough for KEDA to see the lag go (pollingInterval), short next to a training.
    wait = settings.max_records_wait_seconds
    assert _job(docs)["spec"]["pollingInterval"] * 2 <= wait <= 900


class _Parts:
    """Stands in for the trainer's parts: ``main`` only says it ran (no broker here)."""

    def __init__(self, started: list[str]) -> None:
        self.started = started

    def main(self) -> None:
        self.started.append("trainer")


def test_a_running_training_is_not_disrupted_and_may_checkpoint(docs) -> None:
    template = _job(docs)["spec"]["jobTargetRef"]["template"]
    notes = template["metadata"]["annotations"]
    assert notes["karpenter.sh/do-not-disrupt"] == "true"
    assert notes["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    pod = template["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    grace = float(env["PREANNOTATE_SHUTDOWN_GRACE_SECONDS"])
    assert CHECKPOINT_GRACE <= grace < pod["terminationGracePeriodSeconds"]

    labels = template["metadata"]["labels"]
    (budget,) = by_kind(docs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 0
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    for dep in by_kind(docs, "Deployment"):  # it holds the training pods only
        assert not selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    # Scraped by the pool's Service, and under the NetworkPolicies like every pod.
    service = named(docs, "Service", f"trainer-{POOL}")
    assert service["spec"]["selector"].items() <= labels.items()
    assert labels["app.kubernetes.io/part-of"] == "preannotate"


def test_the_job_runs_the_deployments_container(rendered, docs) -> None:
    """Only what a Job needs differently: no readiness probe (nothing routes to
    it), the longer shutdown grace."""
    dep = named(rendered["base"], "Deployment", f"trainer-{POOL}")["spec"]["template"]["spec"]
    pod = _job(docs)["spec"]["jobTargetRef"]["template"]["spec"]
    (want,) = dep["containers"]
    (got,) = pod["containers"]
    drop = {"readinessProbe", "env", "image", "command"}
    assert {k: v for k, v in got.items() if k not in drop} == {
        k: v for k, v in want.items() if k not in drop
    }
    extra = [e for e in got["env"] if e not in want["env"]]
    assert [e["name"] for e in extra] == [
        "PREANNOTATE_SHUTDOWN_GRACE_SECONDS",
        "PREANNOTATE_MAX_RECORDS_WAIT_SECONDS",
    ]
    for key in ("securityContext", "tolerations", "volumes"):
        assert pod[key] == dep[key], key


def test_the_manifests_are_valid(docs, python_tools, node_root: Path) -> None:
    import jsonschema
    import kubernetes_validate

    from tests.deploy.test_kubernetes import K8S_VERSIONS

    job = _job(docs)
    errors = list(
        jsonschema.Draft202012Validator(SCHEMAS[("keda.sh/v1alpha1", "ScaledJob")]).iter_errors(job)
    )
    assert not errors, errors[0]
    (result,) = _validate_with_node(node_root, [job])
    assert not result["error"], result
    as_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job["metadata"]["name"]},
        "spec": job["spec"]["jobTargetRef"],
    }
    (budget,) = by_kind(docs, "PodDisruptionBudget")
    for version in K8S_VERSIONS:
        for doc in (as_job, budget):
            kubernetes_validate.validate(doc, version, strict=True)
    assert check_kubernetes_mounts(docs, "trainer-jobs") >= 6
