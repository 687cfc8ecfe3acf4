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


def test_command_line_reads_the_services_variables(
    s3_storage, s3_endpoint: str, tmp_path: Path
) -> None:
    files = write_version(s3_storage, "default", "boxes", 7)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREANNOTATE_")},
        "PREANNOTATE_S3_ENDPOINT": s3_endpoint,
        "PREANNOTATE_S3_BUCKET": s3_storage.bucket,
        "PREANNOTATE_S3_REGION": S3_REGION,
        "PREANNOTATE_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "PREANNOTATE_S3_SECRET_KEY": S3_SECRET_KEY,
        "SERVING_SYNC_DEST": str(tmp_path / "models"),
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
