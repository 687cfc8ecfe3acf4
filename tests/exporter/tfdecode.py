"""Reading what the exporter wrote with TensorFlow and official.vision (tests only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def decode_records(paths: list[Path], include_mask: bool = True) -> list[dict[str, Any]]:
    """Every record of ``paths`` through tf.data.TFRecordDataset and TfExampleDecoder."""
    import tensorflow as tf
    from official.vision.dataloaders.tf_example_decoder import TfExampleDecoder

    decoder = TfExampleDecoder(include_mask=include_mask)
    out = []
    for raw in tf.data.TFRecordDataset([str(p) for p in paths]):
        decoded = decoder.decode(raw)
        item = {k: v.numpy() for k, v in decoded.items()}
        parsed = tf.io.parse_single_example(
            raw,
            {
                "image/object/class/text": tf.io.VarLenFeature(tf.string),
                "image/format": tf.io.FixedLenFeature((), tf.string),
                "image/filename": tf.io.FixedLenFeature((), tf.string),
            },
        )
        item["class_text"] = [
            t.decode() for t in tf.sparse.to_dense(parsed["image/object/class/text"]).numpy()
        ]
        item["format"] = parsed["image/format"].numpy().decode()
        item["filename"] = parsed["image/filename"].numpy().decode()
        out.append(item)
    return out
