"""The Keras `fit` driver (fit.L2RWModel): the same step as the command line's loop, any loss,
any model, sample weights, metrics, saving, errors."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import l2rw_tf
from l2rw_tf import reweight, train
from l2rw_tf.fit import ALGORITHMS, L2RWModel, choose_meta_grad, per_example
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
@pytest.mark.parametrize("algorithm", ["paper", "select"])
def test_fit_takes_the_same_steps_as_the_command_line_loop(meta_grad, algorithm):
    """Same model, same batches, same optimizer: the parameters after three steps of `fit` equal
    those of train.make_train_step (the CLI's loop) with the algorithm's step settings, to float
    rounding."""
    x, y, cx, cy = tabular(n=60, m=10)
    cli_model, fit_model = mlp(), mlp()
    fit_model.set_weights(cli_model.get_weights())
    step, _, _, _ = train.make_train_step(
        cli_model, train.TF1Momentum(0.1),
        StepConfig(method="l2rw", meta_grad=meta_grad, **ALGORITHMS[algorithm]),
        tf.random.Generator.from_seed(0))
    # The clean batch is the whole clean set; its order does not change the (mean) gradient.
    clean = {"image": tf.constant(cx), "label": tf.constant(cy)}
    for k in range(3):
        rows = slice(20 * k, 20 * (k + 1))
        step({"image": tf.constant(x[rows]), "label": tf.constant(y[rows]),
              "is_noisy": tf.zeros([20], tf.bool), "index": tf.range(20)}, clean)
    trainer = L2RWModel(fit_model, clean_data=(cx, cy), meta_grad=meta_grad, algorithm=algorithm)
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


# ---------------------------------------------------------------------------------------------
# Keras callbacks, saving and resuming (issue 16).

def event_tags(logdir):
    """{subdirectory: the scalar tags of its TensorBoard event files}."""
    tags = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.setdefault(path.parent.name, set()).update(v.tag for v in event.summary.value)
    return tags


def test_tensorboard_logs_the_weight_metrics(tmp_path):
    x, y, cx, cy = tabular()
    trainer = L2RWModel(mlp(), clean_data=(cx, cy), weight_on={"first": np.arange(200) < 50})
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=SCCE, metrics=["accuracy"])
    trainer.fit(x, y, batch_size=50, epochs=2, verbose=0, validation_data=(cx, cy),
                callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "logs"), histogram_freq=1)])
    tags = event_tags(tmp_path / "logs")
    assert tags["train"] >= {"epoch_loss", "epoch_accuracy", "epoch_zero_weight_fraction",
                             "epoch_effective_sample_size", "epoch_weight_on_first"}
    assert "epoch_loss" in tags["validation"]
    assert "epoch_zero_weight_fraction" not in tags["validation"]  # evaluation is the model's


def test_early_stopping_on_the_validation_loss():
    x, y, cx, cy = tabular()
    trainer = L2RWModel(mlp(), clean_data=(cx, cy))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=SCCE)
    # No epoch improves on the first by 1e9: stopped after patience + 1 = 2 of 10 epochs.
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=1e9)
    history = trainer.fit(x, y, batch_size=50, epochs=10, verbose=0, validation_data=(cx, cy),
                          callbacks=[stop])
    assert len(history.history["val_loss"]) == 2 and stop.stopped_epoch == 1


def fitted(epochs, x, y, cx, cy, model_seed=0, kind="arrays", **fit_kwargs):
    """An L2RWModel fitted for `epochs` on arrays (an MLP), or (kind="dataset") on a dataset
    carrying example ids, in a fixed order, with a clean tf.data set (an MLP with BatchNorm and
    dropout)."""
    first = np.arange(len(x)) < 40
    if kind == "arrays":
        trainer = L2RWModel(mlp(seed=model_seed), clean_data=(cx, cy), clean_batch_size=8,
                            weight_on={"first": first})
        data = dict(x=x, y=y, batch_size=30)
    else:
        trainer = L2RWModel(bn_dropout_mlp(seed=model_seed), clean_batch_size=8,
                            clean_data=tf.data.Dataset.from_tensor_slices((cx, cy)),
                            weight_on={"first": first}, num_examples=len(x))
        order = np.random.default_rng(0).permutation(len(x))
        data = dict(x=tf.data.Dataset.from_tensor_slices(
            (x[order], y[order], np.ones(len(x), np.float32), order)).batch(30))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=SCCE)
    history = trainer.fit(**data, epochs=epochs, verbose=0, **fit_kwargs)
    return trainer, history


def bn_dropout_mlp(seed=0):
    """BatchNorm and dropout without convolutions: oneDNN's multithreaded convolution gradients
    are not bit-reproducible, and L2RW's zero weights turn last-bit differences into different
    steps, which an exact comparison of two fits would take for a resume error."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(16),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.Dropout(0.3), keras.layers.Dense(2)])


def assert_same_state(a, b):
    """The wrapped models' weights, the optimizers' state and the per-example statistics."""
    for u, v in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    for u, v in zip(a.optimizer.variables, b.optimizer.variables):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.example_stats.numpy()[:, [0, 2]],
                                  b.example_stats.numpy()[:, [0, 2]])
    np.testing.assert_allclose(a.example_stats.numpy(), b.example_stats.numpy(), rtol=1e-5,
                               atol=1e-5)


def test_model_checkpoint_saves_the_weights_and_the_whole_trainer(tmp_path):
    x, y, cx, cy = tabular(n=120)
    weights = keras.callbacks.ModelCheckpoint(str(tmp_path / "w{epoch}.weights.h5"),
                                              save_weights_only=True)
    whole = keras.callbacks.ModelCheckpoint(str(tmp_path / "m{epoch}.keras"))
    trainer, _ = fitted(2, x, y, cx, cy, callbacks=[weights, whole])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m1.keras", "m2.keras", "w1.weights.h5", "w2.weights.h5"]
    # The weights file loads into a fresh wrapper, which has no statistics before a fit.
    fresh = L2RWModel(mlp(seed=5), clean_data=(cx, cy), weight_on={"first": np.arange(120) < 40})
    fresh.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=SCCE)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "w2.weights.h5")
    assert_same_state(trainer, fresh)
    # The whole trainer: settings, compile, optimizer and statistics; not the clean set.
    loaded = keras.models.load_model(tmp_path / "m2.keras")
    assert isinstance(loaded, L2RWModel) and loaded.clean_data is None
    assert (loaded.clean_batch_size, loaded.requested_meta_grad, loaded.seed) == (8, "auto", 0)
    np.testing.assert_array_equal(loaded.weight_on["first"], np.arange(120) < 40)
    assert_same_state(trainer, loaded)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), trainer.predict(x, verbose=0),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="set trainer.clean_data"):
        loaded.fit(x, y, batch_size=30, verbose=0)
    # Given its clean set back, it trains on as the trainer does: same orders, same steps.
    loaded.clean_data = (cx, cy)
    loaded.fit(x, y, batch_size=30, epochs=1, verbose=0)
    trainer.fit(x, y, batch_size=30, epochs=1, verbose=0)
    assert_same_state(trainer, loaded)


class Interrupt(keras.callbacks.Callback):
    """Raises in the middle of epoch 1 (after epoch 0's backup), as Keras' own tests do."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 2:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("kind", ["arrays", "dataset"])
def test_backup_and_restore_resumes_an_interrupted_fit_exactly(tmp_path, kind):
    """Interrupted in epoch 1 and rerun by a fresh trainer (other initial weights): it resumes
    from epoch 0's backup and ends with the weights, optimizer state and per-example statistics
    of an uninterrupted fit, having seen the same batches (same losses per epoch). On arrays
    (shuffled every epoch) and on a dataset with example ids (BatchNorm statistics and dropout
    seeds are weights too)."""
    x, y, cx, cy = tabular(n=120)
    reference, history = fitted(3, x, y, cx, cy, kind=kind)
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        fitted(3, x, y, cx, cy, kind=kind,
               callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt()])
    resumed, resumed_history = fitted(3, x, y, cx, cy, model_seed=7, kind=kind,
                                      callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert len(resumed_history.history["loss"]) == 2  # epochs 1 and 2
    np.testing.assert_allclose(resumed_history.history["loss"], history.history["loss"][1:],
                               rtol=1e-5)
    np.testing.assert_allclose(resumed_history.history["weight_on_first"],
                               history.history["weight_on_first"][1:], rtol=1e-5, atol=1e-7)
    assert_same_state(reference, resumed)
    assert resumed.example_weights()["times_seen"].tolist() == [3] * 120


KILLED_FIT = """
import pathlib, sys, time
import numpy as np
sys.path.insert(0, {tests!r})
import keras
import test_fit

mode, out = sys.argv[1], pathlib.Path(sys.argv[2])

class HangInEpoch1(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 2:  # epoch 0's backup is written
            (out / "hanging").write_text("")
            time.sleep(600)

callbacks = [keras.callbacks.BackupAndRestore(str(out / "backup"))]
if mode == "hang":
    callbacks.append(HangInEpoch1())
x, y, cx, cy = test_fit.tabular(n=120)
# The rerun starts from other initial weights: the backup's replace them.
trainer, history = test_fit.fitted(3, x, y, cx, cy, model_seed=0 if mode == "hang" else 7,
                                   callbacks=callbacks)
np.savez(out / "final.npz", *trainer.model.get_weights(), stats=trainer.example_stats.numpy(),
         epochs=len(history.history["loss"]))
"""


def test_a_fit_killed_in_its_second_epoch_resumes_from_the_backup(tmp_path):
    """SIGKILL in the middle of epoch 1, then the same command again in a new process: it
    resumes from epoch 0's backup and ends as an uninterrupted fit (in this process) does."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import REPO
    script = tmp_path / "killed_fit.py"
    script.write_text(KILLED_FIT.format(tests=str(REPO / "tests")))
    child = subprocess.Popen([sys.executable, str(script), "hang", str(tmp_path)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "hanging").exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the fit did not reach epoch 1"
            time.sleep(0.2)
        assert (tmp_path / "backup" / "latest.weights.h5").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL and not (tmp_path / "final.npz").exists()
    rerun = subprocess.run([sys.executable, str(script), "resume", str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    x, y, cx, cy = tabular(n=120)
    reference, _ = fitted(3, x, y, cx, cy)
    final = np.load(tmp_path / "final.npz")
    assert int(final["epochs"]) == 2  # epochs 1 and 2 only: resumed
    for i, w in enumerate(reference.model.get_weights()):
        np.testing.assert_allclose(final[f"arr_{i}"], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final["stats"], reference.example_stats.numpy(), rtol=1e-5,
                               atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Per-example statistics of a dataset that carries example ids (issue 16).

@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_example_ids_in_a_dataset_key_the_statistics_as_positions_do(form):
    """The same examples in the same order, once as arrays and once as a dataset whose ids are
    the examples' places in another order: the same steps, and the same statistics, by id."""
    x, y, cx, cy = tabular(n=90)
    ids = np.random.default_rng(3).permutation(90)  # example ids[i] is at position i
    flagged = np.arange(90) < 30                     # by id
    arrays = L2RWModel(mlp(), clean_data=(cx, cy), clean_batch_size=10,
                       weight_on={"flagged": flagged[ids]})  # by position
    arrays.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
    by_position = arrays.fit(x, y, batch_size=30, epochs=2, shuffle=False, verbose=0)
    sample_weight = np.ones(90, np.float32)
    elements = ((x, y, sample_weight, ids) if form == "tuple" else
                {"x": x, "y": y, "example_id": ids.astype(np.int32)})
    ds = tf.data.Dataset.from_tensor_slices(elements).batch(30)
    dataset = L2RWModel(mlp(), clean_data=tf.data.Dataset.from_tensor_slices((cx, cy)),
                        clean_batch_size=10, weight_on={"flagged": flagged}, num_examples=90)
    dataset.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
    by_id = dataset.fit(ds, epochs=2, verbose=0)
    for a, b in zip(arrays.model.get_weights(), dataset.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_id.history["weight_on_flagged"],
                               by_position.history["weight_on_flagged"], rtol=1e-5, atol=1e-7)
    expected, got = arrays.example_weights(), dataset.example_weights()
    assert got["times_seen"][ids].tolist() == expected["times_seen"].tolist() == [2] * 90
    for key in ("mean_weight", "zero_fraction"):
        np.testing.assert_allclose(got[key][ids], expected[key], rtol=1e-5, atol=1e-6)
    ranked = l2rw_tf.label_issues(dataset, x[np.argsort(ids)], y[np.argsort(ids)])
    assert sorted(ranked["position"].tolist()) == list(range(90))  # the ranking works by id


def test_example_ids_errors():
    x, y, cx, cy = tabular(n=40)
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones(40, np.float32), np.arange(40)))
    trainer = L2RWModel(mlp(), clean_data=(cx, cy))
    trainer.compile(optimizer="sgd", loss=SCCE)
    with pytest.raises(ValueError, match=r"give L2RWModel\(num_examples=...\)"):
        trainer.fit(ds.batch(20), verbose=0)
    with pytest.raises(ValueError, match="example ids"):
        trainer.example_weights()  # a fit on a dataset without ids keeps none
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(20), verbose=0)
    small = L2RWModel(mlp(), clean_data=(cx, cy), num_examples=30)
    small.compile(optimizer="sgd", loss=SCCE)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"num_examples=30\)"):
        small.fit(ds.batch(20), verbose=0)
    with pytest.raises(ValueError, match="num_examples=30, but the arrays given to fit hold 40"):
        small.fit(x, y, verbose=0)
    grouped = L2RWModel(mlp(), clean_data=(cx, cy), weight_on={"a": np.arange(40) < 5})
    grouped.compile(optimizer="sgd", loss=SCCE)
    with pytest.raises(ValueError, match="weight_on with a dataset needs example ids"):
        grouped.fit(ds.batch(20), verbose=0)
    with pytest.raises(ValueError, match="num_examples=0 must be at least 1"):
        L2RWModel(mlp(), clean_data=(cx, cy), num_examples=0)


def test_a_fit_on_other_examples_replaces_the_statistics(tmp_path):
    """One `example_stats` weight, of the last fit's size: the wrapper still saves and loads."""
    x, y, cx, cy = tabular(n=60)
    trainer = L2RWModel(mlp(), clean_data=(cx, cy))
    trainer.compile(optimizer="sgd", loss=SCCE)
    trainer.fit(x, y, batch_size=20, verbose=0)
    trainer.fit(x[:40], y[:40], batch_size=20, verbose=0)
    assert [tuple(v.shape) for v in trainer.non_trainable_variables] == [(40, 3)]
    trainer.save_weights(tmp_path / "t.weights.h5")
    trainer.load_weights(tmp_path / "t.weights.h5")
    assert trainer.example_weights()["times_seen"].tolist() == [1] * 40


def test_every_epochs_clean_order_is_keyed_on_the_step_count_at_its_start_with_slow_batches():
    """Keras' first step of an epoch increments the optimizer's count without waiting for the
    epoch's first batch: read by tf.data while that batch is drawn (slowly, here), the count would
    already be 1 ahead, run by run or not. Every epoch's clean batches are those of the count at
    the epoch's start (fit.EpochKey)."""
    import time
    from l2rw_tf.fit import EpochKey
    n, batch, clean, clean_batch, epochs = 40, 20, 10, 4, 3
    x = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32)
    targets = np.arange(n, dtype=np.float32)[:, None]

    def slowly(x, y):
        done = tf.py_function(lambda: time.sleep(0.3) or 0.0, [], tf.float32)
        return x + 0.0 * done, y

    class Recording(L2RWModel):
        seen = tf.Variable(tf.fill([epochs * 2, clean_batch], -1.0))

        def train_step(self, data):
            clean_y = data[1][1]
            step = tf.cast(self.optimizer.iterations, tf.int32)
            self.seen.assign(tf.tensor_scatter_nd_update(self.seen, [[step]], [clean_y[:, 0]]))
            return super().train_step(data)

    trainer = Recording(mlp(outputs=1), clean_data=(x[:clean], targets[:clean]),
                        clean_batch_size=clean_batch, seed=2)
    trainer.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    noisy = tf.data.Dataset.from_tensor_slices((x, targets)).batch(batch).map(slowly)
    trainer.fit(noisy, epochs=epochs, verbose=0)
    epoch_key = EpochKey()
    for epoch in range(epochs):
        epoch_key.key.assign(2 * epoch)  # two steps an epoch
        first = next(iter(trainer.clean_dataset(batch, epoch_key)))[1][:, 0].numpy()
        assert trainer.seen.numpy()[2 * epoch].tolist() == first.tolist(), epoch


def test_callbacks_given_as_a_callback_list_get_the_epoch_key_too():
    """Keras uses a CallbackList as it is given: fit adds its EpochKey to it, and trains as with a
    list of the same callbacks."""
    x, y, cx, cy = tabular(n=60)
    by_list, _ = fitted(2, x, y, cx, cy, callbacks=[keras.callbacks.History()])
    trainer = L2RWModel(mlp(), clean_data=(cx, cy), clean_batch_size=8)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=SCCE)
    callbacks = keras.callbacks.CallbackList([keras.callbacks.History()], model=trainer)
    trainer.fit(x, y, batch_size=30, epochs=2, verbose=0, callbacks=callbacks)
    for a, b in zip(by_list.model.get_weights(), trainer.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_noisy_batches_give_a_plain_fit_the_trainers_order():
    """A plain model fitted on fit.noisy_batches (keyed on its own optimizer's step count) sees,
    step by step, the examples L2RWModel.fit draws, over several epochs."""
    from l2rw_tf.fit import EpochKey, noisy_batches
    n, batch, epochs = 50, 20, 3  # 3 steps an epoch, the last one of 10
    x = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32)
    targets = np.arange(n, dtype=np.float32)[:, None]  # each example's position

    def recording(base):
        class Recording(base):
            """Writes the targets of every step's batch (positions) into `seen`."""
            seen = tf.Variable(tf.fill([epochs * 3, batch], -1.0))

            def train_step(self, data):
                y = data[0][1] if base is L2RWModel else data[1]
                step = tf.cast(self.optimizer.iterations, tf.int32)
                row = tf.pad(y[:, 0], [[0, batch - tf.shape(y)[0]]], constant_values=-2.0)
                self.seen.assign(tf.tensor_scatter_nd_update(self.seen, [[step]], [row]))
                return super().train_step(data)
        return Recording

    trainer = recording(L2RWModel)(mlp(outputs=1), clean_data=(x[:10], targets[:10]), seed=4)
    trainer.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    trainer.fit(x, targets, batch_size=batch, epochs=epochs, verbose=0)
    plain = mlp(outputs=1)
    plain = recording(keras.Sequential)(plain.layers)
    plain.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    epoch_key = EpochKey()
    plain.fit(noisy_batches(x, targets, batch, seed=4, epoch_key=epoch_key), epochs=epochs,
              verbose=0, callbacks=[epoch_key])
    seen = trainer.seen.numpy()
    np.testing.assert_array_equal(plain.seen.numpy(), seen)
    epoch_orders = seen.reshape(epochs, -1)
    for order in epoch_orders:  # every example once an epoch, in a new order each epoch
        assert sorted(order[order >= 0].astype(int).tolist()) == list(range(n))
    assert len({tuple(order) for order in epoch_orders}) == epochs


def test_default_clean_batch_is_the_noisy_batch_but_at_least_100_and_at_most_the_clean_set():
    from l2rw_tf.fit import default_clean_batch_size
    assert default_clean_batch_size(1000, 32) == 100   # a small noisy batch: still 100 clean
    assert default_clean_batch_size(1000, None) == 100
    assert default_clean_batch_size(1000, 256) == 256
    assert default_clean_batch_size(50, 32) == 50      # the whole clean set when it is smaller
