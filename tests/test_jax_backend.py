"""L2RWModel under KERAS_BACKEND=jax (l2rw_tf/jax_step.py), exact against the TensorFlow step.

Each backend runs in a subprocess of its own (a process has one Keras backend): the same models,
initial weights and batches are fitted for 4 steps under both, and the example weights of every
step (through `example_weights()`, each example seen once: its weight times n) and the variables
after the steps are compared. Dropout draws its masks from a portable hash of the seed-generator
state (`portable_dropout` in SCRIPT, the same on both backends, whose own generators differ), so
the comparison also checks that the JAX step moves and advances the seed states as the
TensorFlow step does (the clean pass's masks its own, the real pass's those of the noisy meta
pass). Then, on JAX alone: an exact BackupAndRestore resume, stop_on_nan, and the weights against
central differences of the look-ahead in float64.
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                reason="jax is not installed (pip install -e '.[jax]')")

# name: (model, algorithm, meta_grad on JAX; the MLPs fit with sample weights). On TensorFlow
# meta_grad is "auto" (layerwise for the MLPs, jvp for the others): every method gives the same
# weights. The algorithms: "paper" (dropout in the meta passes, proportional weights), "select"
# (meta passes without dropout, equal weights on the examples of positive alignment).
CASES = {
    "mlp_l2_paper": ("mlp_l2", "paper", "auto"),
    "mlp_l2_select_lookahead": ("mlp_l2", "select", "lookahead"),
    "cnn_bn_dropout_select": ("cnn", "select", "auto"),
    "cnn_bn_dropout_paper": ("cnn", "paper", "auto"),
    "embedding_paper": ("embedding", "paper", "auto"),
}

SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import keras
    from keras import ops
    import keras.src.backend
    from keras.src.random.seed_generator import draw_seed

    def portable_dropout(inputs, rate, noise_shape=None, seed=None):
        """Dropout whose mask is an integer hash of the seed [s, c] and the element index."""
        s = ops.cast(draw_seed(seed), "int32")
        ones = ops.ones_like(ops.reshape(inputs, [-1]), dtype="int32")  # the batch may be None
        i = ops.reshape(ops.cumsum(ones) - 1, ops.shape(inputs))
        h = i * 1103515245 + s[0] * 747796405 + s[1] * 277803737
        for shift in (16, 13, 16):
            h = ops.bitwise_and(h, 0x7FFFFFFF)
            h = ops.bitwise_xor(h, ops.right_shift(h, shift)) * 73244475
        u = ops.cast(ops.bitwise_and(h, 0xFFFFFF), inputs.dtype) / float(2 ** 24)
        return ops.where(u >= rate, inputs / (1.0 - rate), ops.zeros_like(inputs))

    keras.src.backend.random.dropout = portable_dropout
    import l2rw_tf

    def build(kind):
        if kind.startswith("mlp"):
            reg = keras.regularizers.L2(1e-2) if kind == "mlp_l2" else None
            return keras.Sequential([
                keras.Input((6,)),
                keras.layers.Dense(16, activation="relu", kernel_regularizer=reg),
                keras.layers.Dense(2, kernel_regularizer=reg)])
        if kind == "embedding":
            tokens = keras.Input((5,), dtype="int32")
            h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(30, 4)(tokens))
            return keras.Model(tokens, keras.layers.Dense(2)(h))
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Dropout(0.3)(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    def set_initial(model):
        rng = np.random.default_rng(1)
        for v in model.variables:  # the weights and the seed-generator states
            if v.name == "seed_generator_state":
                v.assign(np.array([12345, 0], v.dtype))
            elif "variance" in v.name:
                v.assign((1.0 + 0.2 * np.abs(rng.normal(size=v.shape))).astype(v.dtype))
            else:
                v.assign((0.3 * rng.normal(size=v.shape)).astype(v.dtype))

    def data(kind):
        rng = np.random.default_rng(0)
        if kind == "embedding":
            x, cx = rng.integers(0, 30, (80, 5)).astype(np.int32), rng.integers(0, 30, (12, 5))
            return x, (x[:, 0] > 15).astype(np.int64), cx.astype(np.int32), rng.integers(0, 2, 12)
        shape = (6,) if kind.startswith("mlp") else (8, 8, 1)
        x = rng.normal(size=(80,) + shape).astype(np.float32)
        cx = rng.normal(size=(12,) + shape).astype(np.float32)
        classes = 2 if kind.startswith("mlp") else 3
        return x, rng.integers(0, classes, 80), cx, rng.integers(0, classes, 12)

    out = {}
    for name, (kind, algorithm, jax_meta_grad) in json.loads(sys.argv[2]).items():
        model = build(kind)
        set_initial(model)
        x, y, cx, cy = data(kind)
        meta_grad = jax_meta_grad if keras.backend.backend() == "jax" else "auto"
        trainer = l2rw_tf.L2RWModel(model, clean_data=(cx, cy), clean_batch_size=12,
                                    meta_grad=meta_grad, algorithm=algorithm)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        # Sample weights on the MLPs (0 leaves an example out, the others scale its loss).
        sample_weight = np.tile([1.0, 0.0, 0.5, 2.0], 20) if kind.startswith("mlp") else None
        history = trainer.fit(x, y, batch_size=20, epochs=1, shuffle=False, verbose=0,
                              sample_weight=sample_weight)
        out[name + "/weights"] = trainer.example_weights()["mean_weight"]
        out[name + "/zero_weight_fraction"] = np.array(history.history["zero_weight_fraction"])
        for i, v in enumerate(model.variables):
            out[f"{name}/{i}"] = np.asarray(v.numpy()).astype(np.float64)
    np.savez(sys.argv[1], **out)
''')


def run(backend, path):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path), json.dumps(CASES)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(path))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    return {backend: run(backend, tmp / f"{backend}.npz") for backend in ("tensorflow", "jax")}


@pytest.mark.parametrize("case", list(CASES))
def test_jax_fit_takes_the_tensorflow_steps(fitted, case):
    """Every step's example weights within 1e-5 relative, the variables after 4 steps of `fit`
    (parameters, BatchNorm statistics, seed states) within 1e-5."""
    tf_run, jax_run = fitted["tensorflow"], fitted["jax"]
    weights = tf_run[case + "/weights"]
    assert 0 < np.mean(weights == 0) < 1  # a real weighting: some examples left out
    np.testing.assert_allclose(jax_run[case + "/weights"], weights, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax_run[case + "/zero_weight_fraction"],
                               tf_run[case + "/zero_weight_fraction"], rtol=1e-6)
    keys = sorted(k for k in tf_run if k.startswith(case + "/") and k.split("/")[1].isdigit())
    assert keys and set(keys) <= set(jax_run)
    for key in keys:
        np.testing.assert_allclose(jax_run[key], tf_run[key], rtol=1e-5, atol=1e-6, err_msg=key)


RESUME_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import keras
    import l2rw_tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def trainer():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.3), keras.layers.Dense(2)])
        trainer = l2rw_tf.L2RWModel(model, clean_data=(x[:10], y[:10]), clean_batch_size=5,
                                    stop_on_nan=False)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return trainer

    backup = sys.argv[1]
    whole = trainer()
    whole.fit(x, y, batch_size=20, epochs=3, verbose=0)
    interrupted = trainer()  # stops after 2 epochs, its backup kept
    interrupted.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    resumed = trainer()
    resumed.fit(x, y, batch_size=20, epochs=3, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert int(resumed.optimizer.iterations.numpy()) == 9
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.example_stats.numpy(), resumed.example_stats.numpy())
''')


def test_backup_and_restore_resumes_exactly_on_jax(tmp_path):
    """A JAX fit resumed by BackupAndRestore after 2 of 3 epochs ends with the weights (dropout
    masks included: the seed states are in the backup) and statistics of an uninterrupted one."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path / "backup")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


NAN_SCRIPT = textwrap.dedent('''
    import numpy as np
    import keras
    import l2rw_tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def trainer():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.3), keras.layers.Dense(2)])
        trainer = l2rw_tf.L2RWModel(model, clean_data=(x[:10], y[:10]), clean_batch_size=5)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return trainer

    first = trainer()
    first.fit(x[:20], y[:20], batch_size=20, shuffle=False, verbose=0)
    bad = x.copy()
    bad[25] = np.nan  # in the second batch
    diverged = trainer()
    try:
        diverged.fit(bad, y, batch_size=20, shuffle=False, verbose=0)
        raise AssertionError("fit did not stop")
    except FloatingPointError as e:
        assert "diverged at step 2" in str(e), e
    assert int(diverged.optimizer.iterations.numpy()) == 1
    for a, b in zip(first.model.variables, diverged.model.variables):  # seed states included
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(diverged.example_weights()["times_seen"][:40],
                                  [1] * 20 + [0] * 20)
''')


def test_a_nan_step_is_undone_and_stops_fit_on_jax():
    """stop_on_nan on JAX, as on TensorFlow: the step of a NaN input is undone (model, optimizer
    and statistics as after step 1) and fit raises FloatingPointError naming step 2."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", NAN_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


FINITE_DIFFERENCE_SCRIPT = textwrap.dedent('''
    import jax
    jax.config.update("jax_enable_x64", True)
    import keras
    keras.config.set_floatx("float64")
    import jax.numpy as jnp
    import numpy as np
    from l2rw_tf import jax_step, reweight

    # softplus, not tanh, and no BatchNorm: on XLA's CPU, tanh is approximate (~1e-8) even in
    # float64, and a BatchNorm model's float64 losses showed rounding of that size too (its op
    # not traced), which central differences divide by h.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="softplus"),
                              keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    x, cx = rng.normal(size=(16, 6)), rng.normal(size=(10, 6))
    y, cy = rng.integers(0, 3, 16), rng.integers(0, 3, 10)
    loss_fn = jax_step.per_example(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    params = [v.value for v in model.trainable_variables]

    def noisy_losses(p):
        return loss_fn(y, model.stateless_call(p, [], x, training=True)[0])

    def clean_loss(p):
        return jnp.mean(loss_fn(cy, model.stateless_call(p, [], cx, training=True)[0]))

    # The look-ahead theta - eps_i grad C_i, differentiated in eps_i by central differences.
    jacobian = jax.jacrev(noisy_losses)(params)
    h, alignment = 1e-5, []
    for i in range(len(y)):
        step = [g[i] for g in jacobian]
        up = clean_loss([p - h * s for p, s in zip(params, step)])
        down = clean_loss([p + h * s for p, s in zip(params, step)])
        alignment.append(-(up - down) / (2 * h))
    expected = reweight.normalize_weights(jnp.array(alignment))
    assert 0 < np.sum(np.asarray(expected) > 0) < len(y)
    for meta_grad in ("jvp", "lookahead"):
        weights = jax_step.l2rw_gradients(model, params, [], (x, y, None), (cx, cy), loss_fn,
                                          meta_grad=meta_grad)[1]
        assert weights.dtype == jnp.float64
        np.testing.assert_allclose(weights, expected, rtol=1e-7, atol=1e-10)
''')


def test_jax_weights_equal_finite_differences_of_the_lookahead_in_float64():
    """On JAX in float64, the jvp and lookahead weights equal those from central differences
    of the clean loss along each example's look-ahead step."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", FINITE_DIFFERENCE_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
