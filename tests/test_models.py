"""Model builders: parameter counts, layer settings, weight decay, and the meta-pass semantics
(BN batch statistics without moving-statistic updates, active dropout) of `reweight.forward`."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from l2rw_tf.models import build_model
from l2rw_tf.models.resnet import resnet, resnet32, resnet_small
from l2rw_tf.reweight import forward

CIFAR = (32, 32, 3)


def count_trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def layers_of(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def producer(tensor):
    """The layer that produced a functional-graph tensor."""
    return tensor._keras_history.operation


def images(n, seed=0, shape=CIFAR):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype("float32")


@pytest.fixture(scope="module")
def r32():
    return build_model("resnet32", 10, CIFAR, seed=0)


@pytest.fixture(scope="module")
def wrn():
    return build_model("wrn28_10", 10, CIFAR, seed=0)


# ---- parameter counts and output shapes ---------------------------------------------------

def test_lenet_count_and_shape():
    model = build_model("lenet", 2, (28, 28, 1), seed=0)
    assert count_trainable(model) == 167_113
    assert model(images(3, shape=(28, 28, 1))).shape == (3, 1)


def test_resnet32_count_and_shape(r32):
    assert count_trainable(r32) == 463_018
    assert r32(images(2), training=False).shape == (2, 10)
    assert count_trainable(resnet32(100)) == 463_018 + 64 * 90 + 90


def test_wrn28_10_count_and_shape(wrn):
    assert count_trainable(wrn) == 36_211_658
    assert wrn(images(2), training=False).shape == (2, 10)


def test_reduced_resnet_defaults_and_shapes():
    assert count_trainable(build_model("resnet", 10, CIFAR, seed=0)) == 463_018
    model = build_model("resnet", 10, CIFAR, seed=0, units=2, width=0.5)
    assert model(images(2), training=False).shape == (2, 10)
    convs = layers_of(model, layers.Conv2D)
    assert len(convs) == 1 + 2 * 2 * 3
    assert [c.filters for c in convs if c.name.endswith("conv2")] == [8, 8, 16, 16, 32, 32]
    # width 10, 4 units: the WRN-28-10 shape (without dropout, which has no parameters).
    assert count_trainable(resnet_small(10, units=4, width=10.0)) == 36_211_658
    # Binary tasks get a single logit, as for LeNet.
    assert build_model("resnet", 2, CIFAR, units=1, width=0.25).output_shape == (None, 1)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="lenet.*resnet32.*wrn28_10.*resnet"):
        build_model("vgg", 10, CIFAR)


# ---- layer settings ------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["r32", "wrn"])
def test_batch_norm_settings(fixture, request):
    model = request.getfixturevalue(fixture)
    bns = layers_of(model, layers.BatchNormalization)
    n_units = 15 if fixture == "r32" else 12
    assert len(bns) == 1 + 2 * n_units - 1 + 1   # init, 2 per unit but the first, final
    for bn in bns:
        assert bn.momentum == 0.999 and bn.epsilon == 1e-3
        assert bn.center and not bn.scale and bn.gamma is None
        assert [v.name for v in bn.trainable_variables] == ["beta"]
        assert bn.beta_regularizer is None
    for v in model.trainable_variables:
        assert "gamma" not in v.path
    # The very first unit has no leading BN/ReLU: its conv1 follows the init BN/ReLU.
    first_conv1 = model.get_layer("unit_1_0_conv1")
    relu = producer(first_conv1.input)
    assert isinstance(relu, layers.ReLU) and producer(relu.input).name == "init_bn"
    with pytest.raises(ValueError):
        model.get_layer("unit_1_0_bn1")


def test_conv_and_dense_settings(r32):
    convs = layers_of(r32, layers.Conv2D)
    assert len(convs) == 31
    for conv in convs:
        assert not conv.use_bias and conv.kernel_size == (3, 3) and conv.padding == "same"
        # Truncated normal, std sqrt(2 / (9 * out)), redrawn beyond 2 std.
        std = math.sqrt(2.0 / (9 * conv.filters))
        w = conv.kernel.numpy()
        assert np.abs(w).max() <= 2 * std + 1e-7
        if w.size >= 9000:
            assert 0.8 * std < w.std() < 0.96 * std   # truncated normal: 0.88 std
    assert [c.strides for c in convs if c.name.endswith("_0_conv1")] == [(1, 1), (2, 2), (2, 2)]
    dense = r32.get_layer("logit")
    limit = math.sqrt(3.0 / 64)
    assert dense.use_bias and np.all(dense.bias.numpy() == 0)
    assert np.abs(dense.kernel.numpy()).max() <= limit
    assert np.abs(dense.kernel.numpy()).max() > 0.8 * limit


def test_wrn_init_conv_and_dropout_placement(wrn):
    assert wrn.get_layer("init_conv").filters == 16   # 16 -> 160 in the first unit
    assert wrn.get_layer("unit_1_0_conv1").kernel.shape == (3, 3, 16, 160)
    dropouts = layers_of(wrn, layers.Dropout)
    assert len(dropouts) == 11 and all(d.rate == 0.3 for d in dropouts)
    for stage in (1, 2, 3):
        for unit in range(4):
            conv1_input = producer(wrn.get_layer(f"unit_{stage}_{unit}_conv1").input)
            if (stage, unit) == (1, 0):
                assert isinstance(conv1_input, layers.ReLU)
                continue
            # bn1 -> ReLU -> dropout -> conv1; none before conv2.
            assert isinstance(conv1_input, layers.Dropout)
            relu = producer(conv1_input.input)
            assert isinstance(relu, layers.ReLU)
            assert producer(relu.input).name == f"unit_{stage}_{unit}_bn1"
            relu2 = producer(wrn.get_layer(f"unit_{stage}_{unit}_conv2").input)
            assert producer(relu2.input).name == f"unit_{stage}_{unit}_bn2"
    assert not layers_of(resnet32(10), layers.Dropout)


def test_shortcut_is_parameter_free_pool_and_centred_pad():
    """With conv2 zeroed, a downsampling unit outputs avg-pool(input) zero-padded equally on both
    channel sides; the shortcut takes the unit's input, before its BN/ReLU."""
    model = resnet_small(10, units=1, width=0.5, seed=3)   # channels 8 -> 16 -> 32
    conv2 = model.get_layer("unit_2_0_conv2")
    conv2.kernel.assign(np.zeros(conv2.kernel.shape, "float32"))
    unit_in = model.get_layer("unit_2_0_bn1").input
    probe = keras.Model(model.input, [unit_in, model.get_layer("unit_2_0_add").output])
    x_in, x_out = (t.numpy() for t in probe(images(2), training=False))
    pooled = x_in.reshape(2, 16, 2, 16, 2, 8).mean(axis=(2, 4))
    expected = np.concatenate([np.zeros((2, 16, 16, 4)), pooled, np.zeros((2, 16, 16, 4))], -1)
    np.testing.assert_allclose(x_out, expected, atol=1e-6)
    assert not any(layer.weights for layer in model.layers if "pad" in layer.name
                   or "downsample" in layer.name)


def test_deterministic_init():
    a = resnet_small(10, units=1, width=0.5, seed=7, dropout=0.3)
    b = resnet_small(10, units=1, width=0.5, seed=7, dropout=0.3)
    c = resnet_small(10, units=1, width=0.5, seed=8, dropout=0.3)
    for va, vb, vc in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
        if "kernel" in va.path:
            assert not np.array_equal(va.numpy(), vc.numpy())
    convs = layers_of(a, layers.Conv2D)
    assert len({c.kernel_initializer.seed for c in convs}) == len(convs)


# ---- weight decay --------------------------------------------------------------------------

def test_weight_decay_terms(r32):
    kernels = [layer.kernel for layer in r32.layers
               if isinstance(layer, (layers.Conv2D, layers.Dense))]
    assert len(kernels) == 32
    losses = [float(l) for l in r32.losses]
    assert len(losses) == 32
    by_hand = [1e-4 * float(np.sum(np.square(k.numpy()))) for k in kernels]
    np.testing.assert_allclose(sorted(losses), sorted(by_hand), rtol=1e-5)
    np.testing.assert_allclose(sum(losses), sum(by_hand), rtol=1e-5)
    # Only conv and dense kernels are regularised.
    for layer in r32.layers:
        if isinstance(layer, layers.Conv2D):
            assert layer.kernel_regularizer.l2 == pytest.approx(1e-4)
        if isinstance(layer, layers.Dense):
            assert layer.kernel_regularizer.l2 == pytest.approx(1e-4)
            assert layer.bias_regularizer is None


def test_bn_momentum_kwarg_passes_through_and_defaults_to_the_original():
    fast = build_model("resnet", 10, CIFAR, units=1, width=0.25, bn_momentum=0.9)
    assert {bn.momentum for bn in layers_of(fast, layers.BatchNormalization)} == {0.9}
    default = build_model("resnet", 10, CIFAR, units=1, width=0.25, bn_momentum=None)
    assert {bn.momentum for bn in layers_of(default, layers.BatchNormalization)} == {0.999}


def test_weight_decay_and_dropout_kwargs_pass_through():
    model = build_model("resnet", 10, CIFAR, units=1, width=0.25, weight_decay=5e-4,
                        dropout=0.2)
    assert all(l.rate == 0.2 for l in layers_of(model, layers.Dropout))
    assert len(layers_of(model, layers.Dropout)) == 2
    kernels = [l.kernel for l in model.layers if isinstance(l, (layers.Conv2D, layers.Dense))]
    expected = 5e-4 * sum(float(np.sum(np.square(k.numpy()))) for k in kernels)
    np.testing.assert_allclose(float(tf.add_n(model.losses)), expected, rtol=1e-5)
    assert not build_model("resnet", 10, CIFAR, units=1, width=0.25, weight_decay=0.0).losses
    assert build_model("resnet32", 10, CIFAR, dropout=None, weight_decay=None).losses
    assert all(l.rate == 0.5 for l in layers_of(
        resnet(10, depth_units=(1, 1, 1), filters=(16, 16, 16), dropout=0.5), layers.Dropout))


# ---- the meta pass: reweight.forward ---------------------------------------------------------

def test_forward_uses_batch_stats_and_leaves_variables_untouched():
    model = resnet_small(10, units=1, width=0.5, seed=1)
    twin = resnet_small(10, units=1, width=0.5, seed=1)   # same seed: identical copy
    x = images(8, seed=2)
    # Give the moving statistics non-default values so inference mode clearly differs.
    model(images(8, seed=5), training=True)
    twin.set_weights(model.get_weights())
    before = [v.numpy().copy() for v in model.variables]

    params = [v.value for v in model.trainable_variables]
    out = forward(model, params, x).numpy()

    for v, b in zip(model.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    moving = [v for v in twin.non_trainable_variables if "moving" in v.path]
    assert len(moving) == 2 * len(layers_of(twin, layers.BatchNormalization))
    moving_before = [v.numpy().copy() for v in moving]
    batch_stats_out = twin(x, training=True).numpy()      # updates the twin's moving stats
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(moving, moving_before))
    np.testing.assert_allclose(out, batch_stats_out, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, model(x, training=False).numpy(), atol=1e-3)


def test_forward_keeps_dropout_active():
    """A small WRN-shaped model (16-filter init conv, wider stages) with dropout 0.3: the meta
    pass differs from the same weights without dropout, inference does not."""
    kw = dict(units=1, width=2.0, seed=4)
    dropped = resnet_small(10, dropout=0.3, **kw)
    plain = resnet_small(10, dropout=0.0, **kw)
    assert dropped.get_layer("init_conv").filters == 16
    plain.set_weights(dropped.get_weights())
    x = images(4, seed=6)
    params = [v.value for v in dropped.trainable_variables]
    before = [v.numpy().copy() for v in dropped.variables]

    out_dropped = forward(dropped, params, x).numpy()
    out_plain = forward(plain, [v.value for v in plain.trainable_variables], x).numpy()

    assert not np.allclose(out_dropped, out_plain, atol=1e-4)
    np.testing.assert_allclose(dropped(x, training=False).numpy(),
                               plain(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    for v, b in zip(dropped.variables, before):   # incl. the dropout seed-generator state
        np.testing.assert_array_equal(v.numpy(), b)
    # Gradients flow through the dropped-out meta pass to every parameter.
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = tf.reduce_sum(forward(dropped, params, x) ** 2)
    grads = tape.gradient(loss, params)
    assert all(g is not None for g in grads)
