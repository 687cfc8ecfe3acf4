"""Model versions: which integer version a training job writes, found again on redelivery.

A version belongs to the job that created its claim, a compare-and-swap::

    <ns>/models/<name>/<version>/claim.json              created with put_if_absent
    <ns>/models/<name>/<version>/claims/<job_id>/claim.json   the job's marker

The version tried is the next free integer (one above every version folder
that has anything in it: ``layout.version_folders``). A job writes its marker
first, then creates ``claim.json`` with ``Storage.put_if_absent`` (S3
``If-None-Match: *``, a hard link locally, or the storage's fallback): of two
jobs that try the same version at the same instant exactly one creates it; the
other withdraws its marker and tries the next version. A redelivered job
finds its marker (a listing, no read per version) and keeps that version when
``claim.json`` names it, or creates ``claim.json`` when it died between the
two writes. One job is run by one worker at a time (``preannotate.lease``,
taken before the claim), so a job never races itself here.

Which versions are finished is read with ``preannotate.layout``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from preannotate.errors import NotFound, Unavailable
from preannotate.keys import check_name, model_prefix
from preannotate.layout import version_folders
from preannotate.storage import Storage

CLAIMS = "claims/"
_ATTEMPTS = 20
CLAIM_FILE = "claim.json"


def claim_prefix(namespace: str, name: str, version: int, job_id: str) -> str:
    return model_prefix(namespace, name, version) + CLAIMS + check_name(job_id, "job id") + "/"


def find_claim(storage: Storage, namespace: str, name: str, job_id: str) -> int | None:
    """The version this job claimed earlier, if any."""
    mine = CLAIMS + job_id + "/" + CLAIM_FILE
    for version, rel in sorted(version_folders(storage, namespace, name).items()):
        if mine in rel:
            return version
    return None


def _owner(storage: Storage, namespace: str, name: str, version: int) -> str | None:
    """The job id in the version's ``claim.json``; None when nobody created it."""
    try:
        return json.loads(storage.get(model_prefix(namespace, name, version) + CLAIM_FILE))[
            "job_id"
        ]
    except NotFound:
        return None


def claim(
    storage: Storage,
    namespace: str,
    name: str,
    job_id: str,
    info: dict[str, Any],
) -> int:
    """This job's version: the one it claimed before, or a fresh one it now owns."""
    body = json.dumps(
        {"job_id": job_id, "claimed_at": datetime.now(UTC).isoformat(), **info}, sort_keys=True
    ).encode()
    while (found := find_claim(storage, namespace, name, job_id)) is not None:
        key = model_prefix(namespace, name, found) + CLAIM_FILE
        owner = _owner(storage, namespace, name, found)
        if owner == job_id or (owner is None and storage.put_if_absent(key, body)):
            return found
        storage.delete_prefix(claim_prefix(namespace, name, found, job_id))  # another's
    for _ in range(_ATTEMPTS):
        version = max(version_folders(storage, namespace, name), default=0) + 1
        mine = claim_prefix(namespace, name, version, job_id)
        storage.put(mine + CLAIM_FILE, body)
        key = model_prefix(namespace, name, version) + CLAIM_FILE
        if storage.put_if_absent(key, body) or _owner(storage, namespace, name, version) == job_id:
            return version  # created now, or by this job's other delivery a moment ago
        storage.delete_prefix(mine)  # another job created this version first: the next one
    raise Unavailable(f"could not claim a version of model {namespace}/{name}: too many at once")
