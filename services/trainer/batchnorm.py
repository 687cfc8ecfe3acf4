"""Batch-norm statistics recomputed from training batches before the last checkpoint.

A batch-norm layer trains on each batch's own mean and variance, and keeps
moving averages of them (momentum 0.99 in the catalog) for evaluation, export
and serving. When the weights move fast (from random weights, with Adam, in a
few hundred steps) the averages trail them: the saved model then normalises
with statistics of weights it no longer has. On bench/datasets/mixed.py a
500-step Adam model scored every box under the 0.05 pre-NMS threshold with its
moving averages, and above 0.5 with batch statistics (docs/benchmarks.md).

``recompute`` replaces each trainable layer's averages with the mean of the
batch statistics over a number of training batches, run forward with the final
weights and nothing learned (Detectron2's "precise BN"). Layers frozen by a
training stage run in inference mode and keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
import tf_keras

_NORMS = (tf_keras.layers.BatchNormalization, tf_keras.layers.experimental.SyncBatchNormalization)


def trainable_norms(model) -> list:
    """The model's batch-norm layers that train (and so update their averages).

    A layer the model holds but never calls (some blocks build spares) has no
    averages yet: it is left out.
    """
    return [  # submodules lists each module once
        layer
        for layer in model.submodules
        if isinstance(layer, _NORMS) and layer.trainable and layer.built
    ]


def forward(task, model, inputs) -> None:
    """The forward pass of ``task.train_step``, training mode, without loss or gradients."""
    from official.vision.tasks import maskrcnn

    images, labels = inputs
    if isinstance(task, maskrcnn.MaskRCNNTask):
        kwargs = {
            "image_shape": labels["image_info"][:, 1, :],
            "anchor_boxes": labels["anchor_boxes"],
            "gt_boxes": labels["gt_boxes"],
            "gt_classes": labels["gt_classes"],
        }
        if task.task_config.model.include_mask:
            kwargs["gt_masks"] = labels["gt_masks"]
        model(images, training=True, **kwargs)
    else:
        model(images, training=True)


def recompute(
    model,
    strategy: tf.distribute.Strategy,
    run_forward: Callable[[object], None],
    iterator: Iterator,
    batches: int,
) -> int:
    """Set every trainable batch-norm layer's averages to the mean over ``batches`` batches.

    ``run_forward`` runs one replica's forward pass on its inputs. Returns the
    number of layers set (0: the model has none, or ``batches`` is 0).
    """
    norms = trainable_norms(model)
    if not norms or batches <= 0:
        return 0
    momenta = [layer.momentum for layer in norms]
    before = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in norms]
    means = [np.zeros(layer.moving_mean.shape, np.float64) for layer in norms]
    variances = [np.zeros(layer.moving_variance.shape, np.float64) for layer in norms]
    try:
        for layer in norms:  # each batch's statistics replace the averages
            layer.momentum = 0.0

        @tf.function
        def step(it):
            strategy.run(run_forward, args=(next(it),))

        for _ in range(batches):
            step(iterator)
            for i, layer in enumerate(norms):
                means[i] += layer.moving_mean.numpy()
                variances[i] += layer.moving_variance.numpy()
    except BaseException:  # a half-done average would be neither: keep the old ones
        for layer, (mean, variance) in zip(norms, before, strict=True):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    for layer, mean, variance in zip(norms, means, variances, strict=True):
        layer.moving_mean.assign((mean / batches).astype(np.float32))
        layer.moving_variance.assign((variance / batches).astype(np.float32))
    return len(norms)
