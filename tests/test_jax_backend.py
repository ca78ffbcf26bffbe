"""L2RWModel under KERAS_BACKEND=jax (l2rw_tf/jax_step.py), exact against the TensorFlow step.

Each backend runs in a subprocess of its own (a process has one Keras backend): the same models,
initial weights and batches are fitted for 4 steps under both, and the example weights of every
step (through `example_weights()`, each example seen once: its weight times n) and the variables
after the steps are compared. Dropout draws its masks from a portable hash of the seed-generator
state (`portable_dropout` in SCRIPT, the same on both backends, whose own generators differ), so
the comparison also checks that the JAX step moves and advances the seed states as the
TensorFlow step does (the clean pass's masks its own, the real pass's those of the noisy meta
pass). The same fits run a third time on JAX under `keras.distribution.DataParallel` over 2 CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=2): the one-device TensorFlow weights
and variables again (the global batch's normalisation; BatchNorm on the global batch). Cases with
a LossScaleOptimizer (in float32, with a scale large enough that the first steps overflow and are
skipped) check that the loss scale is applied and undone as on TensorFlow. Then, on JAX alone: an
exact BackupAndRestore resume, stop_on_nan, the weights against central differences of the
look-ahead in float64, and mixed_float16.
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

# name: (model, algorithm, meta_grad, loss-scaled; the MLPs fit with sample weights). meta_grad
# "auto" is layerwise for the MLPs on TensorFlow, jvp on JAX: every method gives the same weights.
# The algorithms: "paper" (dropout in the meta passes, proportional weights), "select" (meta
# passes without dropout, equal weights on the examples of positive alignment). Loss-scaled: a
# LossScaleOptimizer (scale 2^15, in float32) and an infinite sample weight in the second batch,
# whose step overflows: the three other steps check that the scale is applied and undone, the
# second that the step is skipped (the scale halved, no statistic counted), as on TensorFlow.
CASES = {
    "mlp_l2_paper": ("mlp_l2", "paper", "auto", False),
    "mlp_l2_select_lookahead": ("mlp_l2", "select", "lookahead", False),
    "cnn_bn_dropout_select": ("cnn", "select", "auto", False),
    "cnn_bn_dropout_paper": ("cnn", "paper", "auto", False),
    "embedding_paper": ("embedding", "paper", "auto", False),
    "mlp_l2_select_loss_scaled": ("mlp_l2", "select", "auto", True),
    "mlp_l2_paper_lookahead_loss_scaled": ("mlp_l2", "paper", "lookahead", True),
    "cnn_bn_dropout_select_loss_scaled": ("cnn", "select", "auto", True),
    "cnn_bn_dropout_calibrated": ("cnn", "calibrated", "auto", False),
    "cnn_bn_dropout_calibrated_lookahead": ("cnn", "calibrated", "lookahead", False),
}
TESTS = os.path.dirname(os.path.abspath(__file__))

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

    out = {}
    data_parallel = sys.argv[3] == "data_parallel"
    if data_parallel:  # every fit below on 2 devices; what the step's inputs are split into
        import jax
        from l2rw_tf import jax_step
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        one_device_step, shardings = jax_step.train_step, []

        def recording_step(trainer, state, data):
            (x, *_), (clean_x, _) = data
            for t in (x, clean_x):
                jax.debug.inspect_array_sharding(t, callback=lambda s: shardings.append(
                    [len(s.device_set), s.is_fully_replicated]))
            return one_device_step(trainer, state, data)

        jax_step.train_step = recording_step

    sys.path.insert(0, sys.argv[4])
    from test_fit import bn_dropout_cnn

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
        return bn_dropout_cnn()

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

    for name, (kind, algorithm, meta_grad, loss_scaled) in json.loads(sys.argv[2]).items():
        model = build(kind)
        set_initial(model)
        x, y, cx, cy = data(kind)
        trainer = l2rw_tf.L2RWModel(model, clean_data=(cx, cy), clean_batch_size=12,
                                    meta_grad=meta_grad, algorithm=algorithm,
                                    stop_on_nan=not loss_scaled)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        if loss_scaled:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0 ** 15)
        trainer.compile(optimizer=optimizer,
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        # Sample weights on the MLPs (0 leaves an example out, the others scale its loss).
        sample_weight = np.tile([1.0, 0.0, 0.5, 2.0], 20) if kind.startswith("mlp") else None
        if loss_scaled:
            sample_weight = np.ones(80) if sample_weight is None else sample_weight
            sample_weight[25] = np.inf
        history = trainer.fit(x, y, batch_size=20, epochs=1, shuffle=False, verbose=0,
                              sample_weight=sample_weight)
        out[name + "/weights"] = trainer.example_weights()["mean_weight"]
        out[name + "/zero_weight_fraction"] = np.array(history.history["zero_weight_fraction"])
        out[name + "/applied_steps"] = np.array(int(trainer.optimizer.iterations.numpy()))
        if loss_scaled:
            out[name + "/loss_scale"] = np.array(float(trainer.optimizer.dynamic_scale.numpy()))
        for i, v in enumerate(model.variables):
            out[f"{name}/{i}"] = np.asarray(v.numpy()).astype(np.float64)
    if data_parallel:
        out["shardings"] = np.array(shardings)
        trainer.clean_batch_size = 5  # does not split over 2 devices
        try:
            trainer.fit(x, y, batch_size=20, epochs=1, verbose=0)
        except ValueError as e:
            out["refusal"] = np.array(str(e))
    np.savez(sys.argv[1], **out)
''')


def run_script(script, *args, backend="jax", **env):
    """`script` run by Python under KERAS_BACKEND=`backend` on the CPU, with `args` and `env`;
    fails the test with its stderr's end if it fails."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="", **env)
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def fit_cases(path, backend="jax", data_parallel=False):
    """SCRIPT's fits of CASES under `backend` (on JAX: on 2 CPU devices, `data_parallel`), as
    {name/quantity: array}."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if data_parallel else {}
    run_script(SCRIPT, path, json.dumps(CASES), "data_parallel" if data_parallel else "one",
               TESTS, backend=backend, **env)
    return dict(np.load(path))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    return {"tensorflow": fit_cases(tmp / "tensorflow.npz", backend="tensorflow"),
            "jax": fit_cases(tmp / "jax.npz"),
            "jax_data_parallel": fit_cases(tmp / "jax_data_parallel.npz", data_parallel=True)}


def assert_same_steps(got, want, case, weight_atol=1e-7):
    """Every step's example weights within 1e-5 relative (or `weight_atol`), the variables after
    the steps (parameters, BatchNorm statistics, seed states) within 1e-5; the same steps applied
    (and, under a LossScaleOptimizer, skipped) and the same final loss scale."""
    weights = want[case + "/weights"]
    assert 0 < np.mean(weights == 0) < 1  # a real weighting: some examples left out
    np.testing.assert_allclose(got[case + "/weights"], weights, rtol=1e-5, atol=weight_atol)
    np.testing.assert_allclose(got[case + "/zero_weight_fraction"],
                               want[case + "/zero_weight_fraction"], rtol=1e-6)
    for quantity in ("applied_steps", "loss_scale"):
        if case + "/" + quantity in want:
            assert got[case + "/" + quantity] == want[case + "/" + quantity], quantity
    keys = sorted(k for k in want if k.startswith(case + "/") and k.split("/")[1].isdigit())
    assert keys and set(keys) <= set(got)
    for key in keys:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("case", list(CASES))
def test_jax_fit_takes_the_tensorflow_steps(fitted, case):
    """4 steps of `fit` on JAX and on TensorFlow: the same weights and variables."""
    assert_same_steps(fitted["jax"], fitted["tensorflow"], case)
    if CASES[case][3]:  # the second step skipped, its examples not counted
        assert fitted["tensorflow"][case + "/applied_steps"] == 3
        assert fitted["tensorflow"][case + "/loss_scale"] == 2.0 ** 14
        assert np.all(np.isnan(fitted["tensorflow"][case + "/weights"][20:40]))


@pytest.mark.parametrize("case", list(CASES))
def test_jax_data_parallel_takes_the_one_device_tensorflow_steps(fitted, case):
    """The same fits under keras.distribution.DataParallel over 2 CPU devices, each step's
    noisy and clean batches split between them: the one-device TensorFlow steps. (The weights
    within 1e-5 of the largest: sums over two devices add in another order, and a proportional
    weight of 1% of the largest, an alignment near zero, then differs by 4e-5 of itself.)"""
    shardings = fitted["jax_data_parallel"]["shardings"]
    assert len(shardings) and np.all(shardings == [2, False])
    want = fitted["tensorflow"]
    assert_same_steps(fitted["jax_data_parallel"], want, case,
                      weight_atol=1e-5 * np.nanmax(want[case + "/weights"]))


def test_jax_data_parallel_refuses_a_clean_batch_that_does_not_split(fitted):
    assert str(fitted["jax_data_parallel"]["refusal"]) == (
        "the clean batch of 5 does not split evenly over 2 devices: give a clean_batch_size "
        "divisible by them")


# The resume and stop_on_nan scripts' data and trainer: an MLP with dropout.
TRAINER = textwrap.dedent('''
    import sys
    import numpy as np
    import keras
    import l2rw_tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def trainer(**kwargs):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.3), keras.layers.Dense(2)])
        trainer = l2rw_tf.L2RWModel(model, clean_data=(x[:10], y[:10]), clean_batch_size=5,
                                    **kwargs)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return trainer
''')

RESUME_SCRIPT = TRAINER + textwrap.dedent('''
    backup = sys.argv[1]
    whole = trainer(stop_on_nan=False)
    whole.fit(x, y, batch_size=20, epochs=3, verbose=0)
    interrupted = trainer(stop_on_nan=False)  # stops after 2 epochs, its backup kept
    interrupted.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    resumed = trainer(stop_on_nan=False)
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
    run_script(RESUME_SCRIPT, tmp_path / "backup")


SAVE_SCRIPT = TRAINER + textwrap.dedent('''
    fitted = trainer()
    fitted.fit(x, y, batch_size=20, epochs=2, verbose=0)
    path = sys.argv[1] + "/model.keras"
    fitted.model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(fitted.model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    config = fitted.get_config()
    again = l2rw_tf.L2RWModel.from_config(config)
    assert again.get_config() == config and again.algorithm == "calibrated"
''')


def test_the_fitted_model_saves_and_loads_on_jax(tmp_path):
    """model.save / keras.models.load_model of a model L2RWModel fitted on JAX: the same
    predictions; the trainer's config round-trips (the default algorithm included)."""
    run_script(SAVE_SCRIPT, tmp_path)


NAN_SCRIPT = TRAINER + textwrap.dedent('''
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
    run_script(NAN_SCRIPT)


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
    run_script(FINITE_DIFFERENCE_SCRIPT)


MIXED_FLOAT16_SCRIPT = textwrap.dedent('''
    import jax
    import keras
    import numpy as np
    import l2rw_tf
    from l2rw_tf import data, jax_step, models, precision

    # The weights of a LeNet under mixed_float16 with a loss scale of 2^12, against float32 at
    # the same parameters, on a real MNIST batch (40 noisy, 40 clean), as test_mixed_precision's
    # TensorFlow test; the gradients divided by the scale against float32's.
    experiment = data.noisy_experiment("mnist", "background", 0.4, clean_per_class=10,
                                       num_hyper_val=5000, seed=0)
    pick = np.random.default_rng(0).choice(len(experiment.train_labels), 40, replace=False)
    noisy = (np.asarray(data.to_float(experiment.train_images[pick])),
             experiment.train_labels[pick], None)
    clean = (np.asarray(data.to_float(experiment.clean_images[:40])),
             experiment.clean_labels[:40])
    loss_fn = jax_step.per_example(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    parameters = models.build_model("lenet", 10, (28, 28, 1), seed=0).get_weights()
    for method in ("jvp", "lookahead"):
        result = {}
        for policy, scale in (("float32", None), ("mixed_float16", 2.0 ** 12)):
            with precision.global_policy(policy):
                model = models.build_model("lenet", 10, (28, 28, 1), seed=0)
                model.set_weights(parameters)
                assert model.layers[-1].compute_dtype == policy.split("_")[-1]
                step = jax.jit(lambda params: jax_step.l2rw_gradients(
                    model, params, [], noisy, clean, loss_fn, meta_grad=method,
                    loss_scale=scale))
                grads, weights = step([v.value for v in model.trainable_variables])[:2]
                result[policy] = (np.asarray(weights),
                                  [np.asarray(g) / (scale or 1.0) for g in grads])
        (want, want_grads), (got, got_grads) = result["float32"], result["mixed_float16"]
        assert got.dtype == np.float32 and np.all(np.isfinite(got)), method
        assert np.max(np.abs(got - want)) <= 0.01 * np.max(want), method
        assert np.array_equal(got > 0, want > 0) and 0 < np.sum(want > 0) < 40, method
        for g, w in zip(got_grads, want_grads):
            assert np.linalg.norm(g - w) <= 0.03 * np.linalg.norm(w), method

    # fit under mixed_float16: compile wraps the optimizer in a LossScaleOptimizer. From a scale
    # of 2^18 (measured: at 2^16 and above the scaled gradients of these random images overflow
    # float16 on XLA's CPU; TensorFlow's CPU kernels overflow at 2^15 already) the first steps
    # are skipped, halving the scale, and count in no statistic.
    rng = np.random.default_rng(0)
    x, y = rng.random((100, 28, 28, 1), np.float32), rng.integers(0, 10, 100)
    clean = rng.random((25, 28, 28, 1), np.float32), rng.integers(0, 10, 25)
    for initial_scale in (None, 2.0 ** 18):
        with precision.global_policy("mixed_float16"):
            model = models.build_model("lenet", 10, (28, 28, 1), seed=0)
            trainer = l2rw_tf.L2RWModel(model, clean_data=clean)
            optimizer = keras.optimizers.SGD(0.1)
            if initial_scale is not None:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale)
            trainer.compile(optimizer=optimizer,
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = trainer.fit(x, y, batch_size=25, epochs=2, verbose=0).history
        assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
        assert all(np.all(np.isfinite(v)) for v in history.values()), history
        assert all(np.all(np.isfinite(w)) for w in model.get_weights())
        applied = int(trainer.optimizer.iterations.numpy())
        scale = float(trainer.optimizer.dynamic_scale.numpy())
        stats = trainer.example_weights()
        assert stats["times_seen"].sum() == 25 * applied
        assert np.all(np.isfinite(stats["mean_weight"][stats["times_seen"] > 0]))
        # Each skipped step halved the scale (none grows it within 2000 steps).
        start = 2.0 ** 15 if initial_scale is None else initial_scale
        assert applied > 0 and scale == start / 2 ** (8 - applied), (applied, scale)
        assert initial_scale is None or applied < 8
''')


@pytest.mark.slow  # about 2 minutes on 2 loaded cores (float16 LeNet on a CPU)
def test_mixed_float16_on_jax():
    """mixed_float16 on JAX: the loss-scaled float16 weights within 1% of float32's (the same
    examples kept) and the unscaled gradients within 3%, on MNIST; `fit` with Keras' dynamic
    loss scaling, its overflowing steps skipped and left out of the statistics."""
    run_script(MIXED_FLOAT16_SCRIPT)


def test_bench_times_the_jax_steps_beside_tensorflows():
    """`python -m l2rw_tf.bench --backends=tensorflow,jax`'s machinery: the JAX rows come from a
    subprocess (fit's steps on JAX: plain, L2RW per method, the n + m floor), and the table
    gives each backend's L2RW / plain ratio."""
    from l2rw_tf import bench
    rows = bench.bench_model("mlp", 8, [4], ["jvp", "layerwise"], rounds=1, steps=1)
    rows += bench.other_backend_rows("jax", ["mlp"], 8, [4], ["jvp", "layerwise", "lookahead"],
                                     rounds=1, steps=1)
    jax_row = rows[-1]
    assert jax_row["backend"] == "jax" and (jax_row["n"], jax_row["m"]) == (8, 4)
    assert set(jax_row["ms_per_step"]) == {"baseline", "l2rw_jvp", "l2rw_lookahead", bench.FLOOR}
    assert all(ms > 0 for ms in jax_row["ms_per_step"].values())
    assert jax_row["ratio_to_baseline"]["baseline"] == 1.0
    ratios = {r["backend"]: r for r in bench.backend_ratios(rows)}
    assert ratios["tensorflow"]["variant"] == "l2rw_layerwise"  # auto on TensorFlow's MLP
    assert ratios["jax"]["ratio"] == jax_row["ratio_to_baseline"]["l2rw_jvp"]
    table = bench.format_table(rows)
    assert "L2RW step / plain step" in table and "jax" in table.splitlines()[3]
