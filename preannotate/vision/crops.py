"""Training crops centred on objects: the RetinaNet task that cuts them.

Model Garden's RetinaNet parser scales a training frame by a random factor and
cuts the output window at a uniformly random place
(``preprocess_ops.resize_and_crop_image``). When the window is much smaller than
the scaled frame (``crop_size`` well under ``input_size``, see
services/trainer/configs/common.py ``training_view``), many windows hold no
object at all and few hold more than one. ``ObjectCropParser`` centres a share
of the windows (``crop_objects`` of the parser config) near one of the frame's
objects, picked at random, with the object's centre anywhere within
``JITTER`` of the window's centre; the other windows fall as Model Garden's do.
The scale factor, the padding and ``image_info`` are Model Garden's, so
everything downstream (anchor labels, losses) is unchanged; evaluation and
export never crop.

``RetinaNetTask`` is Model Garden's task with that parser for training data;
``registry.register()`` makes it the task class of ``configs.RetinaNetTask``.
"""

from __future__ import annotations

import tensorflow as tf
from official.common import dataset_fn
from official.vision.dataloaders import (
    input_reader,
    input_reader_factory,
    retinanet_input,
    tf_example_decoder,
)
from official.vision.ops import preprocess_ops
from official.vision.tasks import retinanet

#: How far from the window's centre (a fraction of its size, each way) a chosen
#: object's centre may land.
JITTER = 0.35

#: The parser config's settings that Model Garden's task passes to its parser as they are.
_PARSER_SETTINGS = (
    "match_threshold",
    "unmatched_threshold",
    "aug_type",
    "aug_rand_hflip",
    "aug_rand_jpeg",
    "aug_scale_min",
    "aug_scale_max",
    "skip_crowd_during_training",
    "max_num_instances",
    "pad",
    "keep_aspect_ratio",
)


def window_offset(boxes, scaled_size, desired_size, share: float, jitter: float = JITTER):
    """The [y, x] offset of the crop window in the scaled frame.

    ``boxes``: [N, 4] ymin, xmin, ymax, xmax in pixels of the scaled frame. With
    probability ``share`` (and at least one box) the window is centred on a random
    box's centre, moved by up to ``jitter`` x the window's size; otherwise uniform.
    Always inside the scaled frame (0 where it is smaller than the window).
    """
    room = tf.maximum(scaled_size - desired_size, 0.0)
    count = tf.shape(boxes)[0]

    def near_object():
        box = boxes[tf.random.uniform([], 0, count, dtype=tf.int32)]
        centre = (box[:2] + box[2:]) / 2.0
        return centre - desired_size / 2.0 + tf.random.uniform([2], -jitter, jitter) * desired_size

    chosen = tf.logical_and(count > 0, tf.random.uniform([]) < share)
    offset = tf.cond(chosen, near_object, lambda: room * tf.random.uniform([2]))
    return tf.floor(tf.clip_by_value(offset, 0.0, room))


class ObjectCropParser(retinanet_input.Parser):
    """Model Garden's RetinaNet parser; a share of training windows centred on objects."""

    def __init__(self, *, crop_objects: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self._crop_objects = float(crop_objects)

    def _resize_and_crop_image_and_boxes(self, image, boxes, pad=True):
        """As Model Garden's (the training path only), with the window placed by
        ``window_offset``. ``boxes`` are in pixels of ``image``."""
        desired = tf.cast(self._output_size, tf.float32)
        size = tf.cast(tf.shape(image)[0:2], tf.float32)
        factor = tf.random.uniform([], self._aug_scale_min, self._aug_scale_max)
        wanted = tf.round(factor * desired)
        if self._keep_aspect_ratio:
            scaled = tf.round(size * tf.reduce_min(wanted / size))
        else:
            scaled = wanted
        image_scale = scaled / size
        offset = window_offset(
            boxes * tf.tile(image_scale, [2]), scaled, desired, self._crop_objects
        )
        start, window = tf.cast(offset, tf.int32), tf.cast(desired, tf.int32)
        image = tf.image.resize(image, tf.cast(scaled, tf.int32))
        image = image[start[0] : start[0] + window[0], start[1] : start[1] + window[1], :]
        if pad:
            padded = preprocess_ops.compute_padded_size(self._output_size, 2**self._max_level)
            image = tf.image.pad_to_bounding_box(image, 0, 0, padded[0], padded[1])
        image_info = tf.stack([size, desired, image_scale, offset])
        boxes = preprocess_ops.resize_and_crop_boxes(boxes, image_scale, desired, offset)
        return image, boxes, image_info


class RetinaNetTask(retinanet.RetinaNetTask):
    """Model Garden's RetinaNet task; training data through ``ObjectCropParser``
    when its parser config asks for object crops."""

    def build_inputs(self, params, input_context=None):
        share = params.parser.crop_objects  # configs.RetinaNetData's parser has it
        if not params.is_training or not share:
            return super().build_inputs(params, input_context)
        if params.tfds_name or params.decoder.type != "simple_decoder":
            raise ValueError("crop_objects needs TFRecords read with the simple decoder")
        model, parser = self.task_config.model, params.parser
        decoder = tf_example_decoder.TfExampleDecoder(
            regenerate_source_id=params.decoder.simple_decoder.regenerate_source_id,
            attribute_names=params.decoder.simple_decoder.attribute_names,
        )
        crops = ObjectCropParser(
            crop_objects=share,
            output_size=model.input_size[:2],
            min_level=model.min_level,
            max_level=model.max_level,
            num_scales=model.anchor.num_scales,
            aspect_ratios=model.anchor.aspect_ratios,
            anchor_size=model.anchor.anchor_size,
            dtype=params.dtype,
            box_coder_weights=model.detection_generator.box_coder_weights,
            **{name: getattr(parser, name) for name in _PARSER_SETTINGS},
        )
        reader = input_reader_factory.input_reader_generator(
            params,
            dataset_fn=dataset_fn.pick_dataset_fn(params.file_type),
            decoder_fn=decoder.decode,
            combine_fn=input_reader.create_combine_fn(params),
            parser_fn=crops.parse_fn(params.is_training),
        )
        return reader.read(input_context=input_context)
