"""Shards of the TFRecord container: one split's records in numbered files.

The container itself (framing, masked CRC32C, reading back) is
``preannotate.tfrecord``; its names are re-exported here for the exporter's
callers. ``ShardedWriter`` splits one split's records into files of at most a
number of bytes and/or records, named ``<split>-00000-of-00003.tfrecord``
once the count is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from preannotate.tfrecord import (
    RECORD_OVERHEAD,
    CorruptRecord,
    frame,
    masked_crc32c,
    read_records,
    write_record,
)

__all__ = [
    "RECORD_OVERHEAD",
    "CorruptRecord",
    "Shard",
    "ShardedWriter",
    "frame",
    "masked_crc32c",
    "read_records",
    "write_record",
]


@dataclass
class Shard:
    path: Path
    records: int = 0
    bytes: int = 0


@dataclass
class ShardedWriter:
    """Writes records of one split into numbered shard files under ``folder``.

    A new shard starts when the next record would pass ``max_bytes`` (a shard
    always takes at least one record) or when ``max_records`` are in it
    (0: no limit). ``close()`` renames the shards to their final
    ``<split>-NNNNN-of-MMMMM.tfrecord`` names and returns them.
    """

    folder: Path
    split: str
    max_bytes: int
    max_records: int = 0
    shards: list[Shard] = field(default_factory=list)
    _out: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        size = len(data) + RECORD_OVERHEAD
        current = self.shards[-1] if self.shards else None
        if (
            current is None
            or (current.records and current.bytes + size > self.max_bytes)
            or (self.max_records and current.records >= self.max_records)
        ):
            current = self._next_shard()
        assert self._out is not None
        current.bytes += write_record(self._out, data)
        current.records += 1

    def _next_shard(self) -> Shard:
        if self._out is not None:
            self._out.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = Shard(self.folder / f".{self.split}-{len(self.shards):05d}.partial")
        self._out = open(shard.path, "wb")  # noqa: SIM115 - closed by the next shard or close()
        self.shards.append(shard)
        return shard

    def close(self) -> list[Shard]:
        if self._out is not None:
            self._out.close()
            self._out = None
        total = len(self.shards)
        for index, shard in enumerate(self.shards):
            final = self.folder / f"{self.split}-{index:05d}-of-{total:05d}.tfrecord"
            shard.path.rename(final)
            shard.path = final
        return self.shards

    def abort(self) -> None:
        """Close and delete whatever was written."""
        if self._out is not None:
            self._out.close()
            self._out = None
        for shard in self.shards:
            shard.path.unlink(missing_ok=True)
        self.shards.clear()
