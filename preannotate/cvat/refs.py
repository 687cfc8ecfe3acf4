"""Where a ``CvatRef.url`` (and a link CVAT gives) may point.

The token only ever goes to the configured CVAT (same scheme, host and port):
``check_origin`` refuses a link CVAT gave that leads elsewhere (a pagination
link, a result_url), ``check_same_server`` a request that names another CVAT.
A ``file://`` URL names a local path instead (``file_ref_path``), which must
stay under a configured root. Local paths are off by default in every
service; a deployment that turns them on must name the root too
(``check_file_root``, called by the settings classes); the embedded mode turns
them on under the folder that holds its storage (``embedded_file_urls``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from preannotate.cvat.settings import CvatConnection
from preannotate.errors import FailedPrecondition, InvalidArgument


def origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) of a URL, the default port filled in."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, f"{(parts.hostname or '').lower()}:{port}"


def check_origin(url: str, connection: CvatConnection, what: str = "CVAT pointed at") -> str:
    """``url`` if it is on the configured CVAT; a link CVAT gave that leads elsewhere
    (a pagination link, a result_url) is refused: the token is not sent there."""
    if origin(url) != origin(connection.url):
        raise FailedPrecondition(
            f"{what} {url!r}, another server than PREANNOTATE_CVAT_URL {connection.url!r}; "
            "the token is not sent there. Set PREANNOTATE_CVAT_URL to the address CVAT calls "
            "itself"
        )
    return url


def check_same_server(requested: str, configured: str) -> None:
    """Refuse a CVAT URL that is not the configured one (the token must not travel)."""
    if requested and origin(requested) != origin(configured):
        raise InvalidArgument(
            f"CVAT URL {requested!r} is not this deployment's CVAT ({configured!r}, "
            "PREANNOTATE_CVAT_URL); leave it empty or name the configured server"
        )


def is_file_ref(url: str) -> bool:
    """Whether a ``CvatRef.url`` names a local path (``file://...``) rather than CVAT."""
    return url.startswith("file://")


def file_ref_path(url: str, root: Path | None, root_variable: str) -> Path:
    """The resolved local path a ``file://`` URL names, refused unless it is an
    absolute local path that lies at or under ``root`` (no root: every path is
    refused); ``root_variable`` names the setting in the refusal. The answer
    never depends on whether the path exists."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise InvalidArgument(f"{url!r} is not a file:// URL")
    if parts.netloc not in ("", "localhost"):
        raise InvalidArgument(f"{url!r}: a file:// URL must name a local path (file:///...)")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise InvalidArgument(f"{url!r}: a file:// URL must hold an absolute path")
    resolved = path.resolve()
    if root is None:
        raise InvalidArgument(f"{url!r}: no folder is allowed for file:// URLs ({root_variable})")
    if not is_under(resolved, root):
        # Same answer whether the path exists or not: no oracle of the host's files.
        raise InvalidArgument(f"{url!r} is outside {root} ({root_variable}): move it there")
    return resolved


def check_file_root(
    allowed: bool, root: Path | None, allow_variable: str, root_variable: str
) -> None:
    """For a settings validator: ``ValueError`` when local paths are on without a root."""
    if allowed and root is None:
        raise ValueError(
            f"{allow_variable} is on but {root_variable} is not set: name the folder that "
            "file:// URLs may point into (or turn the option off)"
        )


def embedded_file_urls(root: Path) -> dict[str, object]:
    """Settings of the embedded mode (``preannotate up``, the quickstart): file://
    URLs on, under ``root``; a ``PREANNOTATE_*`` variable that sets one wins."""
    values: dict[str, object] = {
        "export_allow_file_import": True,
        "export_file_import_root": root,
        "inference_allow_file_targets": True,
        "inference_file_target_root": root,
    }
    return {k: v for k, v in values.items() if f"PREANNOTATE_{k.upper()}" not in os.environ}


def is_under(path: Path, root: Path) -> bool:
    """Whether ``path`` (resolved) is ``root`` (resolved) or lies under it."""
    base = Path(root).resolve()
    return path == base or base in path.parents
