"""Batch-norm averages recomputed from training batches (services/trainer/batchnorm.py)."""

from __future__ import annotations

import numpy as np
import pytest

from services.trainer import batchnorm

pytestmark = pytest.mark.tf

#: Four batches of 6 rows, 3 features, each batch with its own mean and spread.
BATCHES = [
    np.random.default_rng(seed).normal(seed, 1 + seed, size=(6, 3)).astype("float32")
    for seed in range(4)
]


def _model(trainable: bool = True):
    import tf_keras

    norm = tf_keras.layers.BatchNormalization(momentum=0.99, trainable=trainable)
    model = tf_keras.Sequential([tf_keras.Input((3,)), norm])
    return model, norm


def _iterator():
    import tensorflow as tf

    return iter(tf.data.Dataset.from_tensor_slices(np.stack(BATCHES)))


def _recompute(model, run_forward, batches: int) -> int:
    import tensorflow as tf

    return batchnorm.recompute(
        model, tf.distribute.get_strategy(), run_forward, _iterator(), batches
    )


def test_averages_become_the_mean_of_the_batch_statistics():
    model, norm = _model()
    # The averages after 4 batches at momentum 0.99 are still near their start (0, 1).
    assert _recompute(model, lambda x: model(x, training=True), 4) == 1
    np.testing.assert_allclose(
        norm.moving_mean.numpy(), np.mean([b.mean(axis=0) for b in BATCHES], axis=0), rtol=1e-5
    )
    np.testing.assert_allclose(
        norm.moving_variance.numpy(),
        np.mean([b.var(axis=0) for b in BATCHES], axis=0),
        rtol=1e-4,
    )
    assert norm.momentum == 0.99  # training goes on with the model's own momentum


def test_fewer_batches_average_only_those():
    model, norm = _model()
    _recompute(model, lambda x: model(x, training=True), 2)
    expected = np.mean([b.mean(axis=0) for b in BATCHES[:2]], axis=0)
    np.testing.assert_allclose(norm.moving_mean.numpy(), expected, rtol=1e-5)


def test_a_frozen_layer_keeps_its_averages():
    model, norm = _model(trainable=False)
    assert _recompute(model, lambda x: model(x, training=True), 4) == 0
    np.testing.assert_array_equal(norm.moving_mean.numpy(), np.zeros(3))
    np.testing.assert_array_equal(norm.moving_variance.numpy(), np.ones(3))


def test_a_failure_half_way_leaves_the_averages_and_momentum_as_they_were():
    import tensorflow as tf

    model, norm = _model()
    two = iter(tf.data.Dataset.from_tensor_slices(np.stack(BATCHES[:2])))
    with pytest.raises(tf.errors.OutOfRangeError):  # the input runs out at the third batch
        batchnorm.recompute(
            model, tf.distribute.get_strategy(), lambda x: model(x, training=True), two, 4
        )
    np.testing.assert_array_equal(norm.moving_mean.numpy(), np.zeros(3))
    np.testing.assert_array_equal(norm.moving_variance.numpy(), np.ones(3))
    assert norm.momentum == 0.99
