"""The deployment's pretrained weights in storage: fetched once, verified, manifest last.

Layout (deployment-wide, not per namespace)::

    weights/<model-type>/<sha256[:12]>/   the checkpoint files (<stem>.index, <stem>.data-*)
                                          or the Keras .h5 file
    weights/<model-type>/pin/pinned.json  the sha256 of the first fetch, where the
                                          publisher gives none
    weights/<model-type>/manifest.json    written last: what is installed

``pull`` downloads from ``weights_urls[model]``, else ``<mirror>/<file name>``,
else the official URL; ``import_file`` takes a file downloaded elsewhere. Both
check the size the server announced, the publisher's hash (sha256 or MD5) or
else the pinned one, unpack an archive safely, upload the checkpoint files,
and write the manifest last. Any failure deletes what the attempt wrote and
raises ``FailedPrecondition`` naming the way out (``preannotate weights pull``
with a mirror, or ``preannotate weights import``). Blocking, like ``Storage``.

Concurrent pulls of one model type (two trainers starting at once) may both
fetch; the file is the same (or refused by the pin), so they write the same
folder, and neither deletes a folder that the manifest names at that moment.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from preannotate import layout
from preannotate.errors import BadEvent, FailedPrecondition, NotFound
from preannotate.storage import MANIFEST, Storage
from preannotate.storage.manifest import read_manifest
from preannotate.weights import files
from preannotate.weights.fetch import FetchError, Progress, download, hash_files
from preannotate.weights.sources import WeightsSource, source_for

ROOT = "weights"
PIN = "pin/pinned.json"


def model_root(model_type: str) -> str:
    """``weights/<model-type>/``."""
    from preannotate.keys import check_name

    return f"{ROOT}/{check_name(model_type, 'model type')}/"


@dataclass(frozen=True)
class Installed:
    """What ``weights/<model-type>/manifest.json`` says is installed."""

    model_type: str
    sha256: str
    url: str
    format: str
    covers: str
    dataset: str
    #: tf-checkpoint: the checkpoint prefix (``<key>.index``, ``<key>.data-*``);
    #: keras-h5: the .h5 object's key.
    key: str


class _Refused(Exception):
    """One check of a pull or import failed; the message says which."""


class WeightsStore:
    """Pulls, imports and reads the pretrained weights of every model type."""

    def __init__(
        self,
        storage: Storage,
        *,
        mirror: str = "",
        urls: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.storage = storage
        self.mirror = mirror.rstrip("/")
        self.urls = dict(urls or {})
        self.timeout = timeout

    @classmethod
    def from_settings(cls, storage: Storage, settings) -> WeightsStore:
        """From a ``ServiceSettings``: weights_mirror, weights_urls, weights_timeout_seconds."""
        return cls(
            storage,
            mirror=settings.weights_mirror,
            urls=settings.weights_urls,
            timeout=settings.weights_timeout_seconds,
        )

    # --- reading ------------------------------------------------------------

    def url_for(self, model_type: str) -> str:
        """Where ``pull`` fetches from: the override, the mirror, or the official URL."""
        source = source_for(model_type)
        if model_type in self.urls:
            return self.urls[model_type]
        if self.mirror:
            return f"{self.mirror}/{source.file_name}"
        return source.url

    def installed(self, model_type: str) -> Installed | None:
        """The installed weights, or None when there are none or they are incomplete."""
        root = model_root(model_type)
        try:
            manifest = read_manifest(self.storage, root)
        except BadEvent:  # a manifest that is not JSON is not an install
            return None
        if manifest is None:
            return None
        try:
            found = Installed(
                model_type=model_type,
                sha256=manifest["sha256"],
                url=manifest["url"],
                format=manifest["format"],
                covers=manifest["covers"],
                dataset=manifest["dataset"],
                key=manifest["key"],
            )
        except (KeyError, TypeError):
            return None
        if not found.key.startswith(root):
            return None
        if found.format == "tf-checkpoint":
            return found if layout.complete_checkpoint(self.storage, found.key) else None
        return found if self.storage.exists(found.key) else None

    def pinned(self, model_type: str) -> str | None:
        """The sha256 recorded at the first fetch (sources without a published hash)."""
        try:
            return json.loads(self.storage.get(model_root(model_type) + PIN))["sha256"]
        except NotFound:
            return None

    # --- writing ------------------------------------------------------------

    def ensure(self, model_type: str, *, progress: Progress | None = None) -> Installed:
        """The installed weights; pulled first when there are none."""
        return self.installed(model_type) or self.pull(model_type, progress=progress)

    def pull(self, model_type: str, *, progress: Progress | None = None) -> Installed:
        """Download, verify and install the weights of ``model_type``."""
        source = source_for(model_type)
        url = self.url_for(model_type)
        with _workdir() as work:
            try:
                local = self._download(source, url, work, progress)
                return self._install(source, url, local, work)
            except (FetchError, files.BadFile, _Refused) as exc:
                raise FailedPrecondition(_message(source, url, str(exc))) from None

    def import_file(self, model_type: str, path: Path) -> Installed:
        """Install a file downloaded elsewhere: an archive, an .h5, or a checkpoint's
        ``.index`` (its data shards beside it)."""
        source = source_for(model_type)
        path = Path(path)
        url = f"import:{path.name}"
        try:
            if not path.is_file():
                raise _Refused(f"{path} is not a file")
            local = files.checkpoint_files(path) if files.kind(path.name) == "index" else [path]
            with _workdir() as work:
                return self._install(source, url, local, work)
        except (files.BadFile, _Refused) as exc:
            raise FailedPrecondition(_message(source, url, str(exc))) from None

    def _download(
        self, source: WeightsSource, url: str, work: Path, progress: Progress | None
    ) -> list[Path]:
        base, _, name = url.rpartition("/")
        names = [name]
        if files.kind(name) == "index":
            stem = name[: -len(".index")]
            if source.data_files and source.file_name == name:
                names += list(source.data_files)
            else:
                names.append(f"{stem}.data-00000-of-00001")
        fetched = work / "fetched"
        fetched.mkdir()
        paths = []
        for each in names:
            target = fetched / each
            download(f"{base}/{each}", target, timeout=self.timeout, progress=progress)
            paths.append(target)
        return paths

    def _install(self, source: WeightsSource, url: str, local: list[Path], work: Path) -> Installed:
        first = local[0]
        file_kind = files.kind(first.name)
        if source.format == "keras-h5" and file_kind != "h5":
            raise _Refused(f"{first.name} is not a Keras .h5 file, which {source.model_type} needs")
        if source.format == "tf-checkpoint" and file_kind == "h5":
            raise _Refused(
                f"{first.name} is a Keras .h5 file; {source.model_type} needs a checkpoint"
            )
        sha256, md5 = hash_files(local)
        self._verify(source, sha256, md5)
        if file_kind == "archive":
            unpacked = work / "unpacked"
            files.unpack(first, unpacked)
            local = files.find_checkpoint(unpacked, source.checkpoint)
        elif file_kind == "h5":
            files.check_h5(first)
        return self._upload(source, url, sha256, local)

    def _verify(self, source: WeightsSource, sha256: str, md5: str) -> None:
        if source.sha256 is not None and sha256 != source.sha256:
            raise _Refused(f"sha256 {sha256} is not the published {source.sha256}")
        if source.md5 is not None and md5 != source.md5:
            raise _Refused(f"MD5 {md5} is not the published {source.md5}")
        if source.sha256 is None:
            pinned = self.pinned(source.model_type)
            if pinned is not None and pinned != sha256:
                raise _Refused(
                    f"sha256 {sha256} differs from {pinned}, recorded at this deployment's "
                    f"first fetch ({model_root(source.model_type)}{PIN}); the publisher gives "
                    "no hash, so a different file is refused. To accept another release, "
                    "delete that pin first"
                )

    def _upload(self, source: WeightsSource, url: str, sha256: str, local: list[Path]) -> Installed:
        root = model_root(source.model_type)
        folder = f"{root}{sha256[:12]}/"
        before = self.installed(source.model_type)
        keep_folder = before is not None and before.key.startswith(folder)
        pin_created = False
        committed = False
        try:
            entries = {}
            names = [p.name for p in local] if len(local) > 1 else [_stored_name(source, local[0])]
            for path, name in zip(local, names, strict=True):
                key = folder + name
                if not self.storage.exists(key):
                    self.storage.upload_file(key, path)
                entries[name] = {"size": path.stat().st_size, "sha256": hash_files([path])[0]}
            if source.format == "tf-checkpoint":
                key = folder + local[0].name[: -len(".index")]
                layout.require_checkpoint(self.storage, key)
            else:
                key = folder + names[0]
            if source.sha256 is None:
                pin_created = self._pin(source.model_type, sha256, url)
            manifest = {
                "model_type": source.model_type,
                "sha256": sha256,
                "url": url,
                "format": source.format,
                "covers": source.covers,
                "dataset": source.dataset,
                "key": key,
                "files": entries,
                "reference": source.reference,
                "licence": source.licence,
                "created_at": datetime.now(UTC).isoformat(),
            }
            self.storage.put(
                root + MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode()
            )
            committed = True
        finally:
            if not committed:
                # A concurrent pull of the same file may have installed this folder
                # meanwhile: it is deleted only while no manifest names it.
                if not keep_folder and not self._names(source.model_type, folder):
                    self.storage.delete_prefix(folder)
                if pin_created:
                    self.storage.delete_prefix(root + PIN.rpartition("/")[0] + "/")
        # The install this one replaced goes, unless a concurrent pull has put it back.
        old = before.key.rpartition("/")[0] + "/" if before is not None else ""
        if old and not keep_folder and not self._names(source.model_type, old):
            self.storage.delete_prefix(old)
        return Installed(
            source.model_type, sha256, url, source.format, source.covers, source.dataset, key
        )

    def _names(self, model_type: str, folder: str) -> bool:
        """Whether the manifest, as stored now, names a key in ``folder``."""
        now = self.installed(model_type)
        return now is not None and now.key.startswith(folder)

    def _pin(self, model_type: str, sha256: str, url: str) -> bool:
        """Record ``sha256`` as the first fetch's; True when this call created the pin."""
        body = json.dumps(
            {"sha256": sha256, "url": url, "at": datetime.now(UTC).isoformat()}, indent=2
        ).encode()
        if self.storage.put_if_absent(model_root(model_type) + PIN, body):
            return True
        pinned = self.pinned(model_type)
        if pinned != sha256:
            raise _Refused(f"sha256 {sha256} differs from {pinned}, pinned meanwhile")
        return False


def _stored_name(source: WeightsSource, path: Path) -> str:
    """A single file keeps its name in a checkpoint; an .h5 is stored as the published one."""
    return source.file_name if source.format == "keras-h5" else path.name


@contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="preannotate-weights-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _message(source: WeightsSource, url: str, what: str) -> str:
    return (
        f"pretrained weights for {source.model_type} from {url}: {what}. Nothing was stored. "
        f"Fetch them with `preannotate weights pull {source.model_type}` (without internet "
        f"access: set PREANNOTATE_WEIGHTS_MIRROR to a server that serves {source.file_name}, "
        f"or PREANNOTATE_WEIGHTS_URLS), or download {source.url} elsewhere and run "
        f"`preannotate weights import {source.model_type} FILE`"
    )
