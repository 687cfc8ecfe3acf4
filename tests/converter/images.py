"""Encoded test images of several sizes and formats (PIL only)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

#: (width, height, format): landscape, portrait and square; JPEG and PNG.
SHAPES = ((160, 96, "JPEG"), (80, 144, "PNG"), (128, 128, "JPEG"))


def encoded(seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for width, height, fmt in SHAPES:
        pixels = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        draw.rectangle([width // 8, height // 8, width // 2, height // 2], fill=(230, 40, 40))
        draw.ellipse([width // 2, height // 2, width - 4, height - 4], fill=(40, 60, 230))
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out
