"""The local side of a weights file: what kind it is, safe unpacking, the checkpoint in it.

- ``kind(name)``: an archive (``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``), a
  Keras ``.h5`` file, or a checkpoint's ``.index`` file (data shards beside it).
- ``unpack``: tar and zip archives, refusing absolute paths, ``..``, links
  and devices (nothing is written outside the target folder).
- ``find_checkpoint``: the one complete checkpoint (``<stem>.index`` and every
  ``<stem>.data-i-of-N``) in a folder tree, or the one the source names.
"""

from __future__ import annotations

import re
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Literal

Kind = Literal["archive", "h5", "index"]
ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
_DATA = re.compile(r"^(?P<stem>.+)\.data-(?P<shard>\d{5})-of-(?P<count>\d{5})$")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class BadFile(Exception):
    """A file or archive that cannot be the weights; the message says why."""


def kind(name: str) -> Kind:
    lower = name.lower()
    if lower.endswith(ARCHIVES):
        return "archive"
    if lower.endswith(".h5"):
        return "h5"
    if lower.endswith(".index"):
        return "index"
    raise BadFile(
        f"{name!r} is none of the kinds weights come in: an archive ({', '.join(ARCHIVES)}), "
        "a Keras .h5 file, or a checkpoint's .index file with its data shards beside it"
    )


def check_h5(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            raise BadFile(f"{path.name} is not an HDF5 (.h5) file")


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts or "\\" in name:
        raise BadFile(f"the archive holds an unsafe path {name!r} (absolute or with '..')")
    return path


def unpack(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``: regular files and folders only."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _safe_member(info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise BadFile(f"the archive holds a link {info.filename!r}")
                z.extractall(dest)
            return
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _safe_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise BadFile(f"the archive holds {member.name!r}, not a file or folder")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise BadFile(f"{archive.name} is not a readable archive: {exc}") from None


def checkpoint_files(index: Path) -> list[Path]:
    """``<stem>.index`` and its data shards beside it, index first; ``BadFile`` naming
    what is missing when the set is incomplete."""
    stem = index.name[: -len(".index")]
    shards: dict[int, set[int]] = {}
    for path in index.parent.iterdir():
        match = _DATA.fullmatch(path.name)
        if match and match["stem"] == stem:
            shards.setdefault(int(match["count"]), set()).add(int(match["shard"]))
    if len(shards) != 1 or 0 in shards:
        found = "none" if not shards else f"-of- counts {sorted(shards)}"
        raise BadFile(
            f"checkpoint {stem} in {index.parent} needs its data shards "
            f"{stem}.data-<i>-of-<N> beside {index.name} (found {found})"
        )
    ((count, have),) = shards.items()
    missing = [i for i in range(count) if i not in have]
    if missing:
        names = ", ".join(f"{stem}.data-{i:05d}-of-{count:05d}" for i in missing)
        raise BadFile(f"checkpoint {stem} lacks {names}")
    data = [index.parent / f"{stem}.data-{i:05d}-of-{count:05d}" for i in range(count)]
    return [index, *data]


def find_checkpoint(root: Path, prefix: str | None = None) -> list[Path]:
    """The files of the checkpoint in ``root``'s tree: the one named ``prefix``, or
    the only ``*.index`` there is."""
    indexes = sorted(p for p in root.rglob("*.index") if p.is_file())
    if prefix is not None:
        indexes = [p for p in indexes if p.name == f"{prefix}.index"]
    if len(indexes) != 1:
        what = f"{prefix}.index" if prefix else "*.index"
        found = ", ".join(p.relative_to(root).as_posix() for p in indexes) or "none"
        raise BadFile(f"the archive must hold exactly one checkpoint {what} (found {found})")
    return checkpoint_files(indexes[0])
