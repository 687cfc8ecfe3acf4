"""Frame and chunk bytes, as CVAT's ``/data?type=frame|chunk`` answers them.

``quality=original`` gives the uploaded image as it is; ``compressed`` gives a
JPEG re-encoded at the task's ``image_quality``. A chunk (``data_chunk_size``
frames, "imageset" type) is a zip whose entries are named ``000000.<ext>``,
``000001.<ext>``, ... in frame order (CVAT's ZipChunkWriter; compressed chunks
always use ``.jpeg``). A broken frame is served as bytes no decoder accepts.
"""

from __future__ import annotations

import io
import posixpath
import zipfile

from PIL import Image

from .model import Frame

#: What a frame broken by ``CvatStandIn.break_frame`` is served as.
BROKEN_BYTES = b"\xff\xd8\xff\xe0 this frame was broken on purpose by the CVAT stand-in"

_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp",
         ".tif": "image/tiff", ".tiff": "image/tiff", ".webp": "image/webp"}  # fmt: skip

QUALITIES = ("original", "compressed")


def frame_bytes(frame: Frame, quality: str, image_quality: int) -> tuple[bytes, str]:
    """(body, content type) of one frame."""
    if frame.broken:
        return BROKEN_BYTES, "image/jpeg" if quality == "compressed" else _mime(frame.name)
    if quality == "original":
        return frame.data, _mime(frame.name)
    with Image.open(io.BytesIO(frame.data)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=image_quality, optimize=True)
    return buffer.getvalue(), "image/jpeg"


def chunk_bytes(frames: list[Frame], quality: str, image_quality: int) -> bytes:
    """The zip of one chunk's frames."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, frame in enumerate(frames):
            data, _ = frame_bytes(frame, quality, image_quality)
            if quality == "compressed":
                ext = "jpeg"
            else:
                ext = posixpath.splitext(frame.name)[1].lstrip(".").lower() or "jpeg"
            archive.writestr(f"{index:06d}.{ext}", data)
    return buffer.getvalue()


def _mime(name: str) -> str:
    return _MIME.get(posixpath.splitext(name)[1].lower(), "application/octet-stream")
