"""Conditional create for a store that has no conditional write: sole-candidate-wins.

Some S3-compatible stores answer ``PutObject`` with ``If-None-Match: *`` by
501 NotImplemented (or are configured as such: ``S3Storage(conditional_writes=False)``).
``put_if_absent`` here builds the same guarantee from plain writes and a
strongly consistent listing (AWS S3, MinIO)::

    <key>.candidates/<token>/candidate      one per attempt, random token

1. If ``key`` exists, the call lost.
2. Write this attempt's candidate, list every candidate of ``key``.
3. Alone, and ``key`` still absent: write ``key``, then withdraw the
   candidate; the call won. Not alone: withdraw, wait a random moment, go to 1.

Two attempts that see each other both withdraw (neither wins that round), so
two can never both win: of two attempts, the one that lists second sees the
first's candidate unless it was withdrawn, and a winner withdraws only after
``key`` exists, which step 3 then sees. A winner that dies between writing
``key`` and withdrawing leaves a candidate behind: a later attempt loses on
step 1 anyway. One that dies before writing ``key`` blocks the key until
``attempts`` run out (``Unavailable``); delete ``<key>.candidates/`` to free it.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable

from preannotate.errors import Unavailable
from preannotate.storage.base import Storage

CANDIDATES = ".candidates/"
_CANDIDATE = "candidate"


def candidates_prefix(key: str) -> str:
    return key + CANDIDATES


def put_if_absent(
    storage: Storage,
    key: str,
    data: bytes,
    *,
    attempts: int = 30,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """``Storage.put_if_absent`` from ``put``, ``list`` and ``delete_prefix`` alone."""
    prefix = candidates_prefix(key)
    for _ in range(attempts):
        if storage.exists(key):
            return False
        mine = f"{prefix}{uuid.uuid4().hex}/"
        storage.put(mine + _CANDIDATE, b"")
        seen = storage.list(prefix)
        if seen == [mine + _CANDIDATE] and not storage.exists(key):
            storage.put(key, data)
            storage.delete_prefix(mine)
            return True
        storage.delete_prefix(mine)
        sleep(random.uniform(0.01, 0.2))
    raise Unavailable(f"could not create {key!r}: other writers kept competing for it")
