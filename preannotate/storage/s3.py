"""Storage in an S3 bucket through boto3 (MinIO, moto's server, AWS)."""

from __future__ import annotations

from pathlib import Path

from preannotate.errors import NotFound, Unavailable
from preannotate.keys import check_relative
from preannotate.storage.base import check_prefix


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
    ) -> None:
        self.bucket = bucket
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
            code = exc.response.get("Error", {}).get("Code", "")
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
