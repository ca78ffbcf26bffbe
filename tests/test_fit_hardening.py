"""`L2RWModel` against what a Keras user brings (issue 24, items 1-7): recurrent models, float64,
non-finite training, bad inputs refused with a ValueError / TypeError that names the argument and
the fix, inputs Keras' own `fit` accepts, batch-level BackupAndRestore and other backends."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from l2rw_tf import fit as fit_module
from l2rw_tf.fit import L2RWModel, choose_meta_grad

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tabular(n=40, m=10, features=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    cx = rng.normal(size=(m, features)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64), cx, (cx[:, 0] > 0).astype(np.int64)


def mlp(features=4, outputs=2, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(outputs)])


def trainer_of(model=None, clean=None, optimizer=None, loss=SCCE, **kwargs):
    """A compiled trainer of the small MLP (or `model`) on the small clean set (or `clean`)."""
    _, _, cx, cy = tabular()
    trainer = L2RWModel(model if model is not None else mlp(),
                        clean_data=clean if clean is not None else (cx, cy), **kwargs)
    trainer.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), loss=loss)
    return trainer


# ---- 1. recurrent models: `auto` picks a method that runs in the traced step -----------------

def recurrent_model(kind, seed=0):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(30, 4)(tokens)
    h = getattr(keras.layers, kind)(6)(h)
    return keras.Model(tokens, keras.layers.Dense(2)(h))


def token_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 30, (n, 5)).astype(np.int32)
    return x, (x[:, 0] > 15).astype(np.int64)


def test_a_recurrent_model_trains_with_the_auto_method():
    """Forward mode (jvp) does not pass through the TensorArrays of a traced recurrent loop
    (TensorFlow's ForwardAccumulator): `auto` takes lookahead, whose traced step has the weights
    of eager jvp on every recurrent layer (test_reweight_models.py)."""
    model = recurrent_model("LSTM")
    assert choose_meta_grad(model) == "lookahead"
    x, y = token_data()
    trainer = trainer_of(model, clean=(x[:10], y[:10]))
    history = trainer.fit(x, y, batch_size=20, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


def test_jvp_on_a_recurrent_model_is_refused_by_name():
    x, y = token_data()
    trainer = trainer_of(recurrent_model("LSTM"), clean=(x[:10], y[:10]), meta_grad="jvp")
    with pytest.raises(ValueError, match="meta_grad='jvp'.*recurrent.*'lookahead'"):
        trainer.fit(x, y, batch_size=20, verbose=0)


# ---- 2. float64 ----------------------------------------------------------------------------

@pytest.fixture
def float64():
    """Keras in float64, as `keras.config.set_floatx("float64")` at the start of a program makes
    it (here the global dtype policy, cached from floatx by the first layer, is set too)."""
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("meta_grad", ["auto", "jvp", "lookahead"])
def test_fit_trains_a_float64_model(float64, meta_grad):
    x, y, cx, cy = tabular()
    trainer = trainer_of(mlp(), clean=(cx.astype(np.float64), cy), meta_grad=meta_grad)
    history = trainer.fit(x.astype(np.float64), y, batch_size=20, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert trainer.model.weights[0].dtype == "float64"
    assert trainer.example_weights()["times_seen"].tolist() == [1] * 40


# ---- 3. non-finite training stops, with the weights before the bad step --------------------

def weights_of(trainer):
    return [np.array(w) for w in trainer.model.get_weights()]


@pytest.mark.parametrize("fault", ["lr_nan", "lr_inf", "noisy_nan", "clean_nan",
                                   "sample_weight_nan"])
def test_a_non_finite_step_stops_fit_and_keeps_the_last_good_weights(fault):
    x, y, cx, cy = tabular()
    lr = {"lr_nan": float("nan"), "lr_inf": float("inf")}.get(fault, 0.1)
    sample_weight = np.ones(40, np.float32)
    if fault == "noisy_nan":
        x[25, 1] = np.nan  # in the second batch
    if fault == "clean_nan":
        cx[3, 0] = np.nan
    if fault == "sample_weight_nan":
        sample_weight[30] = np.nan
    trainer = trainer_of(clean=(cx, cy), optimizer=keras.optimizers.SGD(lr, momentum=0.9))
    first_step = {"noisy_nan": 2, "sample_weight_nan": 2}.get(fault, 1)
    reference = trainer_of(clean=(cx, cy), optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    if first_step == 2:  # the good first step, on the same batch
        reference.fit(x[:20], y[:20], batch_size=20, epochs=1, shuffle=False, verbose=0)
    with pytest.raises(FloatingPointError, match=f"diverged at step {first_step}.*stop_on_nan"):
        trainer.fit(x, y, sample_weight=sample_weight, batch_size=20, epochs=3, shuffle=False,
                    verbose=0)
    assert int(trainer.optimizer.iterations) == first_step - 1
    for a, b in zip(weights_of(trainer), weights_of(reference)):
        np.testing.assert_array_equal(a, b)


def test_a_learning_rate_too_large_stops_fit_before_the_weights_overflow():
    x, y, cx, cy = tabular()
    trainer = trainer_of(clean=(cx, cy), optimizer=keras.optimizers.SGD(1e6, momentum=0.9))
    with pytest.raises(FloatingPointError, match="diverged at step"):
        trainer.fit(x, y, batch_size=20, epochs=20, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in trainer.model.get_weights())


def test_a_float64_value_beyond_float32_is_not_taken_for_a_divergence(float64):
    x, y, cx, cy = tabular()
    trainer = trainer_of(clean=(cx.astype(np.float64), cy))
    trainer.model.layers[-1].bias.assign([1e300, 1e300])  # finite in float64, not in float32
    trainer.fit(x.astype(np.float64), y, batch_size=20, verbose=0)
    assert int(trainer.optimizer.iterations) == 2


def test_a_non_finite_step_keeps_batchnorm_statistics_and_optimizer_state():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    x, y, cx, cy = tabular()
    x[25, 0] = np.inf
    trainer = trainer_of(model, clean=(cx, cy), optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    with pytest.raises(FloatingPointError, match="diverged at step 2"):
        trainer.fit(x, y, batch_size=20, shuffle=False, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert all(np.all(np.isfinite(np.asarray(v))) for v in trainer.optimizer.variables)


def test_under_a_loss_scale_optimizer_nan_data_stops_but_overflows_do_not():
    """mixed_float16: the LossScaleOptimizer skips the steps whose scaled gradients overflow
    (and lowers its scale), which is no divergence; a NaN feature is one."""
    from l2rw_tf import precision
    x, y, cx, cy = tabular()
    with precision.global_policy("mixed_float16"):
        overflowing = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1),
                                                          initial_scale=2.0 ** 40)
        trainer = trainer_of(mlp(), clean=(cx, cy), optimizer=overflowing)
        trainer.fit(x, y, batch_size=20, shuffle=False, verbose=0)  # both steps skipped
        assert float(trainer.optimizer.dynamic_scale.numpy()) == 2.0 ** 38
        x[25, 1] = np.nan
        trainer = trainer_of(mlp(), clean=(cx, cy))
        with pytest.raises(FloatingPointError, match="diverged at step 2"):
            trainer.fit(x, y, batch_size=20, shuffle=False, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in trainer.model.get_weights())


def test_stop_on_nan_false_trains_on():
    x, y, cx, cy = tabular()
    x[25, 1] = np.nan
    trainer = trainer_of(clean=(cx, cy), stop_on_nan=False)
    history = trainer.fit(x, y, batch_size=20, shuffle=False, verbose=0)
    assert np.isnan(history.history["loss"][0])


def test_a_non_finite_step_on_a_dataset_stops_too():
    x, y, cx, cy = tabular()
    x[5, 0] = np.nan
    trainer = trainer_of(clean=(cx, cy))
    with pytest.raises(FloatingPointError, match="diverged at step 1"):
        trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(20), verbose=0)
    assert int(trainer.optimizer.iterations) == 0


# ---- 4. bad inputs: a ValueError / TypeError naming the argument and the fix ------------------

@pytest.mark.parametrize("labels,match", [
    (lambda y: y + 2, r"y holds labels up to 3.*model has 2 outputs"),
    (lambda y: y - 1, r"y holds negative labels"),
])
def test_labels_out_of_range_are_refused(labels, match):
    x, y, cx, cy = tabular()
    with pytest.raises(ValueError, match=match):
        trainer_of().fit(x, labels(y), batch_size=20, verbose=0)
    with pytest.raises(ValueError, match=match.replace("y holds", "clean_data's y holds")):
        trainer_of(clean=(cx, labels(cy))).fit(x, y, batch_size=20, verbose=0)


def test_labels_out_of_range_in_a_dataset_are_refused():
    x, y, cx, cy = tabular()
    with pytest.raises(ValueError, match=r"y holds labels outside \[0, 2\)"):
        trainer_of().fit(tf.data.Dataset.from_tensor_slices((x, y + 5)).batch(20), verbose=0)


def test_labels_of_the_other_encoding_are_refused():
    x, y, cx, cy = tabular()
    with pytest.raises(ValueError, match="y looks one-hot.*sparse.*argmax"):
        trainer_of(clean=(cx, np.eye(2)[cy])).fit(x, np.eye(2)[y], batch_size=20, verbose=0)
    categorical = keras.losses.CategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match="y holds class ids.*to_categorical"):
        trainer_of(loss=categorical).fit(x, y, batch_size=20, verbose=0)


def test_clean_arrays_of_different_lengths_are_named():
    x, y, cx, cy = tabular()
    with pytest.raises(ValueError, match=r"clean_data's x and y have different lengths \[9, 10\]"):
        trainer_of(clean=(cx, cy[:9])).fit(x, y, batch_size=20, verbose=0)


def test_string_labels_are_refused():
    x, y, cx, cy = tabular()
    with pytest.raises(TypeError, match="y holds strings.*integer class ids"):
        trainer_of().fit(x, np.where(y == 1, "cat", "dog"), batch_size=20, verbose=0)
    with pytest.raises(TypeError, match="clean_data's y holds strings"):
        trainer_of(clean=(cx, np.where(cy == 1, "cat", "dog"))).fit(x, y, verbose=0)


def test_noisy_and_clean_shapes_that_differ_are_refused():
    x, y, cx, cy = tabular()
    with pytest.raises(ValueError, match=r"clean_data's x.*\(5,\).*x.*\(4,\)"):
        trainer_of(clean=(np.zeros((10, 5), np.float32), cy)).fit(x, y, verbose=0)
    onehot = keras.losses.CategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match=r"clean_data's y.*\(3,\).*y.*\(2,\)"):
        trainer_of(clean=(cx, np.eye(3, dtype=np.float32)[cy]), loss=onehot).fit(
            x, np.eye(2, dtype=np.float32)[y], verbose=0)


def test_a_two_output_model_with_one_loss_is_refused_at_compile():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(2)(inputs)])
    _, _, cx, cy = tabular()
    with pytest.raises(ValueError, match="model has 2 outputs.*one output"):
        L2RWModel(model, clean_data=(cx, cy)).compile(optimizer="sgd", loss=SCCE)


def test_clean_data_as_python_lists_is_accepted():
    x, y, cx, cy = tabular()
    for clean in ([cx, cy], (cx.tolist(), cy.tolist())):
        trainer = trainer_of(clean=clean)
        assert np.isfinite(trainer.fit(x, y, batch_size=20, verbose=0).history["loss"][0])


def test_a_three_tuple_clean_set_is_refused():
    x, y, cx, cy = tabular()
    with pytest.raises(ValueError, match=r"clean_data must be \(x, y\).*3"):
        L2RWModel(mlp(), clean_data=(cx, cy, np.ones(10)))


def test_a_list_of_input_arrays_is_accepted():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,)), keras.Input((3,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    x, y, cx, cy = tabular()
    rng = np.random.default_rng(1)
    trainer = trainer_of(model, clean=([cx, rng.normal(size=(10, 3)).astype(np.float32)], cy))
    history = trainer.fit([x, rng.normal(size=(40, 3)).astype(np.float32)], y, batch_size=20,
                          verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_an_unbatched_dataset_and_batch_size_with_a_dataset_are_refused():
    x, y, cx, cy = tabular()
    with pytest.raises(ValueError, match=r"x is a dataset of single examples.*\.batch\("):
        trainer_of().fit(tf.data.Dataset.from_tensor_slices((x, y)), verbose=0)
    with pytest.raises(ValueError, match="batch_size.*dataset"):
        trainer_of().fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(20), batch_size=10,
                         verbose=0)


def test_a_batched_clean_dataset_is_refused():
    x, y, cx, cy = tabular()
    clean = tf.data.Dataset.from_tensor_slices((cx, cy)).batch(5)
    with pytest.raises(ValueError, match=r"clean_data is a dataset of batches.*unbatch\(\)"):
        trainer_of(clean=clean).fit(x, y, batch_size=20, verbose=0)


def test_an_unbuilt_sequential_is_built_as_keras_does():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    x, y, cx, cy = tabular()
    trainer = trainer_of(model)
    history = trainer.fit(x, y, batch_size=20, verbose=0)
    assert model.built and np.isfinite(history.history["loss"][0])


def test_an_unbuilt_sequential_on_a_dataset_is_built_too():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    x, y, cx, cy = tabular()
    trainer_of(model).fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(20), verbose=0)
    assert model.built


# ---- 5. wrongly accepted ----------------------------------------------------------------------

def test_a_model_without_trainable_weights_is_refused():
    model = mlp()
    model.trainable = False
    _, _, cx, cy = tabular()
    with pytest.raises(ValueError, match="model has no trainable weights"):
        L2RWModel(model, clean_data=(cx, cy))


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_a_clean_batch_size_below_one_is_refused(size):
    _, _, cx, cy = tabular()
    with pytest.raises(ValueError, match=f"clean_batch_size={size}"):
        L2RWModel(mlp(), clean_data=(cx, cy), clean_batch_size=size)


def test_a_clean_batch_size_of_zero_set_after_construction_is_refused():
    x, y, _, _ = tabular()
    trainer = trainer_of()
    trainer.clean_batch_size = 0
    with pytest.raises(ValueError, match=r"clean_batch_size=0 must be in \[1, 10\]"):
        trainer.fit(x, y, batch_size=20, verbose=0)


def test_a_batch_size_below_one_is_refused():
    x, y, _, _ = tabular()
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        trainer_of().fit(x, y, batch_size=0, verbose=0)


def test_no_examples_are_refused():
    x, y, _, _ = tabular()
    with pytest.raises(ValueError, match="hold no examples"):
        trainer_of().fit(x[:0], y[:0], verbose=0)


def test_negative_sample_weights_are_refused():
    x, y, _, _ = tabular()
    weights = np.ones(40, np.float32)
    weights[3] = -1.0
    with pytest.raises(ValueError, match="sample_weight.*negative"):
        trainer_of().fit(x, y, sample_weight=weights, batch_size=20, verbose=0)
    with pytest.raises(ValueError, match="sample_weight.*negative"):
        trainer_of().fit(tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(20),
                         verbose=0)


# ---- 6. BackupAndRestore saving within an epoch ----------------------------------------------

def test_backup_and_restore_within_an_epoch_is_refused(tmp_path):
    x, y, _, _ = tabular()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=2)
    with pytest.raises(ValueError, match="save_freq=2.*save_freq='epoch'"):
        trainer_of().fit(x, y, batch_size=20, callbacks=[backup], verbose=0)
    assert not (tmp_path / "backup").exists()


# ---- 7. other Keras backends ------------------------------------------------------------------

def test_another_keras_backend_is_refused_at_construction(monkeypatch):
    _, _, cx, cy = tabular()
    monkeypatch.setattr(fit_module.keras.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError, match="TensorFlow or JAX backend.*KERAS_BACKEND=tensorflow"):
        L2RWModel(mlp(), clean_data=(cx, cy))


# ---- 3 (continued). on several replicas ------------------------------------------------------

MIRRORED_NAN = """
import json, sys
import numpy as np
from l2rw_tf import distribute
distribute.use_cpu_devices(2)
import keras, tensorflow as tf
import l2rw_tf
sys.path.insert(0, {tests!r})
from test_fit_hardening import mlp, tabular, SCCE

x, y, cx, cy = tabular()
x[25, 1] = np.nan  # in the second batch
result = {{}}
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    trainer = l2rw_tf.L2RWModel(mlp(), clean_data=(cx, cy))
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=SCCE)
    try:
        trainer.fit(x, y, batch_size=20, shuffle=False, verbose=0)
    except FloatingPointError as e:
        result["error"] = str(e)
    result["iterations"] = int(trainer.optimizer.iterations.numpy())
    result["weights"] = [w.tolist() for w in trainer.model.get_weights()]
    reference = l2rw_tf.L2RWModel(mlp(), clean_data=(cx, cy))
    reference.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=SCCE)
    reference.fit(x[:20], y[:20], batch_size=20, shuffle=False, verbose=0)
    result["reference"] = [w.tolist() for w in reference.model.get_weights()]
print(json.dumps(result))
"""


@pytest.mark.slow  # ~40 s on 2 loaded cores: a subprocess of two virtual devices
def test_a_non_finite_step_under_mirrored_keeps_the_last_good_weights(tmp_path):
    import json
    import os
    import pathlib
    import subprocess
    import sys
    tests = str(pathlib.Path(__file__).parent)
    script = tmp_path / "mirrored_nan.py"
    script.write_text(MIRRORED_NAN.format(tests=tests))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "diverged at step 2" in result["error"]
    assert result["iterations"] == 1
    for a, b in zip(result["weights"], result["reference"]):
        np.testing.assert_allclose(a, b, rtol=1e-6)
