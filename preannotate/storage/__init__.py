"""Object storage: one interface over S3 and a local folder.

``open_storage(settings)`` picks the implementation; ``manifest`` holds the
manifest-written-last rule that marks a prefix finished; ``conditional`` the
conditional create (``put_if_absent``) of a store that has none.
"""

from __future__ import annotations

from preannotate.storage.base import Storage
from preannotate.storage.local import LocalStorage
from preannotate.storage.manifest import (
    MANIFEST,
    PrefixWriter,
    is_complete,
    read_manifest,
)
from preannotate.storage.s3 import S3Storage

__all__ = [
    "MANIFEST",
    "LocalStorage",
    "PrefixWriter",
    "S3Storage",
    "Storage",
    "is_complete",
    "open_storage",
    "read_manifest",
]


def open_storage(settings) -> Storage:
    """Build the storage that ``settings`` (a ``StorageSettings``) names."""
    if settings.storage == "local":
        return LocalStorage(settings.storage_root)
    return S3Storage(
        bucket=settings.s3_bucket,
        endpoint_url=settings.s3_endpoint or None,
        region=settings.s3_region,
        access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
        secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
        create_bucket=settings.s3_create_bucket,
        conditional_writes=settings.s3_conditional_writes,
    )
