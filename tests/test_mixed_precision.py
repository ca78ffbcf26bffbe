"""Mixed precision (issue 17): `--mixed_precision`, float32 losses and alignments under a mixed
policy, and mixed_float16's loss scaling in the CLI's step and in `L2RWModel.fit`.

Every test that builds models under a mixed policy does so inside `precision.global_policy`,
which restores the previous (float32) policy afterwards, so the rest of the suite is unaffected
(`test_the_policy_is_restored` checks it). bfloat16 and float16 kernels both run on this CPU.
"""
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import l2rw_tf
from conftest import REPO
from l2rw_tf import data, main, models, precision, reweight, train
from l2rw_tf.step import StepConfig, step_gradients
from test_reweight import relative_error, small_bn_model


def spearman(a, b):
    """Spearman's rank correlation: the Pearson correlation of the ranks, ties at their mean rank
    (L2RW sets many weights to exactly zero)."""
    def ranks(x):
        x = np.asarray(x, np.float64)
        rank = np.empty(len(x))
        rank[np.argsort(x, kind="stable")] = np.arange(len(x))
        _, tie, count = np.unique(x, return_inverse=True, return_counts=True)
        return (np.bincount(tie, weights=rank) / count)[tie]
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def test_spearman_of_known_cases():
    x = np.array([0.0, 0.0, 0.1, 0.5, 0.2])
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # Ranks with the tie at 1.5: [1.5, 1.5, 3, 5, 4] against [1, 2, 3, 4, 5].
    assert spearman(x, np.arange(5)) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 5, 4],
                                                                  np.arange(5))[0, 1])


def mnist_background():
    """The CLI's MNIST BackgroundFlip 40% experiment (configs/mnist_background_lenet_cpu.flags)."""
    return data.noisy_experiment("mnist", "background", 0.4, clean_per_class=10,
                                 num_hyper_val=5000, seed=0)


@pytest.fixture(scope="module")
def noisy_mnist():
    return mnist_background()


def batches(experiment, as_inputs=data.to_float, seed=0):
    """A noisy batch of 100 drawn from the experiment's noisy pool (40% of it corrupted) and its
    100 clean images, as model inputs."""
    pick = np.random.default_rng(seed).choice(len(experiment.train_labels), 100, replace=False)
    return ((as_inputs(experiment.train_images[pick]), tf.constant(experiment.train_labels[pick])),
            (as_inputs(experiment.clean_images), tf.constant(experiment.clean_labels)))


def as_cifar_shape(images):
    """uint8 MNIST images in [-1, 1] as 32x32x3 (zero-padded, channel repeated): ResNet inputs
    with the statistics of real images."""
    padded = tf.pad(data.to_signed(images), [[0, 0], [2, 2], [2, 2], [0, 0]])
    return tf.repeat(padded, 3, axis=-1)


def weights_under(policy, build, parameters, noisy, clean, meta_grad, **kwargs):
    """The L2RW weights of `build()`'s model with `parameters`, built under `policy`."""
    with precision.global_policy(policy):
        model = build()
        model.set_weights(parameters)
        if policy != "float32":  # the comparison is not vacuous: the layers compute in half
            assert model.layers[-1].compute_dtype == policy.split("_")[1]
        weights = reweight.example_weights(model, noisy, clean, meta_grad, **kwargs)
    assert weights.dtype == tf.float32
    return weights.numpy()


def after_warm_up(build, experiment, meta_grad, lr, steps, as_inputs=data.to_float):
    """The parameters of `build()`'s model after `steps` float32 L2RW steps on noisy batches of
    `experiment`: a trained state. How far bfloat16 moves the weights is about how far
    perturbing the float32 parameters by 2^-8 (bfloat16's rounding) moves them, which depends
    on the state. Measured on these batches: the small ResNet's at its initialisation are
    ill-conditioned (Spearman 0.95 after that perturbation, 0.92 under bfloat16), LeNet's after
    20 steps 0.993 and 0.991, after 100 steps 0.9993 and 0.998."""
    model = build()
    optimizer = train.TF1Momentum(lr)
    config = StepConfig(meta_grad=meta_grad)

    @tf.function
    def train_step(noisy, clean):
        result = step_gradients(model, config, noisy, clean)
        optimizer.apply_gradients(zip(result.gradients, model.trainable_variables))

    for step in range(steps):
        train_step(*batches(experiment, as_inputs, seed=1 + step))
    return model.get_weights()


def lenet():
    return models.build_model("lenet", 10, (28, 28, 1), seed=0)


def small_resnet():
    return models.build_model("resnet", 10, (32, 32, 3), seed=0, units=1, width=0.25)


@pytest.fixture(scope="module")
def trained_lenet(noisy_mnist):
    return after_warm_up(lenet, noisy_mnist, "layerwise", lr=0.01, steps=100)


@pytest.mark.parametrize("meta_grad", ["layerwise", "jvp"])
def test_bfloat16_weights_rank_as_float32_on_lenet(noisy_mnist, trained_lenet, meta_grad):
    noisy, clean = batches(noisy_mnist)
    parameters = trained_lenet
    want = weights_under("float32", lenet, parameters, noisy, clean, meta_grad)
    got = weights_under("mixed_bfloat16", lenet, parameters, noisy, clean, meta_grad)
    assert 0 < np.count_nonzero(want) < len(want)  # some examples are zeroed, some not
    rho = spearman(got, want)
    print(f"LeNet {meta_grad}: Spearman {rho:.4f}, max |dw| {np.max(np.abs(got - want)):.2e}")
    assert rho >= 0.99
    assert abs(np.sum(got) - 1.0) < 1e-5


def resnet_spearman(experiment):
    """bfloat16 against float32 weights of the small ResNet on a noisy batch, after 30 float32
    warm-up steps at lr 0.1."""
    noisy, clean = batches(experiment, as_cifar_shape)
    parameters = after_warm_up(small_resnet, experiment, "jvp", lr=0.1, steps=30,
                               as_inputs=as_cifar_shape)
    want = weights_under("float32", small_resnet, parameters, noisy, clean, "jvp",
                         include_regularization=True)
    got = weights_under("mixed_bfloat16", small_resnet, parameters, noisy, clean, "jvp",
                        include_regularization=True)
    assert 0 < np.count_nonzero(want) < len(want)
    return {"spearman": spearman(got, want), "max_abs_difference": float(np.max(np.abs(got - want)))}


@pytest.mark.slow  # about 20 s on 2 loaded cores: 30 warm-up steps of the ResNet
def test_bfloat16_weights_rank_as_float32_on_a_resnet():
    """In a fresh process (`python tests/test_mixed_precision.py resnet`): the 30 warm-up steps at
    lr 0.1 are chaotic, and run after the other slow tests in one pytest process the trained
    state came out different (cause not identified) and the correlation 0.985; in a fresh process
    it is 0.9964, whatever the global seed or op determinism."""
    out = subprocess.run([sys.executable, __file__, "resnet"], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"ResNet jvp: {result}")
    assert result["spearman"] >= 0.99


def test_losses_and_weight_sums_are_float32_from_half_precision():
    logits = tf.constant([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], tf.bfloat16)
    losses = reweight.per_example_loss(tf.constant([0, 2]), logits)
    assert losses.dtype == tf.float32
    want = reweight.per_example_loss(tf.constant([0, 2]), tf.cast(logits, tf.float32))
    np.testing.assert_allclose(losses, want, rtol=1e-6)
    # Ten alignments of 6e4 (a float16 near its maximum 65504): their float16 sum overflows to
    # inf, and the weights would all be 0; summed in float32 they are 1/10 each.
    alignments = tf.fill([10], tf.constant(6e4, tf.float16))
    assert not np.isfinite(tf.reduce_sum(alignments).numpy())
    weights = reweight.normalize_weights(alignments)
    assert weights.dtype == tf.float32
    np.testing.assert_allclose(weights, np.full(10, 0.1), rtol=1e-6)
    assert reweight.normalize_weights(tf.zeros([3], tf.float64)).dtype == tf.float64  # kept


# The loss scale multiplies everything a step differentiates: the gradients come out S times
# larger, the weights and losses as without it. In float32, where S changes no rounding that
# matters, this holds to float32 precision, for every method and with weight decay (which must
# be scaled with the rest, or the clean gradient's direction changes).
@pytest.mark.parametrize("meta_grad,model_name", [
    ("layerwise", "lenet"), ("jvp", "lenet"), ("lookahead", "lenet"),
    ("jvp", "bn_weight_decay"), ("lookahead", "bn_weight_decay")])
@pytest.mark.parametrize("fused", [True, False])
def test_a_loss_scale_scales_the_gradients_only(meta_grad, model_name, fused):
    rng = np.random.default_rng(0)
    if model_name == "lenet":
        model, shape, classes = models.build_model("lenet", 3, (28, 28, 1), seed=0), (28, 28, 1), 3
    else:
        model, shape, classes = small_bn_model(weight_decay=1e-2), (8, 8, 2), 3
    noisy = (tf.constant(rng.random((12, *shape), np.float32)), tf.constant(rng.integers(0, classes, 12)))
    clean = (tf.constant(rng.random((6, *shape), np.float32)), tf.constant(rng.integers(0, classes, 6)))
    config = StepConfig(meta_grad=meta_grad, fused=fused)
    state = [v.numpy() for v in model.non_trainable_variables]
    want = step_gradients(model, config, noisy, clean)
    for v, value in zip(model.non_trainable_variables, state):  # the same BN statistics
        v.assign(value)
    got = step_gradients(model, config, noisy, clean, loss_scale=tf.constant(1024.0))
    assert relative_error(got.example_weights, want.example_weights) <= 1e-5
    assert relative_error(got.losses, want.losses) <= 1e-6
    assert relative_error(got.loss, want.loss) <= 1e-6
    assert 0 < np.count_nonzero(want.example_weights) < 12
    for a, b, v in zip(got.gradients, want.gradients, model.trainable_variables):
        assert relative_error(tf.convert_to_tensor(a) / 1024.0, b) <= 1e-4, v.path


def test_float16_alignments_do_not_overflow_under_a_loss_scale(noisy_mnist):
    """Under mixed_float16 the loss scale S multiplies the layerwise alignments by S² (2^24 here):
    accumulated in float16 they overflow (max 65504); in float32 the weights are those without
    a scale."""
    (x, y), (clean_x, clean_y) = batches(noisy_mnist)
    noisy, clean = (x[:40], y[:40]), (clean_x[:40], clean_y[:40])  # float16 is slow on a CPU
    with precision.global_policy("mixed_float16"):
        model = models.build_model("lenet", 10, (28, 28, 1), seed=0)
        for method in ("layerwise", "jvp", "lookahead"):
            want = reweight.example_weights(model, noisy, clean, method).numpy()
            got = reweight.example_weights(model, noisy, clean, method,
                                           loss_scale=tf.constant(2.0 ** 12)).numpy()
            assert np.all(np.isfinite(got)), method
            assert spearman(got, want) >= 0.99, method
            assert np.max(np.abs(got - want)) <= 0.01 * np.max(want), method


def test_the_policy_is_restored():
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with precision.global_policy("mixed_bfloat16"):
            assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
            raise RuntimeError("a failing test")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_an_unknown_policy_is_a_one_line_error(tmp_path):
    flagfile = REPO / "configs" / "mnist_imbalance.flags"
    with pytest.raises(main.UsageError) as info:
        main.run(["l2rw", f"--flagfile={flagfile}", "--mixed_precision=float8",
                  f"--logdir={tmp_path / 'run'}"])
    message = str(info.value)
    assert "--mixed_precision=float8 is unknown; choose one of float32, mixed_float16, " \
           "mixed_bfloat16" in message and "\n" not in message
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # about 20 s on 2 loaded cores (float16 kernels are slow on a CPU)
def test_cli_steps_under_mixed_float16_with_loss_scaling(tmp_path):
    """A few CLI steps under mixed_float16 on real MNIST (4 vs 9, LeNet): Keras' dynamic loss
    scaling skips the first step(s), whose scaled gradients overflow float16, halving the scale;
    nothing is NaN, and the run directory records the policy (float32 would not resume it)."""
    flagfile = REPO / "configs" / "mnist_imbalance.flags"
    run = tmp_path / "run"
    args = ["l2rw", f"--flagfile={flagfile}", "--mixed_precision=mixed_float16",
            "--num_steps=6", "--eval_interval=3", "--batch_size=50", f"--logdir={run}"]
    final = main.run(args)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    assert all(np.isfinite(final[k]) for k in ("loss", "mean_loss", "test_accuracy"))
    rows = (run / "metrics.csv").read_text().splitlines()
    scales = [float(row.split(",")[rows[0].split(",").index("loss_scale")]) for row in rows[1:]]
    assert scales[-1] < 2.0 ** 15  # halved at least once: a step was skipped, not diverged
    checkpoint = tf.train.load_checkpoint(str(run / "ckpt"))
    applied = checkpoint.get_tensor("optimizer/inner_optimizer/_iterations/.ATTRIBUTES/"
                                    "VARIABLE_VALUE")
    assert 0 < applied < 6
    for name in checkpoint.get_variable_to_shape_map():
        if name.startswith("model/"):
            assert np.all(np.isfinite(checkpoint.get_tensor(name))), name
    assert json.loads((run / "flags.json").read_text())["mixed_precision"] == "mixed_float16"
    with pytest.raises(main.UsageError, match="--mixed_precision was 'mixed_float16', now None"):
        main.run([a for a in args if not a.startswith("--mixed_precision")])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_fit_under_a_mixed_policy(policy):
    """`L2RWModel.fit`: compile wraps the optimizer in a LossScaleOptimizer under mixed_float16
    (Keras' auto_scale_loss) and the L2RW step scales its losses by it; steps it skips leave
    the weight statistics finite."""
    rng = np.random.default_rng(0)
    x, y = rng.random((100, 28, 28, 1), np.float32), rng.integers(0, 10, 100)
    clean = rng.random((25, 28, 28, 1), np.float32), rng.integers(0, 10, 25)
    with precision.global_policy(policy):
        model = models.build_model("lenet", 10, (28, 28, 1), seed=0)
        trainer = l2rw_tf.L2RWModel(model, clean_data=clean)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = trainer.fit(x, y, batch_size=25, epochs=2, verbose=0).history
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")
    assert all(np.all(np.isfinite(v)) for v in history.values()), history
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    # Skipped steps count no example: every example of a counted step has a finite mean weight
    # (one seen only in skipped steps has none, 0/0).
    stats = trainer.example_weights()
    seen = stats["times_seen"] > 0
    assert np.all(np.isfinite(stats["mean_weight"][seen]))
    assert stats["times_seen"].sum() == 25 * int(trainer.optimizer.iterations.numpy())
    if policy == "mixed_float16":  # random images: the first scaled gradients overflow
        assert float(trainer.optimizer.dynamic_scale.numpy()) < 2.0 ** 15
        assert 0 < int(trainer.optimizer.iterations.numpy()) < 8


if __name__ == "__main__":  # the subprocess side of the ResNet test
    print(json.dumps({"resnet": lambda: resnet_spearman(mnist_background())}[sys.argv[1]]()))
