"""In-process TensorFlow: SavedModels loaded in this process, the most recently
used kept within a memory budget.

A model is copied from storage into a local cache folder once (written to a
temporary folder, then renamed, so a half copy is never loaded); a storage
prefix that is already a local folder is loaded where it lies. The budget
counts each model's size on disk (saved_model.pb + variables), a fair proxy
for what its weights take in memory; when a load would go over it, the least
recently used models are dropped first (calls still running on them finish).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from preannotate import keys
from preannotate.errors import FailedPrecondition, NotFound
from preannotate.storage import MANIFEST, Storage
from services.inference import metrics
from services.inference.backends.base import (
    ImageInput,
    RawOutput,
    encoded_bytes,
    size_groups,
    split_outputs,
)
from services.inference.registry import ModelEntry

_COMPLETE = ".complete"


@dataclass
class _Loaded:
    """A loaded SavedModel and the signature this backend calls."""

    model: Any  # keeps the loaded object (and so its functions) alive
    function: Any
    input_name: str
    takes_bytes: bool
    size_bytes: int

    def run(self, images: Sequence[ImageInput]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        if self.takes_bytes:
            data = [encoded_bytes(img) for img in images]
            tensor = tf.constant(data, dtype=tf.string)
        else:
            tensor = tf.constant(np.stack([img.pixels for img in images]), dtype=tf.uint8)
        outputs = self.function(**{self.input_name: tensor})
        return {k: v.numpy() for k, v in outputs.items()}


def pick_signature(loaded: Any, label: str) -> tuple[Any, str, bool]:
    """(function, input name, takes bytes) of a loaded detection SavedModel.

    The image-tensor signature (one uint8 input of rank 4) is preferred: the
    pixels are decoded already. A model with only the encoded-image signature
    (one string input) is called with the image bytes.
    """
    found_bytes = None
    for name, function in loaded.signatures.items():
        specs = function.structured_input_signature[1]
        if len(specs) != 1:
            continue
        ((input_name, spec),) = specs.items()
        if spec.dtype.name == "uint8" and spec.shape.rank == 4:
            return function, input_name, False
        if spec.dtype.name == "string" and found_bytes is None:
            found_bytes = (function, input_name, True)
        del name
    if found_bytes is not None:
        return found_bytes
    raise FailedPrecondition(
        f"model {label} has no image signature: expected one input of uint8 [-1,-1,-1,3] or "
        f"string [-1]; it has {sorted(loaded.signatures)}"
    )


class InProcessBackend:
    """Runs SavedModels with TensorFlow in this process."""

    name = "inprocess"

    def __init__(
        self,
        storage: Storage,
        cache_dir: Path,
        memory_budget_bytes: int,
        concurrency: int = 1,
    ) -> None:
        self.storage = storage
        self.cache_dir = Path(cache_dir)
        self.budget = memory_budget_bytes
        self.concurrency = concurrency
        self._loaded: OrderedDict[tuple[str, str, int], _Loaded] = OrderedDict()
        self._loading: dict[tuple[str, str, int], asyncio.Future[_Loaded]] = {}
        self._slots: asyncio.Semaphore | None = None
        self.evicted: deque[str] = deque(maxlen=1024)  # latest evictions, bounded

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency)

    async def close(self) -> None:
        self._loaded.clear()
        self._count()

    def _count(self) -> None:
        metrics.MODELS_LOADED.labels(self.name).set(len(self._loaded))

    async def sync(self) -> None:
        return None  # models load on first use

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "loaded": ["/".join(map(str, k)) for k in self._loaded],
            "loaded_bytes": sum(m.size_bytes for m in self._loaded.values()),
            "budget_bytes": self.budget,
            "evicted": list(self.evicted),
        }

    async def prepare(self, model: ModelEntry) -> None:
        await asyncio.to_thread(self._local_dir, model)

    async def predict(self, model: ModelEntry, images: Sequence[ImageInput]) -> list[RawOutput]:
        if not images:
            return []
        loaded = await self._get(model)
        if self._slots is None:
            await self.start()
        assert self._slots is not None
        results: list[RawOutput | None] = [None] * len(images)
        for group in size_groups(images):
            batch = [images[i] for i in group]
            async with self._slots:
                outputs = await asyncio.to_thread(loaded.run, batch)
            for i, out in zip(group, split_outputs(outputs, len(group), model.label), strict=True):
                results[i] = out
        return [r for r in results if r is not None]

    # -- loading and the LRU ------------------------------------------------------

    async def _get(self, model: ModelEntry) -> _Loaded:
        key = model.key
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            try:
                loaded = await asyncio.to_thread(self._load, model)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: waiters get it, no "never retrieved" warning
                raise
            finally:
                self._loading.pop(key, None)
            self._loaded[key] = loaded
            self._evict(keep=key)
            self._count()
            pending.set_result(loaded)
            return loaded
        return await asyncio.shield(pending)

    def _evict(self, keep: tuple[str, str, int]) -> None:
        total = sum(m.size_bytes for m in self._loaded.values())
        for key in list(self._loaded):
            if total <= self.budget:
                break
            if key == keep:
                continue
            total -= self._loaded.pop(key).size_bytes
            self.evicted.append("/".join(map(str, key)))

    def _load(self, model: ModelEntry) -> _Loaded:
        import tensorflow as tf

        path = self._local_dir(model)
        try:
            loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise FailedPrecondition(
                f"model {model.label} does not load from {path}: {exc}"
            ) from exc
        function, input_name, takes_bytes = pick_signature(loaded, model.label)
        size = sum(
            p.stat().st_size
            for p in [path / "saved_model.pb", *(path / "variables").glob("*")]
            if p.is_file()
        )
        return _Loaded(loaded, function, input_name, takes_bytes, size)

    def _local_dir(self, model: ModelEntry) -> Path:
        """A local folder holding the model's SavedModel (copied from storage once)."""
        prefix = model.serving_prefix
        in_place = Path(self.storage.uri(prefix.rstrip("/")))
        if in_place.is_dir() and (in_place / "saved_model.pb").is_file():
            return in_place
        target = self.cache_dir / model.namespace / model.name / str(model.version)
        if (target / _COMPLETE).is_file():
            return target
        keys_ = [k for k in self.storage.list(prefix) if not k.endswith("/" + MANIFEST)]
        if not any(k.endswith("/saved_model.pb") for k in keys_):
            raise NotFound(f"model {model.label}: no saved_model.pb under {prefix} in storage")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{model.version}-", dir=target.parent))
        try:
            for key in keys_:
                rel = keys.check_relative(key[len(prefix) :])
                self.storage.download_file(key, tmp / rel)
            (tmp / _COMPLETE).write_text(model.label)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
