"""The Keras `fit` driver (fit.L2RWModel): the same step as the command line's loop, any loss,
any model, sample weights, metrics, saving, errors."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import l2rw_tf
from l2rw_tf import reweight, train
from l2rw_tf.fit import L2RWModel, choose_meta_grad, per_example
from l2rw_tf.step import StepConfig


def tabular(n=200, m=20, features=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    cx = rng.normal(size=(m, features)).astype(np.float32)
    cy = (cx[:, 0] + 0.5 * cx[:, 1] > 0).astype(np.int64)
    return x, y, cx, cy


def mlp(outputs=2, features=6, seed=0, activation=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(outputs, activation=activation)])


def bn_dropout_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dropout(0.3)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("meta_grad", ["layerwise", "jvp", "lookahead"])
def test_fit_takes_the_same_steps_as_the_command_line_loop(meta_grad):
    """Same model, same batches, same optimizer: the parameters after three steps of `fit` equal
    those of train.make_train_step (the CLI's loop), to float rounding."""
    x, y, cx, cy = tabular(n=60, m=10)
    cli_model, fit_model = mlp(), mlp()
    fit_model.set_weights(cli_model.get_weights())
    step, _, _, _ = train.make_train_step(
        cli_model, train.TF1Momentum(0.1), StepConfig(method="l2rw", meta_grad=meta_grad),
        tf.random.Generator.from_seed(0))
    # The clean batch is the whole clean set; its order does not change the (mean) gradient.
    clean = {"image": tf.constant(cx), "label": tf.constant(cy)}
    for k in range(3):
        rows = slice(20 * k, 20 * (k + 1))
        step({"image": tf.constant(x[rows]), "label": tf.constant(y[rows]),
              "is_noisy": tf.zeros([20], tf.bool), "index": tf.range(20)}, clean)
    trainer = L2RWModel(fit_model, clean_data=(cx, cy), meta_grad=meta_grad)
    trainer.compile(optimizer=train.TF1Momentum(0.1), loss=SCCE)
    trainer.fit(x, y, batch_size=20, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(cli_model.get_weights(), fit_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss,outputs,activation,labels", [
    (SCCE, 2, None, "sparse"),
    (keras.losses.SparseCategoricalCrossentropy(), 2, "softmax", "sparse"),
    (keras.losses.CategoricalCrossentropy(from_logits=True), 2, None, "onehot"),
    (keras.losses.BinaryCrossentropy(from_logits=True), 1, None, "binary"),
    ("binary_crossentropy", 1, "sigmoid", "binary"),
    (keras.losses.MeanSquaredError(), 1, None, "regression"),
    (keras.losses.Huber(), 1, None, "regression"),
    (lambda y_true, y_pred: tf.reduce_mean(tf.abs(y_true - y_pred), axis=-1), 1, None,
     "regression"),
])
def test_every_loss_kind_trains_and_auto_weights_equal_jvp(loss, outputs, activation, labels):
    x, y, cx, cy = tabular()
    targets = {"sparse": lambda v: v, "binary": lambda v: v.astype(np.float32)[:, None],
               "onehot": lambda v: np.eye(2, dtype=np.float32)[v],
               "regression": lambda v: v.astype(np.float32)[:, None] * 2.0 - 1.0}[labels]
    model = mlp(outputs, activation=activation)
    loss_fn = per_example(loss)
    noisy, clean = (tf.constant(x[:40]), tf.constant(targets(y[:40]))), (cx, targets(cy))
    auto = reweight.example_weights(model, noisy, clean, choose_meta_grad(model), loss_fn=loss_fn)
    jvp = reweight.example_weights(model, noisy, clean, "jvp", loss_fn=loss_fn)
    assert choose_meta_grad(model) == "layerwise"
    np.testing.assert_allclose(auto, jvp, rtol=1e-4, atol=1e-6)
    assert 0 < float(tf.reduce_sum(tf.cast(jvp > 0, tf.int32))) < 40  # a real weighting
    trainer = L2RWModel(model, clean_data=clean)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    history = trainer.fit(x, targets(y), batch_size=40, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert set(history.history) >= {"loss", "zero_weight_fraction", "effective_sample_size"}


def embedding_model(seed=0):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(30, 4)(tokens)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(tokens, keras.layers.Dense(2)(h))


def two_input_model(seed=0):
    keras.utils.set_random_seed(seed)
    a, b = keras.Input((6,), name="a"), keras.Input((3,), name="b")
    inner = keras.Sequential([keras.Input((9,)), keras.layers.Dense(8, activation="relu")])
    h = inner(keras.layers.Concatenate()([a, b]))  # a nested sub-model
    return keras.Model({"a": a, "b": b}, keras.layers.Dense(2)(h))


@pytest.mark.parametrize("kind", ["bn_dropout", "embedding", "two_inputs"])
def test_every_model_kind_trains_with_the_auto_method(kind):
    rng = np.random.default_rng(1)
    if kind == "bn_dropout":
        model, x = bn_dropout_cnn(), rng.normal(size=(120, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 3, 120)
    elif kind == "embedding":
        model, x = embedding_model(), rng.integers(0, 30, (120, 5)).astype(np.int32)
        y = (x[:, 0] > 15).astype(np.int64)
    else:
        model = two_input_model()
        x = {"a": rng.normal(size=(120, 6)).astype(np.float32),
             "b": rng.normal(size=(120, 3)).astype(np.float32)}
        y = (x["a"][:, 0] > 0).astype(np.int64)
    assert choose_meta_grad(model) == "jvp"
    clean = tf.nest.map_structure(lambda v: v[:20], x), y[:20]
    noisy = tf.nest.map_structure(lambda v: v[20:], x), y[20:]
    weights = {g: reweight.example_weights(model, tuple(map(lambda v: tf.nest.map_structure(
        tf.constant, v), (tf.nest.map_structure(lambda v: v[:25], noisy[0]), noisy[1][:25]))),
        clean, g) for g in ("jvp", "lookahead")}
    np.testing.assert_allclose(weights["jvp"], weights["lookahead"], rtol=1e-3, atol=1e-5)
    trainer = L2RWModel(model, clean_data=clean)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=SCCE, metrics=["accuracy"])
    history = trainer.fit(*noisy, batch_size=25, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and "accuracy" in history.history


def test_fit_on_a_dataset_with_sample_weights():
    x, y, cx, cy = tabular()
    s = np.where(np.arange(200) % 2 == 0, 1.0, 0.0).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y, s)).batch(50)
    clean = tf.data.Dataset.from_tensor_slices((cx, cy))
    trainer = L2RWModel(mlp(), clean_data=clean, clean_batch_size=10)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=SCCE)
    history = trainer.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    # The weights of s·C: zero sample weight, zero L2RW weight; a common factor cancels.
    model = mlp()
    noisy = (tf.constant(x[:50]), tf.constant(y[:50]))
    plain = reweight.example_weights(model, noisy, (cx, cy), "jvp")
    doubled = reweight.example_weights(model, noisy + (tf.fill([50], 2.0),), (cx, cy), "jvp")
    halved = reweight.example_weights(model, noisy + (tf.constant(s[:50]),), (cx, cy), "jvp")
    np.testing.assert_allclose(plain, doubled, rtol=1e-5, atol=1e-7)
    assert not np.any(halved.numpy()[s[:50] == 0])
    layerwise = reweight.example_weights(model, noisy + (tf.constant(s[:50]),), (cx, cy),
                                         "layerwise")
    np.testing.assert_allclose(layerwise, halved, rtol=1e-4, atol=1e-6)


def test_weight_metrics_and_per_example_statistics():
    x, y, cx, cy = tabular(n=300)
    corrupted = np.arange(300) < 120
    noisy_y = np.where(corrupted, 1 - y, y)
    trainer = L2RWModel(mlp(), clean_data=(cx, cy), weight_on={"corrupted": corrupted})
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=SCCE,
                    metrics=["accuracy"])
    history = trainer.fit(x, noisy_y, batch_size=30, epochs=3, verbose=0)
    h = history.history
    assert all(0 <= v <= 1 for v in h["zero_weight_fraction"] + h["weight_on_corrupted"])
    assert all(0 <= v <= 30 for v in h["effective_sample_size"])
    stats = trainer.example_weights()
    assert stats["times_seen"].tolist() == [3] * 300  # every example once an epoch
    assert np.nanmean(stats["mean_weight"]) == pytest.approx(1.0, abs=0.35)
    # Evaluation is the wrapped model's: its loss and metrics only.
    assert set(trainer.evaluate(x, y, verbose=0, return_dict=True)) == {"loss", "accuracy"}


def test_the_trained_model_is_used_and_saved_without_the_wrapper(tmp_path):
    x, y, cx, cy = tabular()
    model = mlp()
    trainer = L2RWModel(model, clean_data=(cx, cy))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=SCCE)
    trainer.fit(x, y, batch_size=50, epochs=1, verbose=0)
    np.testing.assert_allclose(trainer.predict(x, verbose=0), model.predict(x, verbose=0))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    assert l2rw_tf.L2RWModel is L2RWModel


def test_errors_are_clear():
    x, y, cx, cy = tabular()
    with pytest.raises(ValueError, match="meta_grad='hessian'"):
        L2RWModel(mlp(), clean_data=(cx, cy), meta_grad="hessian")
    trainer = L2RWModel(mlp(), clean_data=(cx, cy))
    with pytest.raises(ValueError, match="compile the L2RWModel"):
        trainer.fit(x, y)
    with pytest.raises(ValueError, match="needs a loss"):
        trainer.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="multi-output"):
        trainer.compile(optimizer="sgd", loss=[SCCE, SCCE])
    trainer = L2RWModel(mlp(), clean_data=(cx, cy), clean_batch_size=50)
    trainer.compile(optimizer="sgd", loss=SCCE)
    with pytest.raises(ValueError, match=r"clean_batch_size=50 must be in \[1, 20\]"):
        trainer.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="does not apply"):
        bad = L2RWModel(bn_dropout_cnn(), clean_data=(np.zeros((4, 8, 8, 1)), np.zeros(4)),
                        meta_grad="layerwise")
        bad.compile(optimizer="sgd", loss=SCCE)
        bad.fit(np.zeros((8, 8, 8, 1), np.float32), np.zeros(8, np.int64), batch_size=4,
                verbose=0)
