"""Serving backends: one interface (``Backend``) over TF Serving and in-process TensorFlow.

``make_backend(settings, storage, catalog)`` builds the one the settings name;
the rest of the service only sees ``Backend``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from services.inference.backends.base import Backend, ImageInput, RawOutput

if TYPE_CHECKING:
    from preannotate.storage import Storage
    from services.inference.registry import ModelEntry
    from services.inference.settings import InferenceSettings

__all__ = ["Backend", "ImageInput", "RawOutput", "make_backend"]


def make_backend(
    settings: InferenceSettings,
    storage: Storage,
    catalog: Callable[[], Sequence[ModelEntry]],
    on_quarantine: Callable[[ModelEntry, str], None] | None = None,
    pinned: Callable[[], Iterable[tuple[str, str, int]]] | None = None,
) -> Backend:
    """The backend ``settings.backend`` names. ``catalog`` lists every known model
    (TF Serving's config must name them all, since a reload replaces it whole);
    ``on_quarantine`` hears of each version TF Serving fails to load; ``pinned``
    names the versions TF Serving keeps loaded beyond the newest N (the promoted
    ones)."""
    if settings.backend == "tfserving":
        from services.inference.backends.tfserving import TfServingBackend

        base = settings.tfserving_base_path.rstrip("/")
        return TfServingBackend(
            address=settings.tfserving_address,
            base_uri=(lambda key: f"{base}/{key}") if base else storage.uri,
            catalog=catalog,
            load_timeout=settings.tfserving_load_timeout_seconds,
            rpc_timeout=settings.tfserving_rpc_timeout_seconds,
            input_mode=settings.tfserving_input,
            concurrency=settings.inference_concurrency,
            on_quarantine=on_quarantine,
            keep_versions=settings.tfserving_keep_versions,
            pinned=pinned,
        )
    from services.inference.backends.inprocess import InProcessBackend

    return InProcessBackend(
        storage=storage,
        cache_dir=settings.inference_model_cache_dir,
        memory_budget_bytes=settings.memory_budget_bytes,
        concurrency=settings.inference_concurrency,
    )
