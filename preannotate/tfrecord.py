"""The TFRecord container, framed and read without TensorFlow.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little endian)
    uint32 masked CRC32C of the 8 length bytes
    bytes  data[length]
    uint32 masked CRC32C of the data

with CRC32C masked as TensorFlow's ``crc32c::Mask`` does: rotate right by 15
bits and add 0xa282ead8. The exporter writes datasets with ``frame`` /
``write_record``; readers check both CRCs with ``iter_records`` (bytes in
memory) or ``read_records`` (a file).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import google_crc32c

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
#: Bytes before a record's data: its length and the length's CRC.
_HEADER = 8 + 4
#: Framing bytes added to every record: length, its CRC, the data's CRC.
RECORD_OVERHEAD = _HEADER + 4


class CorruptRecord(ValueError):
    """A TFRecord file whose framing or checksums are wrong."""


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


def iter_records(blob: bytes) -> Iterator[bytes]:
    """The records of one TFRecord file's bytes, each checked by both CRCs.

    Raises ``CorruptRecord`` at the first record whose framing is wrong.
    """
    pos, end = 0, len(blob)
    while pos < end:
        if end - pos < _HEADER:
            raise CorruptRecord(f"truncated record header at byte {pos}")
        head = blob[pos : pos + 8]
        (length,) = struct.unpack("<Q", head)
        (head_crc,) = struct.unpack("<I", blob[pos + 8 : pos + _HEADER])
        if head_crc != masked_crc32c(head):
            raise CorruptRecord(f"bad length CRC checksum at byte {pos}")
        start, stop = pos + _HEADER, pos + _HEADER + length
        if stop + 4 > end:
            raise CorruptRecord(f"truncated record at byte {pos}: it runs past the end of the file")
        data = blob[start:stop]
        (data_crc,) = struct.unpack("<I", blob[stop : stop + 4])
        if data_crc != masked_crc32c(data):
            raise CorruptRecord(f"bad data CRC checksum in the record at byte {pos}")
        yield data
        pos = stop + 4


def read_records(path: Path) -> list[bytes]:
    """Every record of a TFRecord file; ``CorruptRecord`` names the file."""
    try:
        return list(iter_records(Path(path).read_bytes()))
    except CorruptRecord as exc:
        raise CorruptRecord(f"{path}: {exc}") from exc
