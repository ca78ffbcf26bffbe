"""Calibrated weights (calibrated.py): exact against a reference built from per-example
gradients, under every meta-gradient, and the counting rule on hand-made alignments."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from l2rw_tf import calibrated
from l2rw_tf.step import StepConfig, step_gradients


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="tanh"),
                             keras.layers.Dense(3)])


def per_example_gradients(model, x, y):
    """[N, P]: each example's flattened loss gradient, one example at a time."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = []
    for i in range(len(y)):
        with tf.GradientTape() as tape:
            value = loss(y[i:i + 1], model(x[i:i + 1], training=True))
        rows.append(np.concatenate([g.numpy().ravel() for g in
                                    tape.gradient(value, model.trainable_variables)]))
    return np.stack(rows).astype(np.float64)


def reference_weights(noisy_grads, clean_grads):
    """The module docstring's rule, in numpy, from per-example gradients."""
    half = len(clean_grads) // 2
    v_a, v_b = clean_grads[:half].mean(0), clean_grads[half:].mean(0)
    first, second = noisy_grads @ v_a, noisy_grads @ v_b
    null = np.concatenate([clean_grads[:half] @ v_b, clean_grads[half:] @ v_a])
    r = np.mean(np.concatenate([first, second]) < 0)
    r_null = np.mean(null < 0)
    harmful = np.clip((r - r_null) / max(1 - r_null, 1e-6), 0, 1)
    alignment = (first + second) / 2
    drop = int(np.round(harmful * len(alignment)))
    dropped = np.zeros(len(alignment), bool)
    dropped[np.argsort(alignment)[:drop]] = True
    kept = ~(dropped & (alignment < 0))
    return kept / kept.sum(), harmful


@pytest.mark.parametrize("meta_grad", ["jvp", "lookahead", "layerwise"])
def test_weights_equal_the_per_example_gradient_reference(meta_grad):
    rng = np.random.default_rng(3)
    model = mlp()
    x, cx = rng.normal(size=(16, 5)).astype(np.float32), rng.normal(size=(10, 5)).astype(
        np.float32)
    # Labels by one linear rule, half of the noisy ones moved to another class.
    rule = rng.normal(size=(5, 3))
    y, cy = np.argmax(x @ rule, 1), np.argmax(cx @ rule, 1)
    y[:8] = (y[:8] + 1) % 3
    expected, harmful = reference_weights(per_example_gradients(model, x, y),
                                          per_example_gradients(model, cx, cy))
    weights = calibrated.example_weights(model, (x, y), (cx, cy), meta_grad)
    np.testing.assert_allclose(weights.numpy(), expected, atol=1e-6)
    assert 0 < harmful < 1 and 0 < np.sum(expected == 0) < 16  # the rule was exercised


def weights_of(first, second, null):
    return calibrated.weights_from_alignments(
        tf.constant(first, tf.float32), tf.constant(second, tf.float32),
        tf.constant(null, tf.float32)).numpy()


def test_no_excess_of_negative_alignments_drops_nothing():
    """A batch disagreeing as often as the clean examples do among themselves keeps every
    example, negative alignments included (what `equal` would have dropped)."""
    weights = weights_of([1, -1, 2, -2], [1, -1, 2, -2], [1, -1, 3, -3])
    np.testing.assert_allclose(weights, [0.25] * 4)


def test_the_excess_drops_the_most_negative_examples():
    """r = 1/2, r_null = 0: π̂ = 1/2, the two lowest of the four go."""
    weights = weights_of([1, -1, 2, -5], [1, -1, 2, -5], [1, 2, 3, 4])
    np.testing.assert_allclose(weights, [0.5, 0, 0.5, 0])


def test_only_negative_alignments_are_dropped():
    """π̂ = 3/4 (every product negative but one), but only the negative alignments go."""
    weights = weights_of([-1, -2, -3, 4], [-1, -2, -3, -0.5], [1, 2, 3, 4])
    np.testing.assert_allclose(weights, [0, 0, 0, 1])


def test_a_non_finite_alignment_makes_every_weight_nan():
    assert np.isnan(weights_of([1, np.inf, 2, 3], [1, 1, 2, 3], [1, 2, 3, 4])).all()


def test_the_calibrated_step_is_the_mean_gradient_of_the_kept_examples():
    rng = np.random.default_rng(2)
    model = mlp()
    x, y = rng.normal(size=(12, 5)).astype(np.float32), rng.integers(0, 3, 12)
    clean = (rng.normal(size=(8, 5)).astype(np.float32), rng.integers(0, 3, 8))
    config = StepConfig(meta_grad="jvp", meta_dropout=False, weighting="calibrated")
    result = step_gradients(model, config, (x, y), clean)
    kept = result.example_weights.numpy() > 0
    assert kept.any()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        value = loss(y[kept], model(x[kept], training=True))
    for got, want in zip(result.gradients, tape.gradient(value, model.trainable_variables)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


def test_fit_refuses_a_clean_batch_that_has_no_two_halves():
    from l2rw_tf.fit import L2RWModel
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 5)).astype(np.float32), rng.integers(0, 3, 8)
    trainer = L2RWModel(mlp(), clean_data=(x[:3], y[:3]), clean_batch_size=1)
    trainer.compile(optimizer="sgd",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="clean_batch_size=1.*at least 2"):
        trainer.fit(x, y, batch_size=4, epochs=1, verbose=0)
