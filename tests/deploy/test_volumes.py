"""Every folder a service writes is writable by its image's user, in compose and in Kubernetes.

The image's folders come from its Dockerfile (tests/deploy/image_layout.py). A
named compose volume takes the owner of the image's folder at its mount point,
or root where the image has none; a Kubernetes emptyDir is writable by the pod
(and its group is the pod's fsGroup), while a ConfigMap or Secret is read-only.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import BUILD_TIMEOUT, REPO
from tests.deploy.image_layout import ANYONE, Layout, read_layout
from tests.deploy.test_compose import compose_config
from tests.deploy.test_dockerfiles import instructions
from tests.deploy.test_kubernetes import OUR_IMAGES, by_kind, named

OVERLAYS = ["base", "overlays/gpu", "overlays/dev"]
#: Variables that name a folder a service writes in.
WRITTEN = ("_DIR", "_DEST")


def dockerfile(image: str) -> Path:
    """services/<name>/Dockerfile of an image ``preannotate-<name>[:tag]``."""
    name = image.rsplit("/", 1)[-1].split(":")[0].split("@")[0].removeprefix("preannotate-")
    return REPO / "services" / name / "Dockerfile"


def image_env(path: Path) -> dict[str, str]:
    return dict(
        item.split("=", 1)
        for word, rest in instructions(path)
        if word == "ENV"
        for item in rest.split()
        if "=" in item
    )


def written(env: dict[str, str], layout: Layout, service: bool = True) -> set[str]:
    """The folders a container writes: those its environment names, /tmp and,
    for a preannotate service (the image's CMD), its working folder (relative
    settings resolve there)."""
    out = {layout.workdir, "/tmp"} if service else {"/tmp"}
    for key, value in env.items():
        if key.startswith(("PREANNOTATE_", "SERVING_SYNC_")) and key.endswith(WRITTEN) and value:
            out.add(posixpath.normpath(posixpath.join(layout.workdir, value)))
    return out


def under(path: str, mounts: dict[str, Any]) -> str | None:
    """The mount point ``path`` lies in (the deepest), if any."""
    found = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
    return max(found, key=len) if found else None


# -- the reader ------------------------------------------------------------------


def test_the_layout_reader_reads_owners(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(
        "FROM python:3.11-slim AS build\nRUN mkdir /ignored\n"
        "FROM python:3.11-slim\n"
        "RUN groupadd --system --gid 10001 app \\\n"
        " && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/app app \\\n"
        ' && python -c "import a; import b" \\\n'
        " && mkdir -p /var/cache/app/x /data && chown -R app:app /var/cache/app\n"
        "RUN install -d -o 10001 -g 10001 /srv/out && mkdir /src && rm -rf /src\n"
        "COPY --from=build /opt/venv /opt/venv\n"
        "WORKDIR /var/lib/app\nUSER app:app\n"
    )
    layout = read_layout(path)
    assert (layout.uid, layout.gid, layout.workdir) == (10001, 10001, "/var/lib/app")
    assert layout.owner("/var/lib/app") == 10001
    assert layout.owner("/var/cache/app/x") == layout.owner("/var/cache/app") == 10001
    assert layout.owner("/data") == 0 and layout.owner("/opt/venv") == 0
    assert layout.owner("/srv/out") == 10001
    assert layout.owner("/src") is None and layout.owner("/ignored") is None
    assert layout.owner("/tmp") == ANYONE
    assert layout.writable("var/work") and layout.writable("/tmp/x")
    assert not layout.writable("/data/x") and not layout.writable("/var/lib/other")


# -- compose -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose(compose_bin: Path) -> dict[str, Any]:
    done = compose_config(compose_bin, "--profile", "cpu")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_compose_volumes_are_writable_by_the_image_user(compose: dict[str, Any]) -> None:
    checked = set()
    for name, service in compose["services"].items():
        if not service["image"].startswith("preannotate-"):
            continue
        path = dockerfile(service["image"])
        layout = read_layout(path)
        writable: dict[str, Any] = {}
        for mount in service.get("volumes", []):
            if mount["type"] != "volume" or mount.get("read_only"):
                continue
            target = mount["target"]
            owner = layout.owner(target)
            assert owner is not None, (
                f"compose mounts the volume {mount['source']} on {target} in {name}, but "
                f"{path.relative_to(REPO)} never creates {target}: Docker makes it owned by "
                f"root and uid {layout.uid} cannot write; create it there owned by the user"
            )
            assert owner in (layout.uid, ANYONE), (
                f"{name}: {target} (volume {mount['source']}) is owned by uid {owner} in "
                f"{path.relative_to(REPO)}, the service runs as {layout.uid}"
            )
            writable[target] = mount
            checked.add(name)
        env = {**image_env(path), **(service.get("environment") or {})}
        for folder in written(env, layout, service=not service.get("command")):
            if under(folder, writable) is None:
                assert layout.writable(folder), (
                    f"{name} writes in {folder}, which uid {layout.uid} cannot write in "
                    f"{path.relative_to(REPO)} (owner of {layout.nearest(folder)}: "
                    f"{layout.folders[layout.nearest(folder)]})"
                )
    assert {"exporter", "serving-sync"} <= checked


# -- Kubernetes --------------------------------------------------------------------


def _pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = [
        (d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in by_kind(docs, "Deployment")
    ]
    out += [
        (j["metadata"]["name"], j["spec"]["jobTargetRef"]["template"]["spec"])
        for j in by_kind(docs, "ScaledJob")
    ]
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_mounts_are_writable_by_the_image_user(rendered, overlay: str) -> None:
    assert check_kubernetes_mounts(rendered[overlay], overlay) >= 6


def check_kubernetes_mounts(docs: list[dict[str, Any]], overlay: str) -> int:
    """Check every container of our images in ``docs``; how many there were."""
    checked = 0
    for owner_name, pod in _pod_templates(docs):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        pod_security = pod.get("securityContext", {})
        for c in pod["containers"] + pod.get("initContainers", []):
            if not OUR_IMAGES.match(c["image"]):
                continue
            where = f"{overlay}: {owner_name}/{c['name']}"
            path = dockerfile(c["image"])
            layout = read_layout(path)
            security = {**pod_security, **c.get("securityContext", {})}
            assert security.get("runAsUser") == layout.uid, (
                f"{where} runs as {security.get('runAsUser')}, "
                f"{path.relative_to(REPO)} as {layout.uid}"
            )
            assert security.get("runAsGroup", layout.gid) == layout.gid, where
            writable: dict[str, Any] = {}
            for mount in c.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                if "emptyDir" in volume:
                    writable[mount["mountPath"]] = volume  # made writable for the pod
                elif {"configMap", "secret", "projected"} & volume.keys():
                    assert mount.get("readOnly") is True, f"{where}: mark {mount['name']} readOnly"
                elif "persistentVolumeClaim" in volume:
                    # The kubelet gives the volume the group fsGroup, writable by it.
                    assert pod_security.get("fsGroup") == layout.gid, (
                        f"{where}: the claim {mount['name']} needs fsGroup {layout.gid}"
                    )
                    if not mount.get("readOnly"):
                        writable[mount["mountPath"]] = volume
                else:
                    pytest.fail(f"{where}: no writability rule for volume {volume}")
            env = dict(image_env(path))
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    env.update(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            read_only_root = security.get("readOnlyRootFilesystem") is True
            for folder in written(env, layout, service="command" not in c):
                if under(folder, writable) is not None:
                    continue
                assert not read_only_root, (
                    f"{where} writes in {folder}, on a read-only root file system and on no "
                    "writable volume: mount an emptyDir there"
                )
                assert layout.writable(folder), f"{where}: uid {layout.uid} cannot write {folder}"
            checked += 1
    return checked
