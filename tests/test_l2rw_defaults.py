"""L2RWModel's defaults (meta passes without dropout, equal weights on the examples of positive
alignment) and the paper's Algorithm 1 one argument away: exact against independent references."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from l2rw_tf import reweight
from l2rw_tf.fit import L2RWModel
from l2rw_tf.step import StepConfig, step_gradients

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def cnn(rate, seed=0, noise="dropout"):
    """A BatchNorm CNN with a noise layer of `rate` (0: the same network without it)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    if rate:
        h = {"dropout": keras.layers.Dropout(rate),
             "spatial": keras.layers.SpatialDropout2D(rate),
             "gaussian_noise": keras.layers.GaussianNoise(rate),
             "gaussian_dropout": keras.layers.GaussianDropout(rate)}[noise](h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def data(n=24, m=12, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, n),
            rng.normal(size=(m, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, m))


@pytest.mark.parametrize("noise", ["dropout", "spatial", "gaussian_noise", "gaussian_dropout"])
def test_the_default_weights_are_those_of_the_network_without_its_noise_layer(noise):
    """meta_dropout=False: the weights equal the paper's weights of the same network built
    without the noise layer (an independent reference), and the step's gradient is that of
    the weighted loss through the model's own (noisy) forward pass."""
    x, y, cx, cy = data()
    model, reference = cnn(0.5, noise=noise), cnn(0)
    reference.set_weights(model.get_weights())
    noisy, clean = (tf.constant(x), tf.constant(y)), (tf.constant(cx), tf.constant(cy))
    loss_fn = reweight.per_example_loss
    expected = reweight.example_weights(reference, noisy, clean, "jvp")
    seed_state = [v.numpy() for v in model.non_trainable_variables]
    result = step_gradients(model, StepConfig(meta_dropout=False), noisy, clean, loss_fn=loss_fn)
    np.testing.assert_allclose(result.example_weights, expected, atol=1e-7)
    assert 0 < np.sum(result.example_weights > 0) < len(y)
    # The weighted step drew the model's noise from the state it started from.
    for variable, value in zip(model.non_trainable_variables, seed_state):
        if reweight.is_seed_state(variable):
            variable.assign(value)
    with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        loss = tf.reduce_sum(result.example_weights * loss_fn(y, outputs))
    for got, want in zip(result.gradients, tape.gradient(loss, model.trainable_variables)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # The noise layer's rate is back, and the paper's weights differ from the default's.
    assert all(getattr(layer, attribute) == 0.5 for layer, attribute in
               reweight.noise_layers(model))


def test_the_paper_weights_keep_dropout_in_the_meta_passes():
    """meta_dropout=True is Algorithm 1 as the library ran it before the default changed: the
    fused jvp step, dropout active in the meta passes (differs from the default's weights)."""
    x, y, cx, cy = data()
    noisy, clean = (tf.constant(x), tf.constant(y)), (tf.constant(cx), tf.constant(cy))
    model = cnn(0.5)
    state = [v.numpy() for v in model.non_trainable_variables]
    paper = step_gradients(model, StepConfig(meta_dropout=True), noisy, clean)
    for variable, value in zip(model.non_trainable_variables, state):
        variable.assign(value)
    fused = reweight.fused_l2rw_gradients(model, noisy, clean, include_regularization=True)
    np.testing.assert_array_equal(paper.example_weights, fused.example_weights)
    for variable, value in zip(model.non_trainable_variables, state):
        variable.assign(value)
    default = step_gradients(model, StepConfig(meta_dropout=False), noisy, clean)
    assert np.max(np.abs(default.example_weights - paper.example_weights)) > 1e-3


def test_noise_off_restores_the_rates_even_on_an_error():
    model = cnn(0.25, noise="gaussian_noise")
    with pytest.raises(RuntimeError):
        with reweight.noise_off(model):
            assert [getattr(layer, a) for layer, a in reweight.noise_layers(model)] == [0.0]
            raise RuntimeError("inside")
    assert [getattr(layer, a) for layer, a in reweight.noise_layers(model)] == [0.25]


def fit_weights(algorithm, rate=0.5, steps=3):
    x, y, cx, cy = data(n=36)
    model = cnn(rate)
    trainer = L2RWModel(model, clean_data=(cx, cy), algorithm=algorithm)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
    trainer.fit(x, y, batch_size=12, epochs=1, verbose=0, steps_per_epoch=steps)
    return [w.copy() for w in model.get_weights()], trainer


def test_fit_defaults_to_calibrated_and_takes_the_paper_one_argument_away():
    """The default ("calibrated") steps as StepConfig(meta_dropout=False,
    weighting="calibrated"), "select" and "paper" are one argument away, "paper" as the command
    line's StepConfig defaults (the paper's Algorithm 1)."""
    assert L2RWModel(cnn(0.5), None).algorithm == "calibrated"
    assert StepConfig().meta_dropout and StepConfig().weighting == "proportional"
    calibrated, trainer = fit_weights("calibrated")
    select, _ = fit_weights("select")
    paper, _ = fit_weights("paper")
    for other in (select, paper):
        assert max(np.max(np.abs(a - b)) for a, b in zip(calibrated, other)) > 1e-4
    assert L2RWModel.from_config(trainer.get_config()).algorithm == "calibrated"
    with pytest.raises(ValueError, match="algorithm"):
        L2RWModel(cnn(0), None, algorithm="fast")


def test_the_paper_algorithm_in_fit_takes_the_command_line_steps():
    """algorithm="paper": fit's parameters after three steps equal three steps of the command
    line's step function (StepConfig's defaults) on the same batches, on a dropout model."""
    x, y, cx, cy = data(n=36)
    paper, _ = fit_weights("paper")
    model = cnn(0.5)
    optimizer = keras.optimizers.SGD(0.1)
    trainer = L2RWModel(cnn(0.5), clean_data=(cx, cy), algorithm="paper")
    # The trainer's batch order and clean batches, read from its own pipeline.
    noisy = trainer._array_dataset(x, y, None, 12, True, None)[0]
    clean = trainer.clean_dataset(12)
    for (bx, by, _, _), (bcx, bcy) in zip(noisy.take(3), clean.take(3)):
        result = step_gradients(model, StepConfig(), (bx, by), (bcx, bcy),
                                loss_fn=trainer_loss())
        optimizer.apply(result.gradients, model.trainable_variables)
    for a, b in zip(paper, model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def trainer_loss():
    from l2rw_tf.fit import per_example
    return per_example(SCCE)


def test_equal_weights_share_the_mass_among_the_positive_alignments():
    np.testing.assert_allclose(reweight.equal_weights(tf.constant([-1.0, 2.0, 0.0, 3e-9])),
                               [0, 0.5, 0, 0.5])
    np.testing.assert_array_equal(reweight.equal_weights(tf.constant([-1.0, 0.0])), [0, 0])
    assert np.all(np.isnan(reweight.equal_weights(tf.constant([np.nan, 1.0]))))
    assert np.all(np.isnan(reweight.equal_weights(tf.constant([np.inf, 1.0]))))
    with pytest.raises(ValueError, match="weighting"):
        reweight.example_weights(cnn(0), (np.zeros((2, 8, 8, 1)), [0, 1]),
                                 (np.zeros((2, 8, 8, 1)), [0, 1]), weighting="uniform")


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(3)])


@pytest.mark.parametrize("meta_grad", ["layerwise", "jvp", "lookahead"])
def test_equal_weighting_steps_on_the_mean_gradient_of_the_kept_examples(meta_grad):
    """weighting="equal": the weights are 1/P on the P examples of positive alignment (the
    paper's weights' support), and the step's gradient is plain training's mean gradient over
    those examples alone, with every meta-gradient method."""
    rng = np.random.default_rng(1)
    x, cx = rng.normal(size=(30, 5)).astype(np.float32), rng.normal(size=(10, 5)).astype(
        np.float32)
    y, cy = rng.integers(0, 3, 30), rng.integers(0, 3, 10)
    model = mlp()
    noisy, clean = (tf.constant(x), tf.constant(y)), (tf.constant(cx), tf.constant(cy))
    paper = reweight.example_weights(model, noisy, clean, "jvp").numpy()
    result = step_gradients(model, StepConfig(meta_grad=meta_grad, weighting="equal"),
                            noisy, clean)
    kept = paper > 0
    assert 0 < kept.sum() < len(y)
    np.testing.assert_allclose(result.example_weights, kept / kept.sum(), atol=1e-7)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(reweight.per_example_loss(y[kept], model(x[kept])))
    for got, want in zip(result.gradients, tape.gradient(loss, model.trainable_variables)):
        np.testing.assert_allclose(got, want, atol=1e-6)
