"""Safe unpacking of an export archive (a zip from CVAT or a local file).

Refused, with ``InvalidArgument`` naming the entry or the limit:

- entries whose name is absolute (``/x``, ``C:x``), has a ``..`` part, a
  backslash or a NUL, or would land outside the target folder once resolved;
- symbolic links and other entries that are neither files nor folders;
- encrypted entries and names that appear twice;
- archives whose declared total size or file count passes the limits, and
  entries whose actual bytes pass the size limit while they are extracted
  (a declared size can lie).

On refusal nothing stays behind: the target folder is removed whole.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from preannotate.errors import InvalidArgument

_CHUNK = 1 << 20
_UNIX = 3  # ZipInfo.create_system of archives made on Unix-like systems


@dataclass(frozen=True)
class UnpackLimits:
    """Most bytes (all files together, unpacked) and most files an archive may hold."""

    max_bytes: int
    max_files: int


def _describe(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def check_entry_name(name: str) -> PurePosixPath:
    """The entry's relative path, or ``InvalidArgument`` when it is unsafe."""
    if not name or "\x00" in name or "\\" in name:
        raise InvalidArgument(
            f"archive entry {name!r} is refused: names must use '/' and no NUL or backslash"
        )
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidArgument(f"archive entry {name!r} is refused: absolute names are not allowed")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise InvalidArgument(
            f"archive entry {name!r} is refused: it escapes the target folder ('..')"
        )
    return path


def _kind(info: zipfile.ZipInfo) -> str:
    """'dir', 'file' or the name of a refused kind."""
    mode = info.external_attr >> 16
    # Type bits are only meaningful on Unix-made archives, and many writers
    # (Python's zipfile among them) set permission bits without a type.
    if info.create_system == _UNIX and stat.S_IFMT(mode):
        if stat.S_ISLNK(mode):
            return "symbolic link"
        if stat.S_ISDIR(mode):
            return "dir"
        if not stat.S_ISREG(mode):
            return "special file"
    return "dir" if info.is_dir() else "file"


def _check_listing(infos: list[zipfile.ZipInfo], limits: UnpackLimits, archive: Path) -> None:
    files = [i for i in infos if not i.is_dir()]
    if len(files) > limits.max_files:
        raise InvalidArgument(
            f"archive {archive.name} holds {len(files)} files, more than the limit of "
            f"{limits.max_files} (PREANNOTATE_EXPORT_MAX_FILES)"
        )
    declared = sum(i.file_size for i in files)
    if declared > limits.max_bytes:
        raise InvalidArgument(
            f"archive {archive.name} unpacks to {_describe(declared)}, more than the limit of "
            f"{_describe(limits.max_bytes)} (PREANNOTATE_EXPORT_MAX_BYTES)"
        )
    seen: set[str] = set()
    for info in infos:
        path = check_entry_name(info.filename)
        kind = _kind(info)
        if kind not in ("dir", "file"):
            raise InvalidArgument(
                f"archive entry {info.filename!r} is refused: it is a {kind}, "
                "only files and folders are allowed"
            )
        if info.flag_bits & 0x1:
            raise InvalidArgument(f"archive entry {info.filename!r} is refused: it is encrypted")
        key = path.as_posix()
        if kind == "file":
            if key in seen:
                raise InvalidArgument(f"archive entry {info.filename!r} appears twice")
            seen.add(key)


def safe_unpack(archive: Path, target: Path, limits: UnpackLimits) -> list[Path]:
    """Unpack ``archive`` into ``target`` (created; must not exist); returns the files.

    Raises ``InvalidArgument`` for an unsafe or oversize archive and removes
    ``target`` on any failure.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise FileExistsError(f"unpack target {target} exists already")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidArgument(f"{archive.name} is not a readable zip archive: {exc}") from exc
    target.mkdir(parents=True)
    try:
        with zf:
            infos = zf.infolist()
            _check_listing(infos, limits, archive)
            return _extract(zf, infos, target.resolve(), limits, archive)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _extract(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    root: Path,
    limits: UnpackLimits,
    archive: Path,
) -> list[Path]:
    written = 0
    files: list[Path] = []
    for info in infos:
        dest = (root / check_entry_name(info.filename)).resolve()
        if dest != root and root not in dest.parents:
            raise InvalidArgument(
                f"archive entry {info.filename!r} is refused: it resolves outside the target folder"
            )
        if _kind(info) == "dir":
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(dest, "xb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > limits.max_bytes:
                        raise InvalidArgument(
                            f"archive {archive.name} unpacks to more than the limit of "
                            f"{_describe(limits.max_bytes)} (PREANNOTATE_EXPORT_MAX_BYTES); "
                            f"passed while extracting {info.filename!r}"
                        )
                    out.write(chunk)
        except FileExistsError as exc:
            raise InvalidArgument(f"archive entry {info.filename!r} appears twice") from exc
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
            raise InvalidArgument(
                f"archive entry {info.filename!r} of {archive.name} is damaged: {exc}"
            ) from exc
        except NotImplementedError as exc:
            raise InvalidArgument(
                f"archive entry {info.filename!r} uses an unsupported compression: {exc}"
            ) from exc
        files.append(dest)
    return files
