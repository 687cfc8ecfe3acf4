"""Streaming an HTTP(S) download to a local file, with progress and its hashes.

Stdlib only (``urllib``): no new dependency for one GET. The body goes to the
file in chunks (``hash_files`` digests it after); a body shorter than the
server's Content-Length (a dropped connection) is an error, never a file.
Every failure is a ``FetchError`` whose message says what went wrong; the
store turns it into the user-facing ``FailedPrecondition``.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

#: ``progress(bytes_done, bytes_total_or_None)``
Progress = Callable[[int, int | None], None]

CHUNK = 1 << 20


class FetchError(Exception):
    """A download that did not produce the whole file; the message says why."""


def download(url: str, dest: Path, *, timeout: float, progress: Progress | None = None) -> int:
    """GET ``url`` into ``dest`` (created or replaced); the bytes received."""
    request = urllib.request.Request(url, headers={"User-Agent": "preannotate-weights"})
    done = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress:
                progress(0, total)
            with open(dest, "wb") as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except http.client.IncompleteRead as exc:
                        done += len(exc.partial)
                        raise FetchError(_truncated(done, total)) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise FetchError(f"the server answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot reach the server: {exc.reason}") from None
    except TimeoutError:
        raise FetchError(f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"the download failed after {done} bytes: {exc}") from None
    if total is not None and done != total:
        raise FetchError(_truncated(done, total))
    return done


def _truncated(done: int, total: int | None) -> str:
    of = f" of the {total} bytes announced (Content-Length)" if total is not None else ""
    return f"the download was cut short: received {done} bytes{of}"


def hash_files(paths: list[Path]) -> tuple[str, str]:
    """(sha256, md5) of the files' bytes one after the other: one digest for a file,
    or for a checkpoint's index and data shards taken in that order."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda f=f: f.read(CHUNK), b""):
                sha.update(chunk)
                md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()
