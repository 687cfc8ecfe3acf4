"""The TFRecord container, written without TensorFlow, and shards of it.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little endian)
    uint32 masked CRC32C of the 8 length bytes
    bytes  data[length]
    uint32 masked CRC32C of the data

with CRC32C masked as TensorFlow's ``crc32c::Mask`` does: rotate right by 15
bits and add 0xa282ead8. ``ShardedWriter`` splits one split's records into
files of at most a number of bytes and/or records, named
``<split>-00000-of-00003.tfrecord`` once the count is known.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import google_crc32c

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
#: Framing bytes added to every record: length, its CRC, the data's CRC.
RECORD_OVERHEAD = 8 + 4 + 4


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


def frame(data: bytes) -> bytes:
    """One record as it lies in a TFRecord file."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (
            length,
            struct.pack("<I", masked_crc32c(length)),
            data,
            struct.pack("<I", masked_crc32c(data)),
        )
    )


def write_record(out: BinaryIO, data: bytes) -> int:
    """Append one framed record to ``out``; returns the bytes written."""
    framed = frame(data)
    out.write(framed)
    return len(framed)


def read_records(path: Path) -> list[bytes]:
    """Every record of a TFRecord file, checking both CRCs (for tests and tools)."""
    records = []
    blob = Path(path).read_bytes()
    pos = 0
    while pos < len(blob):
        if pos + 12 > len(blob):
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        length_bytes = blob[pos : pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", blob[pos + 8 : pos + 12])
        if length_crc != masked_crc32c(length_bytes):
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(blob):
            raise ValueError(f"{path}: truncated record at byte {pos}")
        data = blob[start:end]
        (data_crc,) = struct.unpack("<I", blob[end : end + 4])
        if data_crc != masked_crc32c(data):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        records.append(data)
        pos = end + 4
    return records


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
