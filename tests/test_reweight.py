"""The meta-gradient: both exact methods against each other, against finite differences of the
look-ahead, on LeNet and on BatchNorm / dropout models; weight normalisation; no side effects."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from l2rw_tf import reweight, train
from l2rw_tf.step import StepConfig, step_gradients
from l2rw_tf.models import lenet


def batches(n=12, m=5, shape=(28, 28, 1), classes=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape), dtype=np.float32)
    xc = rng.random((m, *shape), dtype=np.float32)
    return ((tf.constant(x), tf.constant(rng.integers(0, classes, n))),
            (tf.constant(xc), tf.constant(rng.integers(0, classes, m))))


def small_bn_model(dropout=0.0, weight_decay=0.0, classes=3, dtype=None):
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input((8, 8, 2), dtype=dtype)
    x = keras.layers.Conv2D(4, 3, padding="same", kernel_regularizer=reg, dtype=dtype,
                            kernel_initializer=keras.initializers.GlorotNormal(seed=1))(inputs)
    x = keras.layers.BatchNormalization(momentum=0.999, epsilon=1e-3, scale=False, dtype=dtype)(x)
    x = keras.layers.ReLU(dtype=dtype)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, seed=3, dtype=dtype)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    outputs = keras.layers.Dense(classes, kernel_regularizer=reg, dtype=dtype,
                                 kernel_initializer=keras.initializers.GlorotNormal(seed=2))(x)
    return keras.Model(inputs, outputs)


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


@pytest.fixture(scope="module")
def lenet_model():
    return lenet(1, seed=0)


def test_methods_agree_on_lenet(lenet_model):
    noisy, clean = batches()
    a = reweight.jvp_alignment(lenet_model, noisy, clean)
    b = reweight.lookahead_alignment(lenet_model, noisy, clean)
    assert np.max(np.abs(b)) > 0  # a degenerate all-zero comparison would prove nothing
    assert relative_error(a, b) <= 1e-4
    c = reweight.layerwise_alignment(lenet_model, noisy, clean)
    assert relative_error(c, b) <= 1e-4
    wa = reweight.example_weights(lenet_model, noisy, clean, "jvp")
    wb = reweight.example_weights(lenet_model, noisy, clean, "lookahead")
    wc = reweight.example_weights(lenet_model, noisy, clean, "layerwise")
    assert relative_error(wa, wb) <= 1e-4 and relative_error(wc, wb) <= 1e-4


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_methods_agree_with_batchnorm_and_dropout(dropout):
    model = small_bn_model(dropout=dropout, weight_decay=1e-2)
    noisy, clean = batches(n=16, m=6, shape=(8, 8, 2), classes=3)
    for include_regularization in (False, True):
        a = reweight.jvp_alignment(model, noisy, clean, include_regularization)
        b = reweight.lookahead_alignment(model, noisy, clean, include_regularization)
        assert relative_error(a, b) <= 1e-4


def lookahead_clean_loss(model, eps, noisy, clean):
    """l_g(θ − ∇θ Σ ε_i C_i), written out independently of the code under test. For models
    without dropout only: both passes start from the same state here, while the code under test
    gives the clean pass dropout masks of its own (tests/test_reweight_models.py)."""
    params = [tf.identity(v.value) for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(params)
        logits, _ = model.stateless_call(params, non_trainable, noisy[0], training=True)
        loss = tf.reduce_sum(eps * reweight.per_example_loss(noisy[1], logits))
    grads = tape.gradient(loss, params)
    new_params = [p - g for p, g in zip(params, grads)]
    logits, _ = model.stateless_call(new_params, non_trainable, clean[0], training=True)
    return float(tf.reduce_mean(reweight.per_example_loss(clean[1], logits)))


@pytest.mark.parametrize("model_name", ["lenet", "batchnorm"])
def test_alignment_matches_finite_differences(model_name):
    keras.config.set_dtype_policy("float64")
    try:
        if model_name == "lenet":
            model = lenet(1, seed=0)
            noisy, clean = batches(n=6, m=4)
        else:
            model = small_bn_model(dtype="float64")
            noisy, clean = batches(n=6, m=4, shape=(8, 8, 2), classes=3)
        noisy = (tf.cast(noisy[0], tf.float64), noisy[1])
        clean = (tf.cast(clean[0], tf.float64), clean[1])
        assert model.trainable_variables[0].dtype == "float64"
        # Small h: LeNet gradients are large, and a bigger step crosses ReLU/max-pool kinks.
        n, h = int(noisy[1].shape[0]), 1e-8
        finite_diff = []
        for i in range(n):
            e = np.zeros(n)
            e[i] = h
            plus = lookahead_clean_loss(model, tf.constant(e), noisy, clean)
            minus = lookahead_clean_loss(model, tf.constant(-e), noisy, clean)
            finite_diff.append(-(plus - minus) / (2 * h))  # −∂l_g/∂ε_i
        methods = [reweight.lookahead_alignment, reweight.jvp_alignment]
        if model_name == "lenet":
            methods.append(reweight.layerwise_alignment)
        for method in methods:
            assert relative_error(method(model, noisy, clean), finite_diff) <= 1e-4
    finally:
        keras.config.set_dtype_policy("float32")


def test_normalize_weights():
    w = reweight.normalize_weights(tf.constant([3.0, -1.0, 1.0, 0.0]))
    np.testing.assert_allclose(w, [0.75, 0.0, 0.25, 0.0])
    assert float(tf.reduce_sum(w)) == pytest.approx(1.0)
    zero = reweight.normalize_weights(tf.constant([-2.0, -1.0, 0.0]))
    np.testing.assert_array_equal(zero, [0.0, 0.0, 0.0])  # δ rule: all zero stays all zero


def test_example_aligned_with_clean_gradient_gets_the_weight(lenet_model):
    # The noisy batch holds the clean example itself and the same image with the wrong label:
    # ⟨∇C, ∇C⟩ > 0 for the first; for the second σ(σ−1)‖∇z‖² < 0, so it is clipped to zero.
    x = tf.constant(np.random.default_rng(1).random((1, 28, 28, 1), dtype=np.float32))
    noisy = (tf.concat([x, x], 0), tf.constant([1, 0]))
    clean = (x, tf.constant([1]))
    for method in reweight.META_GRADIENTS:
        w = reweight.example_weights(lenet_model, noisy, clean, method)
        np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-6)


def test_weights_sum_to_one_and_are_constant(lenet_model):
    noisy, clean = batches(seed=3)
    with tf.GradientTape() as tape:
        w = reweight.example_weights(lenet_model, noisy, clean)
    assert float(tf.reduce_sum(w)) == pytest.approx(1.0, abs=1e-5)
    assert np.all(w.numpy() >= 0)
    assert tape.gradient(w, lenet_model.trainable_variables[0]) is None  # stop-gradient


@pytest.mark.parametrize("method", reweight.META_GRADIENTS)
def test_meta_passes_change_no_variable(method):
    if method == "layerwise":  # BN-free models only
        model = mlp_with_weight_decay()
        noisy, clean = batches(n=16, m=6, shape=(6, 6, 1), classes=3)
    else:
        model = small_bn_model(dropout=0.5, weight_decay=1e-3)
        noisy, clean = batches(n=16, m=6, shape=(8, 8, 2), classes=3)
    model(noisy[0], training=True)  # move BN statistics away from their initial values
    before = [v.numpy().copy() for v in model.variables]
    w = reweight.example_weights(model, noisy, clean, method, include_regularization=True)
    assert np.max(w) > 0
    after = [v.numpy() for v in model.variables]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_meta_pass_uses_batch_statistics():
    model = small_bn_model()
    noisy, _ = batches(n=16, shape=(8, 8, 2), classes=3)
    params = reweight.current_params(model)
    meta = reweight.forward(model, params, noisy[0]).numpy()
    inference = model(noisy[0], training=False).numpy()
    training = model(noisy[0], training=True).numpy()  # the real pass (updates statistics)
    np.testing.assert_allclose(meta, training, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(meta - inference)) > 1e-3


def test_clean_regularization_is_in_the_meta_loss():
    """⟨∇C_i, ∇(l_g + R)⟩ computed example by example, with R = the kernels' L2 terms."""
    model = small_bn_model(weight_decay=5e-2)
    noisy, clean = batches(n=5, m=4, shape=(8, 8, 2), classes=3)
    params = reweight.current_params(model)
    kernels = [i for i, v in enumerate(model.trainable_variables) if "kernel" in v.path]
    assert len(kernels) == 2

    with tf.GradientTape() as tape:
        tape.watch(params)
        logits = reweight.forward(model, params, clean[0])
        loss = tf.reduce_mean(reweight.per_example_loss(clean[1], logits))
        loss += 5e-2 * tf.add_n([tf.reduce_sum(tf.square(params[i])) for i in kernels])
    direction = tape.gradient(loss, params)
    expected = []
    for i in range(5):  # BN couples examples: differentiate C_i of the whole-batch pass
        with tf.GradientTape() as tape:
            tape.watch(params)
            c = reweight.per_example_loss(noisy[1], reweight.forward(model, params, noisy[0]))[i]
        g = tape.gradient(c, params)
        expected.append(sum(float(tf.reduce_sum(a * b)) for a, b in zip(g, direction)))

    with_reg = reweight.jvp_alignment(model, noisy, clean, include_regularization=True)
    without = reweight.jvp_alignment(model, noisy, clean, include_regularization=False)
    assert relative_error(with_reg, expected) <= 1e-4
    assert relative_error(without, expected) > 1e-3  # the term matters in this construction
    lookahead = reweight.lookahead_alignment(model, noisy, clean, include_regularization=True)
    assert relative_error(lookahead, expected) <= 1e-4


@pytest.mark.parametrize("method", ["l2rw", "l2rw_layerwise", "baseline", "random", "ratio",
                                    "hard_mining"])
def test_train_step_traces_once(method):
    model = lenet(1, seed=0)
    optimizer = train.TF1Momentum(1e-3)
    config = (StepConfig(method="l2rw", meta_grad="layerwise")
              if method == "l2rw_layerwise" else StepConfig(method=method))
    step, stats, _, traces = train.make_train_step(
        model, optimizer, config, tf.random.Generator.from_seed(0))
    for seed in range(4):
        (x, y), (xc, yc) = batches(n=8, m=4, seed=seed)
        step({"image": x, "label": y, "is_noisy": tf.zeros([8], tf.bool)},
             {"image": xc, "label": yc})
    assert traces[0] == 1
    assert float(stats[0]) == 4  # four steps counted


def test_tf1_momentum_matches_its_formula():
    var = keras.Variable([1.0, 2.0])
    opt = train.TF1Momentum(keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.1, 0.01]),
                            momentum=0.9)
    acc, theta = np.zeros(2), np.array([1.0, 2.0])
    for lr, g in [(0.1, [1.0, -1.0]), (0.01, [0.5, 0.5]), (0.01, [2.0, 0.0])]:
        opt.apply_gradients([(tf.constant(g), var)])
        acc = 0.9 * acc + np.array(g)
        theta = theta - lr * acc
        np.testing.assert_allclose(var.numpy(), theta, rtol=1e-6)


@pytest.mark.parametrize("meta_grad", ["jvp", "lookahead"])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_fused_step_equals_separate_weights_then_step(dropout, meta_grad):
    """The fused L2RW step (one noisy forward pass for the meta-gradient and the weighted step)
    lands on the same parameters and BN moving statistics as `example_weights` followed by a
    weighted step."""
    results = []
    for fused in (True, False):
        keras.utils.set_random_seed(0)
        model = small_bn_model(dropout=dropout, weight_decay=1e-2)
        step, stats, _, _ = train.make_train_step(
            model, train.TF1Momentum(0.1),
            StepConfig(method="l2rw", meta_grad=meta_grad, fused=fused),
            tf.random.Generator.from_seed(0))
        for seed in range(3):
            (x, y), (xc, yc) = batches(n=16, m=6, shape=(8, 8, 2), classes=3, seed=seed)
            step({"image": x, "label": y, "is_noisy": tf.zeros([16], tf.bool),
                  "index": tf.range(16)}, {"image": xc, "label": yc})
        results.append(([v.numpy() for v in model.variables], stats.numpy()))
    (fused_vars, fused_stats), (plain_vars, plain_stats) = results
    moved = [np.max(np.abs(a - b)) for a, b in zip(fused_vars, plain_vars)]
    assert max(moved) <= 1e-5, moved
    np.testing.assert_allclose(fused_stats, plain_stats, rtol=1e-5, atol=1e-6)
    assert fused_stats[4] < fused_stats[3]  # some weights non-zero: the steps did something


def test_per_example_weight_statistics():
    """example_stats counts appearances, sums w_i·n and zeros per training-set index."""
    model = lenet(1, seed=0)
    step, _, example_stats, _ = train.make_train_step(
        model, train.TF1Momentum(1e-3), StepConfig(method="ratio", pos_ratio=0.75),
        tf.random.Generator.from_seed(0), num_examples=6)
    (x, _), (xc, yc) = batches(n=4, m=2)
    for index, label in (([0, 1, 2, 3], [0, 1, 1, 1]), ([2, 3, 4, 0], [1, 1, 0, 0])):
        step({"image": x, "label": tf.constant(label), "is_noisy": tf.zeros([4], tf.bool),
              "index": tf.constant(index)}, {"image": xc, "label": yc})
    # ratio weights: 0.75 for label 0, 0.25 for label 1; times n = 4 -> 3 and 1.
    seen, weight_sum, zeros = example_stats.numpy().T
    np.testing.assert_allclose(seen, [2, 1, 2, 2, 1, 0])
    np.testing.assert_allclose(weight_sum, [6, 1, 2, 2, 3, 0])
    np.testing.assert_allclose(zeros, 0)
    rows = train.example_table(example_stats.numpy(), np.array([0, 1, 1, 1, 0, 1]),
                               np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 1, 0, 0, 0], bool))
    assert rows[2] == {"index": 2, "label": 1, "true_label": 0, "is_noisy": 1, "times_seen": 2,
                       "mean_weight": 1.0, "zero_fraction": 0.0}
    assert rows[0]["mean_weight"] == 3.0 and np.isnan(rows[5]["mean_weight"])


def test_hard_mining_step_on_kept_examples_equals_the_masked_pool_step():
    """hard_mining trains on its kept examples only; on a model without BN or dropout that is the
    step on the whole pool with zero weight elsewhere (checked against that, computed here)."""
    model = lenet(1, seed=0)
    (x, y), _ = batches(n=60, m=4, seed=3)
    y = tf.cast(tf.where(tf.range(60) % 10 == 0, 0, 1), y.dtype)  # 6 of the minority label 0
    grads, weights, losses, loss = step_gradients(
        model, StepConfig(method="hard_mining"), (x, y), None,
        tf.random.Generator.from_seed(0))[:4]
    assert reweight.examples_are_independent(model)
    assert int(tf.reduce_sum(tf.cast(weights > 0, tf.int32))) == 12  # 6 minority + 6 hardest
    with tf.GradientTape() as tape:
        expected_losses = reweight.per_example_loss(y, model(x, training=True))
        expected_loss = tf.reduce_sum(weights * expected_losses)
    expected = tape.gradient(expected_loss, model.trainable_variables)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-5)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert not reweight.examples_are_independent(small_bn_model())  # BN: the pool step is kept


def mlp_with_weight_decay():
    """A Dense chain with biases, 3 classes and a kernel regulariser: the layerwise method's other
    layer type, its multi-class loss and its regularisation term."""
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(7, activation="tanh", kernel_regularizer=keras.regularizers.L2(1e-2),
                           kernel_initializer=keras.initializers.GlorotNormal(seed=4),
                           bias_initializer=keras.initializers.RandomNormal(seed=5))(x)
    outputs = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotNormal(seed=6))(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("model_name", ["lenet", "mlp"])
def test_layerwise_step_equals_jvp_step(model_name):
    """The layerwise L2RW step (weights and weighted gradient from one forward and one backward
    pass) gives the fused jvp step's weights, losses and gradients, regularisation included."""
    if model_name == "lenet":
        model = lenet(1, seed=1)
        noisy, clean = batches(n=20, m=6, seed=4)
    else:
        model = mlp_with_weight_decay()
        noisy, clean = batches(n=20, m=6, shape=(6, 6, 1), classes=3, seed=4)
    want = reweight.fused_l2rw_gradients(model, noisy, clean, include_regularization=True)
    got = reweight.layerwise_l2rw_gradients(model, noisy, clean, include_regularization=True)
    # Some weights are zero (their examples are left out of the weighted gradient), some not.
    assert 2 <= int(tf.reduce_sum(tf.cast(got[1] > 0, tf.int32))) <= 18
    for name, a, b in zip(("weights", "losses", "loss"), got[1:4], want[1:4]):
        assert relative_error(a, b) <= 1e-5, name
    for a, b in zip(got[0], want[0]):
        assert relative_error(a, b) <= 1e-4


@pytest.mark.parametrize("compiled", [False, True])
def test_layerwise_step_with_every_weight_zero(compiled):
    """A clean batch that disagrees with every noisy example (the same image, the other label):
    all weights are zero, no example is kept, and the step's gradient is zero, eagerly and in a
    `tf.function` (where the kept set has an unknown, here empty, size)."""
    model = lenet(1, seed=1)
    image = tf.random.stateless_uniform([1, 28, 28, 1], seed=[3, 4])
    noisy = (tf.repeat(image, 8, axis=0), tf.ones([8], tf.int64))
    clean = (tf.repeat(image, 3, axis=0), tf.zeros([3], tf.int64))
    step = reweight.layerwise_l2rw_gradients
    grads, weights, losses, loss = (tf.function(step) if compiled else step)(
        model, noisy, clean)[:4]
    assert float(tf.reduce_max(reweight.layerwise_alignment(model, noisy, clean))) < 0
    assert not np.any(weights.numpy()) and float(loss) == 0.0
    assert all(not np.any(g.numpy()) for g in grads)
    assert [g.shape for g in grads] == [v.shape for v in model.trainable_variables]


def test_layerwise_refuses_models_it_does_not_apply_to():
    with pytest.raises(ValueError, match="BatchNorm"):
        reweight.layerwise_layers(small_bn_model())
    inputs = keras.Input((4,))
    branch = keras.layers.Dense(3)(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Concatenate()([inputs, branch]))
    with pytest.raises(ValueError, match="chain"):
        reweight.layerwise_layers(keras.Model(inputs, outputs))
    assert len(reweight.layerwise_layers(lenet(1, seed=0))) == 12
