"""Model versions: which integer version a training job writes, found again on redelivery.

A job claims ``<ns>/models/<name>/<version>/`` by writing
``claims/<job_id>/claim.json`` under it (a folder per claim, so a claim can be
withdrawn with the storage's delete-by-prefix). The version is the next free
integer (one above every version folder that has anything in it:
``layout.version_folders``). Storage offers no compare-and-swap, so after
writing its claim a job lists the claims of that version: it keeps the version only when its claim is the only one, else it
withdraws and tries the next, after a short random wait. A redelivered job
finds its own claim and so its version (and its checkpoints) again.

Which versions are finished is read with ``preannotate.layout``.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime
from typing import Any

from preannotate.errors import Unavailable
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


def claim(
    storage: Storage,
    namespace: str,
    name: str,
    job_id: str,
    info: dict[str, Any],
    *,
    sleep=time.sleep,
) -> int:
    """This job's version: the one it claimed before, or a fresh one it now owns."""
    found = find_claim(storage, namespace, name, job_id)
    if found is not None:
        return found
    body = json.dumps(
        {"job_id": job_id, "claimed_at": datetime.now(UTC).isoformat(), **info}, sort_keys=True
    ).encode()
    for _ in range(_ATTEMPTS):
        versions = version_folders(storage, namespace, name)
        version = max(versions, default=0) + 1
        mine = claim_prefix(namespace, name, version, job_id)
        storage.put(mine + CLAIM_FILE, body)
        claims = [
            k
            for k in storage.list(model_prefix(namespace, name, version) + CLAIMS)
            if k.endswith("/" + CLAIM_FILE)
        ]
        if claims == [mine + CLAIM_FILE]:
            return version
        storage.delete_prefix(mine)  # another job claimed it too: both move on
        sleep(random.uniform(0.05, 0.5))
    raise Unavailable(f"could not claim a version of model {namespace}/{name}: too many at once")
