"""Talking to CVAT: the one client every service uses.

- ``settings``: ``CvatSettings`` (the ``PREANNOTATE_CVAT_*`` variables, shared
  by every service that talks to CVAT), ``CvatConnection`` (those fields as a
  frozen value for one organisation context) and ``cvat_headers``;
- ``errors``: the one error mapping (``http_error``) and retry policy
  (``with_retries``);
- ``refs``: where a ``CvatRef.url`` may point (the configured CVAT, or a
  ``file://`` path under a configured root);
- ``client``: ``CvatClient`` (aiohttp) for every endpoint preannotate uses, and
  ``connect``, the client a ``CvatRef`` names;
- ``export``: the dataset export flow (request, poll, download);
- ``readiness``: whether a task's data is processed yet (``data_pending``);
- ``coco``: the frame of a "COCO 1.0" file as CVAT exports it.
"""

from __future__ import annotations

from preannotate.cvat.client import CvatClient, connect
from preannotate.cvat.errors import Retryable, http_error, retryable_status, with_retries
from preannotate.cvat.readiness import WAITING, data_pending
from preannotate.cvat.refs import (
    check_origin,
    check_same_server,
    file_ref_path,
    is_file_ref,
    is_under,
    origin,
)
from preannotate.cvat.settings import (
    MISSING_TOKEN,
    AuthScheme,
    CvatConnection,
    CvatSettings,
    cvat_headers,
)

__all__ = [
    "MISSING_TOKEN",
    "WAITING",
    "AuthScheme",
    "CvatClient",
    "CvatConnection",
    "CvatSettings",
    "Retryable",
    "check_origin",
    "check_same_server",
    "connect",
    "cvat_headers",
    "data_pending",
    "file_ref_path",
    "http_error",
    "is_file_ref",
    "is_under",
    "origin",
    "retryable_status",
    "with_retries",
]
