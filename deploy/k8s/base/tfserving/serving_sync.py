"""Mirror the converter's SavedModels from S3 to the folder TF Serving reads.

TF Serving's published images cannot read ``s3://`` (the scheme left
TensorFlow's core in 2.6), so a sidecar copies every *finished* version,
``<ns>/serving/<name>/<version>/`` with its ``manifest.json``, from the bucket
to ``<dest>/<ns>/serving/<name>/<version>/``. A version is copied once: its
files are fetched into ``<dest>/.partial/``, checked against the manifest's
sizes and SHA-256 sums, and renamed into place in one step, so TF Serving never
sees half a version. Only the newest ``--keep`` versions of each model are
mirrored (the ones the inference service names in TF Serving's config,
``PREANNOTATE_TFSERVING_KEEP_VERSIONS``, default 3): a newer version is copied
first, then the one it pushes out is removed; a model's promoted version and
the one promoted before it stay mirrored however old (the newest entry of its
promotion log, ``<ns>/models/<name>/promotion/<seq>.json``, which
``preannotate.promotion`` writes, names them). Versions whose manifest is gone
from the bucket are removed with ``--prune``.

Readiness. With ``--ready-file`` (``SERVING_SYNC_READY_FILE``) the file is
removed at start and written after the first pass that lists the bucket and
handles every version (copied, or failed its check and logged): the mirror has
refilled. The pod's readiness probe tests for it, so after a restart or during
a rollout no request reaches a TF Serving whose models are not on disk yet.

Runs in any image with Python 3.11 and boto3 (the gateway's image has both).
Reads the same variables as the services: ``PREANNOTATE_S3_ENDPOINT``,
``PREANNOTATE_S3_BUCKET``, ``PREANNOTATE_S3_REGION``,
``PREANNOTATE_S3_ACCESS_KEY``, ``PREANNOTATE_S3_SECRET_KEY`` and the inference
service's ``PREANNOTATE_TFSERVING_KEEP_VERSIONS``; its own are
``SERVING_SYNC_DEST``, ``SERVING_SYNC_INTERVAL_SECONDS`` and
``SERVING_SYNC_READY_FILE``.

    python serving_sync.py                # every 5 s until SIGTERM
    python serving_sync.py --once         # one pass, exit 0 when every version synced
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

NAME = r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?"
VERSION_PREFIX = re.compile(rf"^(?P<dir>{NAME}/serving/{NAME}/(?P<version>[1-9][0-9]{{0,18}}))/")
FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
MANIFEST = "manifest.json"
PARTIAL = ".partial"
TRASH = ".trash"
#: Versions of each model kept when PREANNOTATE_TFSERVING_KEEP_VERSIONS is unset
#: (the inference service's default).
KEEP_VERSIONS = 3

log = logging.getLogger("serving-sync")


class SyncError(Exception):
    """A version that cannot be copied as it is (bad manifest, checksum mismatch)."""


@dataclass
class PassResult:
    copied: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def make_client(env: dict[str, str] | None = None) -> Any:
    """A boto3 S3 client from the services' PREANNOTATE_S3_* variables."""
    import boto3
    from botocore.config import Config

    env = dict(os.environ if env is None else env)
    return boto3.client(
        "s3",
        endpoint_url=env.get("PREANNOTATE_S3_ENDPOINT") or None,
        region_name=env.get("PREANNOTATE_S3_REGION") or "us-east-1",
        aws_access_key_id=env.get("PREANNOTATE_S3_ACCESS_KEY") or None,
        aws_secret_access_key=env.get("PREANNOTATE_S3_SECRET_KEY") or None,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )


def finished_versions(client: Any, bucket: str) -> set[str]:
    """Every ``<ns>/serving/<name>/<version>`` of the bucket that has its manifest."""
    paginator = client.get_paginator("list_objects_v2")
    namespaces = [
        cp["Prefix"]
        for page in paginator.paginate(Bucket=bucket, Delimiter="/")
        for cp in page.get("CommonPrefixes", [])
    ]
    found: set[str] = set()
    for ns in namespaces:
        for page in paginator.paginate(Bucket=bucket, Prefix=f"{ns}serving/"):
            for obj in page.get("Contents", []):
                match = VERSION_PREFIX.match(obj["Key"])
                if match and obj["Key"] == f"{match['dir']}/{MANIFEST}":
                    found.add(match["dir"])
    return found


PROMOTION_ENTRY = re.compile(r"^(?P<seq>[1-9][0-9]{0,17})\.json$")


def pinned_versions(client: Any, bucket: str, versions: set[str]) -> set[str]:
    """Of the models of ``versions`` (``<ns>/serving/<name>/<version>`` paths), the
    promoted version and the one promoted before it, as the newest entry of each
    model's promotion log says (each entry holds the state after it: ``promoted``,
    and ``previous``, oldest first; ``preannotate.promotion.PromotionState.pinned``)."""
    paginator = client.get_paginator("list_objects_v2")
    out: set[str] = set()
    for model in sorted({v.rsplit("/", 1)[0] for v in versions}):
        namespace, _, name = model.split("/")
        prefix = f"{namespace}/models/{name}/promotion/"
        newest: tuple[int, str] | None = None
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                match = PROMOTION_ENTRY.match(obj["Key"][len(prefix) :])
                if match and (newest is None or int(match["seq"]) > newest[0]):
                    newest = (int(match["seq"]), obj["Key"])
        if newest is None:
            continue
        entry = json.loads(client.get_object(Bucket=bucket, Key=newest[1])["Body"].read())
        order = [entry["promoted"]] if entry.get("promoted") else []
        order += list(reversed(entry.get("previous") or []))
        out |= {f"{model}/{int(v)}" for v in order[:2]}
    return out


def local_versions(dest: Path) -> set[str]:
    """The versions already in place under ``dest``."""
    out = set()
    for path in dest.glob("*/serving/*/*"):
        rel = path.relative_to(dest).as_posix()
        if path.is_dir() and VERSION_PREFIX.match(rel + "/"):
            out.add(rel)
    return out


def newest(versions: set[str], keep: int | None) -> set[str]:
    """Of ``<ns>/serving/<name>/<version>`` paths, the newest ``keep`` of each
    model (every one when ``keep`` is None)."""
    by_model: dict[str, list[str]] = {}
    for version_dir in versions:
        by_model.setdefault(version_dir.rsplit("/", 1)[0], []).append(version_dir)
    return {
        v
        for dirs in by_model.values()
        for v in sorted(dirs, key=lambda d: int(d.rsplit("/", 1)[1]), reverse=True)[:keep]
    }


def _safe_relative(name: str) -> PurePosixPath:
    parts = name.split("/")
    if not name or any(not FILE_PART.fullmatch(p) for p in parts):
        raise SyncError(f"manifest lists an unsafe file name {name!r}")
    return PurePosixPath(*parts)


def copy_version(client: Any, bucket: str, version_dir: str, dest: Path) -> None:
    """Fetch one finished version, check it against its manifest, rename it into place."""
    body = client.get_object(Bucket=bucket, Key=f"{version_dir}/{MANIFEST}")["Body"].read()
    try:
        manifest = json.loads(body)
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise TypeError("'files' is empty or not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise SyncError(f"{version_dir}/{MANIFEST} is not a manifest with files: {exc}") from exc

    staging = dest / PARTIAL / version_dir
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name, meta in sorted(files.items()):
            rel = _safe_relative(name)
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, f"{version_dir}/{rel.as_posix()}", str(target))
            _check(target, meta, f"{version_dir}/{name}")
        (staging / MANIFEST).write_bytes(body)
        final = dest / version_dir
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check(path: Path, meta: Any, key: str) -> None:
    size = path.stat().st_size
    if isinstance(meta, dict) and "size" in meta and meta["size"] != size:
        raise SyncError(f"{key}: {size} bytes, the manifest says {meta['size']}")
    if isinstance(meta, dict) and "sha256" in meta:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != meta["sha256"]:
            raise SyncError(f"{key}: SHA-256 differs from the manifest's")


def remove_version(dest: Path, version_dir: str) -> None:
    """Move a version out of TF Serving's sight in one rename, then delete it."""
    trash = dest / TRASH / version_dir
    shutil.rmtree(trash, ignore_errors=True)
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.rename(dest / version_dir, trash)
    shutil.rmtree(trash, ignore_errors=True)


def sync_once(
    client: Any, bucket: str, dest: Path, *, prune: bool = False, keep: int | None = None
) -> PassResult:
    """One pass: copy each missing version among the newest ``keep`` of its model,
    then remove the local versions older than those; with ``prune``, also the
    versions gone from the bucket."""
    if keep is not None and keep < 1:
        raise ValueError(
            f"keep must be at least 1 (PREANNOTATE_TFSERVING_KEEP_VERSIONS), not {keep}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    remote = finished_versions(client, bucket)
    local = local_versions(dest)
    wanted = newest(remote, keep) | (pinned_versions(client, bucket, remote) & remote)
    result = PassResult()
    for version_dir in sorted(wanted - local):
        try:
            copy_version(client, bucket, version_dir, dest)
        except SyncError as exc:
            result.failed[version_dir] = str(exc)
            log.error("not copied: %s", exc)
            continue
        result.copied.append(version_dir)
        log.info("copied %s", version_dir)
    for version_dir in sorted((local & remote) - wanted):
        remove_version(dest, version_dir)
        result.removed.append(version_dir)
        log.info(
            "removed %s (older than the newest %s of its model, and not promoted)",
            version_dir,
            keep,
        )
    if prune:
        for version_dir in sorted(local - remote):
            remove_version(dest, version_dir)
            result.removed.append(version_dir)
            log.info("removed %s (its manifest is gone from the bucket)", version_dir)
    return result


def mark_ready(path: Path | None) -> None:
    """Write the readiness file (once): a pass has completed."""
    if path is not None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("synced\n")
        log.info("mirror complete; ready (%s)", path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=os.environ.get("SERVING_SYNC_DEST", "/models"))
    parser.add_argument("--bucket", default=os.environ.get("PREANNOTATE_S3_BUCKET", "preannotate"))
    parser.add_argument(
        "--interval",
        type=float,
        default=float(os.environ.get("SERVING_SYNC_INTERVAL_SECONDS", "5")),
        help="seconds between passes",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=int(os.environ.get("PREANNOTATE_TFSERVING_KEEP_VERSIONS") or KEEP_VERSIONS),
        help="versions of each model mirrored: the newest N (as many as the inference "
        "service names in TF Serving's config)",
    )
    parser.add_argument(
        "--ready-file",
        default=os.environ.get("SERVING_SYNC_READY_FILE") or None,
        help="written once a pass has completed (the mirror has refilled): the readiness probe",
    )
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument(
        "--prune",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("SERVING_SYNC_PRUNE", "true").lower() in ("1", "true", "yes"),
        help="remove local versions whose manifest is gone from the bucket",
    )
    args = parser.parse_args(argv)
    if args.keep < 1:
        parser.error(
            f"--keep (PREANNOTATE_TFSERVING_KEEP_VERSIONS) must be at least 1, not {args.keep}"
        )
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    client = make_client()
    dest = Path(args.dest)
    ready = Path(args.ready_file) if args.ready_file else None
    if ready is not None:
        ready.unlink(missing_ok=True)  # a restarted container keeps its /tmp
    if args.once:
        result = sync_once(client, args.bucket, dest, prune=args.prune, keep=args.keep)
        mark_ready(ready)
        return 1 if result.failed else 0

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("mirroring s3://%s/*/serving/ to %s every %.0f s", args.bucket, dest, args.interval)
    while not stop.is_set():
        try:
            sync_once(client, args.bucket, dest, prune=args.prune, keep=args.keep)
        except Exception:
            # S3 down or a network error: say so and try again next pass.
            log.exception("pass failed; retrying in %.0f s", args.interval)
        else:
            mark_ready(ready)
        stop.wait(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
