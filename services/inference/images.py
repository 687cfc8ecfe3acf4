"""Encoded images (JPEG, PNG, what CVAT serves) to the RGB pixels the models take."""

from __future__ import annotations

import io
import warnings

import numpy as np

from preannotate.errors import InvalidArgument
from services.inference.backends.base import ImageInput


def decode(data: bytes, what: str = "image") -> ImageInput:
    """Decode ``data`` to RGB pixels; ``InvalidArgument`` says why it cannot be."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidArgument(f"{what} is empty: send JPEG or PNG bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                pixels = np.asarray(image.convert("RGB"))
    except (
        UnidentifiedImageError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        raise InvalidArgument(f"{what} is not a decodable image: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise InvalidArgument(f"{what} could not be decoded: {exc}") from exc
    if pixels.ndim != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise InvalidArgument(f"{what} has no pixels (shape {pixels.shape})")
    return ImageInput(pixels=np.ascontiguousarray(pixels), encoded=data)
