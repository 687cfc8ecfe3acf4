"""The export module: Model Garden's DetectionModule with the product's serving contract.

``ServingModule`` differs from ``official.vision.serving.detection.DetectionModule``
in three ways:

- ``detection_boxes`` are always normalised ``[ymin, xmin, ymax, xmax]`` of the
  image as sent (RetinaNet's ``output_normalized_coordinates`` is turned off
  and the same normalisation is applied to every model, Mask R-CNN included);
- the encoded-image signature decodes and resizes each image on its own, so
  one request may carry JPEGs and PNGs of different sizes (the stock one
  stacks the decoded images first, which fails unless all sizes match);
- ``classes.csv`` is a tracked asset: it lands in the SavedModel's
  ``assets/`` and a loaded model has ``.classes_file.asset_path``.

What is saved is ``saved_root(module)``, not the module: saving the module walks
into its Keras model, and TensorFlow then traces and stores every layer's call
functions, which nothing that serves ever calls (TF Serving and the in-process
backend run the signatures). Measured on the converter tests' SSD
(ssd-mobilenet-v2-coco at 128 px, two cores): saving 27.3 s -> 5.1 s, loading
10.6 s -> 2.6 s, 18.8 MB -> 13.5 MB, the same outputs bit for bit
(tests/converter/test_export_ssd.py checks the saved object graph).

TensorFlow is imported by the worker process only (``services.converter.worker``).
"""

from __future__ import annotations

import math

import tensorflow as tf
from official.vision import configs
from official.vision.ops import box_ops
from official.vision.serving import detection

from preannotate.errors import InvalidArgument

#: Input kind of ``get_inference_signatures`` -> signature name.
SIGNATURES = {"image_bytes": "serving_default", "image_tensor": "serving_image_tensor"}
BYTES_SIGNATURE = SIGNATURES["image_bytes"]
TENSOR_SIGNATURE = SIGNATURES["image_tensor"]
#: Outputs every signature has; Mask R-CNN adds ``detection_masks``.
OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
MASKS = "detection_masks"


def has_masks(params) -> bool:
    model = params.task.model
    return isinstance(model, configs.maskrcnn.MaskRCNN) and bool(model.include_mask)


def family(params) -> str:
    """ "retinanet" (single stage) or "maskrcnn" (Faster / Mask R-CNN)."""
    model = params.task.model
    if isinstance(model, configs.maskrcnn.MaskRCNN):
        return "maskrcnn"
    if isinstance(model, configs.retinanet.RetinaNet):
        return "retinanet"
    raise InvalidArgument(
        f"the converter exports RetinaNet and Faster / Mask R-CNN models, not {type(model).__name__}"
    )


def serving_params(params):
    """A copy of ``params`` set up for this module's export (boxes normalised here)."""
    params = params.replace()  # Config.replace copies
    if isinstance(params.task.model, configs.retinanet.RetinaNet):
        params.task.export_config.output_normalized_coordinates = False
        params.task.export_config.cast_num_detections_to_float = False
        params.task.export_config.cast_detection_classes_to_float = False
        params.task.export_config.output_intermediate_features = False
    return params


def normalise_boxes(boxes: tf.Tensor, image_info: tf.Tensor) -> tf.Tensor:
    """Boxes in pixels of the resized input -> 0..1 of the original image.

    ``image_info`` rows are [original size, resized size, scale, offset]
    (each [y, x]); dividing by the scale gives pixels of the original image.
    """
    scale = tf.tile(image_info[:, 2:3, :], [1, 1, 2])
    boxes = box_ops.normalize_boxes(boxes / scale, image_info[:, 0:1, :])
    return tf.clip_by_value(boxes, 0.0, 1.0)


class ServingModule(detection.DetectionModule):
    """DetectionModule with normalised boxes, mixed-size bytes batches and classes.csv."""

    def __init__(self, params, *, input_image_size: list[int], classes_csv: str | None = None):
        super().__init__(
            params=serving_params(params),
            batch_size=None,
            input_image_size=input_image_size,
            input_type="image_tensor",
        )
        if classes_csv is not None:
            self.classes_file = tf.saved_model.Asset(classes_csv)

    def _decode_image(self, encoded_image_bytes: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(encoded_image_bytes, channels=3, expand_animations=False)
        image.set_shape((None, None, 3))
        return image

    def _input_specs(self):
        model = self.params.task.model
        size = self._padded_size
        anchors = model.anchor.num_scales * len(model.anchor.aspect_ratios) * 4
        levels = {
            str(level): tf.TensorSpec(
                [math.ceil(size[0] / 2**level), math.ceil(size[1] / 2**level), anchors],
                tf.float32,
            )
            for level in range(model.min_level, model.max_level + 1)
        }
        return (
            tf.TensorSpec([*size, 3], tf.float32),
            levels,
            tf.TensorSpec([4, 2], tf.float32),
        )

    def preprocess(self, images: tf.Tensor):
        """Decode (bytes) or take (uint8) each image, then resize and pad it alone."""
        if images.dtype != tf.string:
            return super().preprocess(images)
        with tf.device("cpu:0"):
            return tf.map_fn(
                lambda data: self._build_inputs(self._decode_image(data)),
                elems=images,
                fn_output_signature=self._input_specs(),
                parallel_iterations=32,
            )

    @tf.function
    def inference_from_image_bytes(self, inputs: tf.Tensor):
        return self.serve(inputs)

    def serve(self, images: tf.Tensor):
        outputs = super().serve(images)
        outputs["detection_boxes"] = normalise_boxes(
            outputs["detection_boxes"], outputs["image_info"]
        )
        outputs.pop("detection_outer_boxes", None)
        return outputs

    def signatures(self) -> dict:
        """The concrete functions to save, by signature name."""
        return self.get_inference_signatures(SIGNATURES)


def saved_root(module: detection.DetectionModule) -> tf.Module:
    """What ``tf.saved_model.save`` writes: the model's variables (which the signatures
    capture), ``classes_file`` and nothing else (see the module's docstring)."""
    root = tf.Module()
    root.model_variables = list(module.model.variables)
    if hasattr(module, "classes_file"):
        root.classes_file = module.classes_file
    return root
