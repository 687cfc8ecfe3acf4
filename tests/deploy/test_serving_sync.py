"""The TF Serving sidecar (deploy/k8s/base/tfserving/serving_sync.py) against a real S3 server.

Versions are written the way the converter writes them (PrefixWriter on
S3Storage: files, then manifest.json), and the sync must copy exactly the
finished ones, whole and checked, into TF Serving's layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from preannotate import keys
from preannotate.storage import PrefixWriter
from tests.conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, load_file
from tests.deploy.conftest import DEPLOY, REPO, load_deploy_module

SCRIPT = DEPLOY / "k8s" / "base" / "tfserving" / "serving_sync.py"
pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def sync():
    return load_file(SCRIPT, "serving_sync_under_test")


@pytest.fixture
def client(s3_endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
    )


def write_version(storage, namespace: str, name: str, version: int, *, finish: bool = True) -> dict:
    """A SavedModel-shaped version, as the converter writes it."""
    files = {
        "saved_model.pb": f"graph of {name} v{version}".encode(),
        "variables/variables.index": b"index" * 10,
        "variables/variables.data-00000-of-00001": os.urandom(3000),
    }
    prefix = keys.serving_prefix(namespace, name, version)
    if not finish:
        for rel, data in files.items():
            storage.put(keys.join(prefix, rel), data)
        return files
    with PrefixWriter(storage, prefix) as out:
        for rel, data in files.items():
            out.put(rel, data)
        out.commit({"model": name, "version": version})
    return files


def script_env(s3_storage, s3_endpoint: str) -> dict[str, str]:
    """The environment the services give the script: this one's, with the S3 test server."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREANNOTATE_")},
        "PREANNOTATE_S3_ENDPOINT": s3_endpoint,
        "PREANNOTATE_S3_BUCKET": s3_storage.bucket,
        "PREANNOTATE_S3_REGION": S3_REGION,
        "PREANNOTATE_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "PREANNOTATE_S3_SECRET_KEY": S3_SECRET_KEY,
    }


def test_copies_finished_versions_whole_and_skips_unfinished(
    sync, s3_storage, client, tmp_path: Path
) -> None:
    a1 = write_version(s3_storage, "default", "boxes", 1)
    a2 = write_version(s3_storage, "default", "boxes", 2)
    b1 = write_version(s3_storage, "team-b", "masks", 1)
    write_version(s3_storage, "default", "boxes", 3, finish=False)  # no manifest yet
    s3_storage.put("default/models/boxes/1/manifest.json", b"{}")  # not a serving prefix

    result = sync.sync_once(client, s3_storage.bucket, tmp_path)

    assert result.copied == [
        "default/serving/boxes/1",
        "default/serving/boxes/2",
        "team-b/serving/masks/1",
    ]
    assert not result.failed
    for rel_dir, files in [
        ("default/serving/boxes/1", a1),
        ("default/serving/boxes/2", a2),
        ("team-b/serving/masks/1", b1),
    ]:
        for rel, data in files.items():
            assert (tmp_path / rel_dir / rel).read_bytes() == data
        manifest = json.loads((tmp_path / rel_dir / "manifest.json").read_text())
        assert set(manifest["files"]) == set(files)
    assert not (tmp_path / "default/serving/boxes/3").exists()
    assert not (tmp_path / "default/models").exists()
    assert not [p for p in (tmp_path / ".partial").rglob("*") if p.is_file()]

    # Idempotent: nothing new, nothing copied; once finished, version 3 comes.
    assert sync.sync_once(client, s3_storage.bucket, tmp_path).copied == []
    s3_storage.delete_prefix(keys.serving_prefix("default", "boxes", 3))
    write_version(s3_storage, "default", "boxes", 3)
    assert sync.sync_once(client, s3_storage.bucket, tmp_path).copied == ["default/serving/boxes/3"]


def test_a_file_that_differs_from_its_manifest_is_not_put_in_place(
    sync, s3_storage, client, tmp_path: Path
) -> None:
    write_version(s3_storage, "default", "boxes", 1)
    key = keys.join(keys.serving_prefix("default", "boxes", 1), "variables/variables.index")
    s3_storage.put(key, b"tampered")

    result = sync.sync_once(client, s3_storage.bucket, tmp_path)

    assert result.copied == []
    assert "default/serving/boxes/1" in result.failed
    assert "variables/variables.index" in result.failed["default/serving/boxes/1"]
    assert not (tmp_path / "default/serving/boxes/1").exists()
    assert not [p for p in (tmp_path / ".partial").rglob("*") if p.is_file()]


def test_a_manifest_naming_an_unsafe_path_is_refused(
    sync, s3_storage, client, tmp_path: Path
) -> None:
    prefix = keys.serving_prefix("default", "evil", 1)
    data = b"x"
    manifest = {
        "files": {"../../../etc/passwd": {"size": 1, "sha256": hashlib.sha256(data).hexdigest()}}
    }
    s3_storage.put(keys.join(prefix, "manifest.json"), json.dumps(manifest).encode())

    result = sync.sync_once(client, s3_storage.bucket, tmp_path)

    assert "unsafe" in result.failed["default/serving/evil/1"]
    assert not (tmp_path.parent / "etc").exists()


def test_prune_removes_versions_gone_from_the_bucket(
    sync, s3_storage, client, tmp_path: Path
) -> None:
    write_version(s3_storage, "default", "boxes", 1)
    write_version(s3_storage, "default", "boxes", 2)
    sync.sync_once(client, s3_storage.bucket, tmp_path)
    s3_storage.delete_prefix(keys.serving_prefix("default", "boxes", 1))

    kept = sync.sync_once(client, s3_storage.bucket, tmp_path, prune=False)
    assert kept.removed == [] and (tmp_path / "default/serving/boxes/1").exists()

    pruned = sync.sync_once(client, s3_storage.bucket, tmp_path, prune=True)
    assert pruned.removed == ["default/serving/boxes/1"]
    assert not (tmp_path / "default/serving/boxes/1").exists()
    assert (tmp_path / "default/serving/boxes/2/saved_model.pb").exists()


def test_only_the_newest_versions_of_each_model_are_mirrored(
    sync, s3_storage, client, tmp_path: Path
) -> None:
    for version in (1, 2, 3):
        write_version(s3_storage, "default", "boxes", version)
    write_version(s3_storage, "team-b", "masks", 9)

    first = sync.sync_once(client, s3_storage.bucket, tmp_path, keep=2)
    assert first.copied == [
        "default/serving/boxes/2",
        "default/serving/boxes/3",
        "team-b/serving/masks/9",
    ]
    assert not (tmp_path / "default/serving/boxes/1").exists()

    # Version 10 of boxes (numbers, not names: 10 is newer than 3) pushes 2 out,
    # after it is in place.
    write_version(s3_storage, "default", "boxes", 10)
    second = sync.sync_once(client, s3_storage.bucket, tmp_path, keep=2)
    assert second.copied == ["default/serving/boxes/10"]
    assert second.removed == ["default/serving/boxes/2"]
    assert sorted(p.name for p in (tmp_path / "default/serving/boxes").iterdir()) == ["10", "3"]
    assert (tmp_path / "team-b/serving/masks/9/saved_model.pb").exists()
    assert not [p for p in (tmp_path / ".trash").rglob("*") if p.is_file()]

    with pytest.raises(ValueError, match="PREANNOTATE_TFSERVING_KEEP_VERSIONS"):
        sync.sync_once(client, s3_storage.bucket, tmp_path, keep=0)


def test_command_line_reads_the_services_variables(
    s3_storage, s3_endpoint: str, tmp_path: Path
) -> None:
    write_version(s3_storage, "default", "boxes", 6)
    files = write_version(s3_storage, "default", "boxes", 7)
    env = {
        **script_env(s3_storage, s3_endpoint),
        "SERVING_SYNC_DEST": str(tmp_path / "models"),
        "PREANNOTATE_TFSERVING_KEEP_VERSIONS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--once"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "copied default/serving/boxes/7" in done.stdout
    assert not (tmp_path / "ready").exists()  # no SERVING_SYNC_READY_FILE, no file
    assert "default/serving/boxes/6" not in done.stdout  # keeps the newest 1
    assert (tmp_path / "models/default/serving/boxes/7/saved_model.pb").read_bytes() == files[
        "saved_model.pb"
    ]


def test_compose_and_kubernetes_mount_the_same_script() -> None:
    compose = (DEPLOY / "compose" / "docker-compose.yml").read_text()
    assert "../k8s/base/tfserving/serving_sync.py:/opt/serving-sync/serving_sync.py:ro" in compose
    assert (
        "tfserving/serving_sync.py" in (DEPLOY / "k8s" / "base" / "kustomization.yaml").read_text()
    )
    # It runs in the gateway's image, which has boto3 but no preannotate import is needed.
    assert "import preannotate" not in SCRIPT.read_text()
    assert load_deploy_module("tools")  # deploy/ loads without the package installed


def test_the_inference_service_and_the_mirror_keep_the_same_versions(rendered) -> None:
    """serving-sync reads the inference service's PREANNOTATE_TFSERVING_KEEP_VERSIONS:
    both see one value, in compose and in every overlay."""
    import yaml

    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    key = "PREANNOTATE_TFSERVING_KEEP_VERSIONS"
    assert services["serving-sync"]["environment"][key] == services["inference"]["environment"][key]
    for overlay, docs in rendered.items():
        config = next(
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "preannotate-config"
        )
        assert int(config["data"][key]) >= 1, overlay
        pods = {
            c["name"]: c
            for d in docs
            if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"]
        }
        for name in ("serving-sync", "inference"):
            refs = [
                s["configMapRef"]["name"]
                for s in pods[name].get("envFrom", [])
                if "configMapRef" in s
            ]
            assert "preannotate-config" in refs, f"{overlay}: {name}"
            assert key not in {e["name"] for e in pods[name].get("env", [])}, f"{overlay}: {name}"


def test_the_ready_file_says_the_mirror_has_refilled(
    s3_storage, s3_endpoint: str, tmp_path: Path
) -> None:
    """Written after a completed pass; removed at start (a restarted container keeps
    its /tmp); never written when the pass could not read the bucket."""
    write_version(s3_storage, "default", "boxes", 1)
    ready = tmp_path / "tmp" / "ready"
    env = {
        **script_env(s3_storage, s3_endpoint),
        "SERVING_SYNC_DEST": str(tmp_path / "models"),
        "SERVING_SYNC_READY_FILE": str(ready),
    }

    def once(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--once"],
            cwd=REPO,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = once()
    assert done.returncode == 0, done.stderr + done.stdout
    assert ready.is_file()
    assert (tmp_path / "models/default/serving/boxes/1/saved_model.pb").is_file()

    # A bucket that cannot be listed: the old file is gone and no new one comes.
    done = once(PREANNOTATE_S3_BUCKET="no-such-bucket")
    assert done.returncode != 0
    assert not ready.exists()


def test_tfserving_is_ready_only_when_its_mirror_is(rendered) -> None:
    """Kubernetes: the sidecar's readiness probe tests the file the sidecar writes, and
    rollouts keep the old pod until the new one is ready; compose: TF Serving starts
    once serving-sync is healthy, by the same file."""
    import yaml

    for overlay, docs in rendered.items():
        (tfs,) = [
            d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tfserving"
        ]
        spec = tfs["spec"]
        assert spec["strategy"]["type"] == "RollingUpdate", overlay
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, overlay
        pod = spec["template"]["spec"]
        # Two pods at once during a rollout: only per-pod volumes.
        assert all("persistentVolumeClaim" not in v for v in pod["volumes"]), overlay
        (sync,) = [c for c in pod["containers"] if c["name"] == "serving-sync"]
        env = {e["name"]: e["value"] for e in sync["env"]}
        ready = env["SERVING_SYNC_READY_FILE"]
        assert sync["readinessProbe"]["exec"]["command"] == ["test", "-f", ready], overlay
        mounts = [m["mountPath"] for m in sync["volumeMounts"]]
        assert any(ready.startswith(m.rstrip("/") + "/") for m in mounts), overlay

    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    sync = compose["services"]["serving-sync"]
    ready = sync["environment"]["SERVING_SYNC_READY_FILE"]
    assert sync["healthcheck"]["test"] == ["CMD", "test", "-f", ready]
    assert compose["services"]["tfserving"]["depends_on"]["serving-sync"] == {
        "condition": "service_healthy"
    }


def test_the_promoted_version_stays_mirrored_however_old(
    sync, s3_storage, client, tmp_path: Path
) -> None:
    from preannotate import layout, promotion

    for version in (1, 2, 3, 4, 5):
        write_version(s3_storage, "default", "boxes", version)
    # 1 promoted, then 2; then three candidates (3, 4, 5) refused by the gate
    layout.append_promotion(s3_storage, "default", "boxes", 1, {"promoted": 1, "previous": []})
    layout.append_promotion(s3_storage, "default", "boxes", 2, {"promoted": 2, "previous": [1]})
    state = promotion.read(s3_storage, "default", "boxes")
    assert state.pinned() == {1, 2}

    first = sync.sync_once(client, s3_storage.bucket, tmp_path, keep=2)
    assert sorted(first.copied) == [f"default/serving/boxes/{v}" for v in (1, 2, 4, 5)]

    # rolled back to 1: 2 is neither promoted, the one before, nor among the newest 2
    layout.append_promotion(s3_storage, "default", "boxes", 3, {"promoted": 1, "previous": []})
    assert promotion.read(s3_storage, "default", "boxes").pinned() == {1}
    second = sync.sync_once(client, s3_storage.bucket, tmp_path, keep=2)
    assert second.removed == ["default/serving/boxes/2"] and second.copied == []
    assert sorted(p.name for p in (tmp_path / "default/serving/boxes").iterdir()) == [
        "1",
        "4",
        "5",
    ]
