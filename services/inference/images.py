"""Encoded images (JPEG, PNG, what CVAT serves) to the RGB pixels the models take.

Images come from callers (Predict, StreamPredict, Nuclio) and from CVAT: the
size their header declares is checked against ``max_pixels``
(``PREANNOTATE_INFERENCE_MAX_IMAGE_PIXELS``) before any pixel is decoded, so a
small file that declares a huge image (a "pixel bomb") costs a header read.
Decoding is CPU work: callers on the event loop run ``decode`` in a thread.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from preannotate.errors import InvalidArgument
from services.inference.backends.base import ImageInput

MAX_PIXELS_SETTING = "PREANNOTATE_INFERENCE_MAX_IMAGE_PIXELS"
#: The setting's default, for callers without settings.
DEFAULT_MAX_PIXELS = 40_000_000


def _too_large(what: str, pixels: str, max_pixels: int) -> InvalidArgument:
    return InvalidArgument(
        f"{what} is {pixels} pixels, over the limit of {max_pixels} ({MAX_PIXELS_SETTING}): "
        "send a smaller image"
    )


def decode(data: bytes, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInput:
    """Decode ``data`` to RGB pixels; ``InvalidArgument`` says why it cannot be (an
    image over ``max_pixels`` is refused from its header, before it is decoded)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidArgument(f"{what} is empty: send JPEG or PNG bytes")
    try:
        with warnings.catch_warnings():
            # PIL's own bomb check: a warning above its limit (our check decides),
            # an error above twice that (over any limit the setting allows).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(io.BytesIO(data))  # reads the header only
            except Image.DecompressionBombError:
                raise _too_large(
                    what, f"more than {Image.MAX_IMAGE_PIXELS * 2}", max_pixels
                ) from None
            with image:
                width, height = image.size
                if width * height > max_pixels:
                    raise _too_large(what, f"{width} x {height} = {width * height}", max_pixels)
                pixels = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError as exc:
        raise InvalidArgument(f"{what} is not a decodable image: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise InvalidArgument(f"{what} could not be decoded: {exc}") from exc
    if pixels.ndim != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise InvalidArgument(f"{what} has no pixels (shape {pixels.shape})")
    return ImageInput(pixels=np.ascontiguousarray(pixels), encoded=data)
