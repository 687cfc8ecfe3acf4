"""Safe unpacking: what is refused, with which message, and that nothing stays behind."""

from __future__ import annotations

import struct
import zipfile

import pytest

from preannotate.errors import InvalidArgument
from services.exporter.unpack import UnpackLimits, safe_unpack
from tests.exporter.cocozip import raw_zip, symlink_entry

LIMITS = UnpackLimits(max_bytes=10_000, max_files=10)


def _refused(tmp_path, entries, match, limits=LIMITS):
    archive = raw_zip(tmp_path / "a.zip", entries)
    target = tmp_path / "out"
    with pytest.raises(InvalidArgument, match=match):
        safe_unpack(archive, target, limits)
    assert not target.exists(), "a refused archive must leave nothing behind"
    assert not (tmp_path / "x").exists()


def test_unpacks_files_and_folders(tmp_path):
    archive = raw_zip(
        tmp_path / "a.zip",
        [("annotations/", b""), ("annotations/i.json", b"{}"), ("images/default/a/b.jpg", b"jp")],
    )
    files = safe_unpack(archive, tmp_path / "out", LIMITS)
    assert sorted(p.relative_to((tmp_path / "out").resolve()).as_posix() for p in files) == [
        "annotations/i.json",
        "images/default/a/b.jpg",
    ]
    assert (tmp_path / "out/images/default/a/b.jpg").read_bytes() == b"jp"


def test_refuses_dot_dot(tmp_path):
    _refused(tmp_path, [("ok.txt", b"1"), ("../x", b"evil")], r"'\.\./x'.*escapes")


def test_refuses_dot_dot_inside(tmp_path):
    _refused(tmp_path, [("images/../../x", b"evil")], r"escapes")


def test_refuses_absolute_names(tmp_path):
    _refused(tmp_path, [(str(tmp_path / "x"), b"evil")], r"absolute names are not allowed")


def test_refuses_windows_names(tmp_path):
    _refused(tmp_path, [("..\\x", b"evil")], r"backslash")
    _refused(tmp_path, [("C:/x", b"evil")], r"absolute")


def test_refuses_symlinks(tmp_path):
    _refused(
        tmp_path,
        [("a.txt", b"1"), symlink_entry("images/link.jpg", "/etc/passwd")],
        r"'images/link.jpg'.*symbolic link",
    )


def test_refuses_too_many_files(tmp_path):
    entries = [(f"f{i}.txt", b"x") for i in range(11)]
    _refused(
        tmp_path,
        entries,
        r"holds 11 files, more than the limit of 10 "
        r"\(PREANNOTATE_EXPORT_MAX_FILES\)",
    )


def test_refuses_oversize_archives_by_declared_size(tmp_path):
    # 20 kB of zeros compresses to almost nothing: the unpacked size is what counts.
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", bytes(20_000))
    assert archive.stat().st_size < 1000
    with pytest.raises(
        InvalidArgument,
        match=r"unpacks to 19.5 KiB, more than the limit of "
        r"9.8 KiB \(PREANNOTATE_EXPORT_MAX_BYTES\)",
    ):
        safe_unpack(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def _lie_about_sizes(path, new_size):
    """Rewrite the declared (uncompressed) size of every entry in the central directory."""
    blob = bytearray(path.read_bytes())
    pos = blob.find(b"PK\x01\x02")
    while pos != -1:
        struct.pack_into("<I", blob, pos + 24, new_size)
        pos = blob.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(blob))


def test_refuses_an_archive_that_lies_about_its_sizes(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.bin", bytes(8_000))
        zf.writestr("b.bin", bytes(8_000))
    _lie_about_sizes(archive, 10)
    with pytest.raises(InvalidArgument, match=r"'a.bin'.*(damaged|limit)"):
        safe_unpack(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_counts_actual_bytes_while_extracting(tmp_path, monkeypatch):
    # Declared sizes pass; the bytes read do not (as if the declared sizes were wrong).
    archive = raw_zip(tmp_path / "a.zip", [("a.bin", bytes(6_000)), ("b.bin", bytes(6_000))])
    from services.exporter import unpack

    honest = unpack._check_listing
    monkeypatch.setattr(
        unpack,
        "_check_listing",
        lambda infos, limits, a: honest(infos, UnpackLimits(1 << 30, limits.max_files), a),
    )
    with pytest.raises(InvalidArgument, match=r"more than the limit of 9.8 KiB.*'b.bin'"):
        safe_unpack(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_refuses_duplicate_entries(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        archive = raw_zip(tmp_path / "a.zip", [("a.txt", b"1"), ("a.txt", b"2")])
    with pytest.raises(InvalidArgument, match="appears twice"):
        safe_unpack(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_refuses_what_is_not_a_zip(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(InvalidArgument, match="not a readable zip archive"):
        safe_unpack(path, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()
