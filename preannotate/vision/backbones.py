"""Inception-ResNet-v2 and NASNet-A as Model Garden backbones.

Model Garden has neither; Keras Applications (tf_keras, the Keras 2 that Model
Garden builds with) has both. Each builder cuts the network at four endpoints
and returns a model with dict outputs ``{'2'..'5'}`` at strides 4..32 and an
``output_specs`` property, which is what Model Garden's FPN and heads expect.

- Inception-ResNet-v2: the input of the second max-pool (stride 4),
  ``block35_10_ac`` (8), ``block17_20_ac`` (16), ``conv_7b_ac`` (32). Its valid
  padding makes them a little smaller than input / stride, so each is resized
  to ceil(input / stride), or FPN's additions fail.
- NASNet-A (large or mobile): ``reduction_concat_stem_1`` (4), the last normal
  cell at strides 8 and 16 (chosen by size, not by auto-numbered names), the
  network's output (32).

Both keep their own BatchNorm settings (Model Garden's ``norm_activation`` does
not reach them) and take no regularizer argument: the builder adds the L2 loss
of every kernel with ``add_loss``. Weights start random; a COCO or base
checkpoint restores them.
"""

from __future__ import annotations

import math

import tf_keras

MIN_INPUT = {"inception_resnet_v2": 75, "nasnet": 32}


class EndpointBackbone(tf_keras.Model):
    """A network cut at named endpoints, with Model Garden's ``output_specs``."""

    def __init__(self, inputs, endpoints: dict, **kwargs) -> None:
        super().__init__(inputs=inputs, outputs=endpoints, **kwargs)
        self._output_specs = {level: endpoints[level].get_shape() for level in endpoints}

    @property
    def output_specs(self) -> dict:
        return self._output_specs


def _input(input_specs, what: str):
    shape = list(input_specs.shape[1:])
    if len(shape) != 3 or shape[0] is None or shape[1] is None:
        raise ValueError(f"{what} needs a fixed input size, got {input_specs.shape}")
    if min(shape[0], shape[1]) < MIN_INPUT[what]:
        raise ValueError(f"{what} needs an input of at least {MIN_INPUT[what]} pixels, got {shape}")
    return tf_keras.Input(shape=shape), shape


def _fit(x, level: int, height: int, width: int, name: str, resize: bool = True):
    """``x`` at exactly ceil(size / 2^level), resized (bilinear) when it is not."""
    target = (math.ceil(height / 2**level), math.ceil(width / 2**level))
    if tuple(x.shape[1:3]) == target:
        return x
    if not resize:
        raise ValueError(f"endpoint {level} of {name} is {tuple(x.shape[1:3])}, not {target}")
    return tf_keras.layers.Resizing(*target, interpolation="bilinear", name=f"{name}_l{level}")(x)


def _add_l2(model: tf_keras.Model, l2_regularizer) -> None:
    if l2_regularizer is None:
        return
    for weight in model.trainable_weights:
        if "kernel" in weight.name:
            model.add_loss(lambda w=weight: l2_regularizer(w))


def build_inception_resnet_v2(
    input_specs, backbone_config, norm_activation_config, l2_regularizer=None
) -> EndpointBackbone:
    """Model Garden backbone builder for ``type: inception_resnet_v2``."""
    del norm_activation_config  # the application keeps its own BatchNorm
    config = backbone_config.get()
    inputs, (height, width, channels) = _input(input_specs, "inception_resnet_v2")
    net = tf_keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_tensor=inputs, input_shape=(height, width, channels)
    )
    pools = [layer for layer in net.layers if isinstance(layer, tf_keras.layers.MaxPooling2D)]
    raw = {
        2: pools[1].input,
        3: net.get_layer("block35_10_ac").output,
        4: net.get_layer("block17_20_ac").output,
        5: net.get_layer("conv_7b_ac").output,
    }
    endpoints = {
        str(level): _fit(x, level, height, width, "irv2_resize", config.resize_endpoints)
        for level, x in raw.items()
    }
    model = EndpointBackbone(inputs, endpoints, name="inception_resnet_v2_backbone")
    _add_l2(model, l2_regularizer)
    return model


def _nearest(by_height: dict[int, object], target: int):
    return by_height[min(by_height, key=lambda h: (abs(h - target), -h))]


def build_nasnet(
    input_specs, backbone_config, norm_activation_config, l2_regularizer=None
) -> EndpointBackbone:
    """Model Garden backbone builder for ``type: nasnet`` (model_id large or mobile)."""
    del norm_activation_config
    config = backbone_config.get()
    apps = {
        "large": tf_keras.applications.NASNetLarge,
        "mobile": tf_keras.applications.NASNetMobile,
    }
    if config.model_id not in apps:
        raise ValueError(f"nasnet model_id {config.model_id!r}: use one of {sorted(apps)}")
    inputs, (height, width, channels) = _input(input_specs, "nasnet")
    net = apps[config.model_id](
        include_top=False, weights=None, input_tensor=inputs, input_shape=(height, width, channels)
    )
    by_height: dict[int, object] = {}
    for layer in net.layers:  # the last normal cell of each size wins
        if layer.name.startswith("normal_concat"):
            by_height[int(layer.output.shape[1])] = layer.output
    raw = {
        2: net.get_layer("reduction_concat_stem_1").output,
        3: _nearest(by_height, math.ceil(height / 8)),
        4: _nearest(by_height, math.ceil(height / 16)),
        5: net.output,
    }
    endpoints = {
        str(level): _fit(x, level, height, width, "nasnet_resize") for level, x in raw.items()
    }
    model = EndpointBackbone(inputs, endpoints, name=f"nasnet_{config.model_id}_backbone")
    _add_l2(model, l2_regularizer)
    return model
