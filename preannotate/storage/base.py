"""The storage interface. Keys are '/'-separated and checked by ``keys``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Storage(Protocol):
    """Blocking object storage; async callers use ``asyncio.to_thread``.

    Every key is checked with ``preannotate.keys.check_relative`` before it is
    used, so a key can never leave the bucket or the root folder.
    """

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` whole, or not at all."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` whole only if no object is there; True when this call created it.

        A compare-and-swap: of concurrent creators of one key exactly one gets
        True (S3 ``If-None-Match: *``, a hard link in a folder; see
        ``preannotate.storage.conditional`` for stores without either).
        """

    def get(self, key: str) -> bytes:
        """Read ``key``; raises ``NotFound`` when it does not exist."""

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a folder-like prefix ending in '/'), sorted."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""

    def upload_file(self, key: str, path: Path) -> None: ...

    def download_file(self, key: str, path: Path) -> None: ...

    def uri(self, key: str) -> str:
        """A URI a person or TF Serving can use: ``s3://bucket/key`` or a path."""


def check_prefix(prefix: str) -> str:
    """A prefix is a checked key followed by '/' (or empty for everything)."""
    from preannotate.keys import check_relative

    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        from preannotate.errors import UnsafeName

        raise UnsafeName(f"prefix {prefix!r} must end with '/'")
    check_relative(prefix[:-1])
    return prefix
