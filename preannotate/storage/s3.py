"""Storage in an S3 bucket through boto3 (MinIO, moto's server, AWS).

``put_if_absent`` is an S3 conditional write (``PutObject`` with
``If-None-Match: *``: 412 PreconditionFailed when the key exists). A store
that answers it with 501 NotImplemented, or one built with
``conditional_writes=False``, gets ``preannotate.storage.conditional``'s
fallback instead (plain writes and a listing).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from preannotate.errors import NotFound, Unavailable
from preannotate.keys import check_relative
from preannotate.storage import conditional
from preannotate.storage.base import check_prefix

log = logging.getLogger(__name__)

#: S3's answers to a conditional write: the key exists / another one is in progress.
_EXISTS = ("PreconditionFailed", "412")
_CONFLICT = ("ConditionalRequestConflict", "409")
_UNSUPPORTED = ("NotImplemented", "501")


def _client(endpoint_url, region, access_key, secret_key):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


class S3Storage:
    """Keys are object keys in ``bucket``."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        create_bucket: bool = False,
        conditional_writes: bool = True,
    ) -> None:
        self.bucket = bucket
        #: Whether the store honours ``If-None-Match: *``; turned off on its first 501.
        self.conditional_writes = conditional_writes
        self.endpoint_url = endpoint_url
        self._s3 = _client(endpoint_url, region, access_key, secret_key)
        if create_bucket:
            self.ensure_bucket()

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._s3.create_bucket(Bucket=self.bucket)

    def _call(self, key: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = _code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"no object at {key!r} in bucket {self.bucket!r}") from exc
            if code.startswith("5") or code in ("SlowDown", "RequestTimeout", "InternalError"):
                raise Unavailable(f"S3 {code} on {key!r}: {exc}") from exc
            raise
        except BotoCoreError as exc:
            raise Unavailable(f"S3 unreachable on {key!r}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        check_relative(key)
        self._call(key, self._s3.put_object, Bucket=self.bucket, Key=key, Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        check_relative(key)
        for attempt in range(5):
            if not self.conditional_writes:
                break
            try:
                self._call(
                    key,
                    self._s3.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    IfNoneMatch="*",
                )
                return True
            except (ClientError, Unavailable) as exc:
                code = _code(exc if isinstance(exc, ClientError) else exc.__cause__)
                if code in _EXISTS:
                    return False
                if code in _CONFLICT:  # another conditional write to the key: retry
                    time.sleep(0.05 * 2**attempt)
                    continue
                if code not in _UNSUPPORTED:
                    raise
                log.warning(
                    "S3 store at %s does not support conditional writes (If-None-Match);"
                    " using the candidates fallback",
                    self.endpoint_url or "AWS",
                )
                self.conditional_writes = False
                break
        else:
            raise Unavailable(f"S3 kept answering 409 ConditionalRequestConflict on {key!r}")
        return conditional.put_if_absent(self, key, data)

    def get(self, key: str) -> bytes:
        check_relative(key)
        resp = self._call(key, self._s3.get_object, Bucket=self.bucket, Key=key)
        return resp["Body"].read()

    def exists(self, key: str) -> bool:
        check_relative(key)
        try:
            self._call(key, self._s3.head_object, Bucket=self.bucket, Key=key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        keys: list[str] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        pages = self._call(
            prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        )
        for page in pages:
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._call(
                prefix,
                self._s3.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
        return len(keys)

    def upload_file(self, key: str, path: Path) -> None:
        check_relative(key)
        self._call(key, self._s3.upload_file, str(path), self.bucket, key)

    def download_file(self, key: str, path: Path) -> None:
        check_relative(key)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._call(key, self._s3.download_file, self.bucket, key, str(path))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def _code(exc: BaseException | None) -> str:
    """The S3 error code of a botocore ``ClientError`` ("" for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
