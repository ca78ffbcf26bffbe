"""Fidelity to the original MNIST scripts (issue 18; results/mnist_imbalance/AUDIT.md): what the
port shares with mnist/mnist_train.py and mnist/reweight.py of the original code (initialisation,
optimiser, the DataSet batch stream, the decision threshold) and the one side effect of the
original's evaluation that `--original_eval_draws` reproduces."""
import json

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from conftest import REPO
from l2rw_tf import config, data, experiment, main, train
from l2rw_tf.models.lenet import lenet

PAPER = str(REPO / "configs" / "mnist_imbalance.flags")
ORIGINAL = str(REPO / "configs" / "mnist_imbalance_original.flags")


# ---- initialisation and optimiser ---------------------------------------------------------

def test_lenet_init_draws_as_the_originals_tf1_initialisers():
    """Kernels: TF1's truncated_normal_initializer(stddev=0.1) (redrawn beyond 2 std, so the
    sample std is 0.088); biases: constant 0. Compared with TF1's own initialiser."""
    model = lenet(seed=0)
    kernels = np.concatenate([v.numpy().ravel() for v in model.trainable_variables
                              if "kernel" in v.path])
    for v in model.trainable_variables:
        if "bias" in v.path:
            assert not v.numpy().any()
    tf1 = tf.compat.v1.truncated_normal_initializer(stddev=0.1, seed=1)([kernels.size]).numpy()
    assert np.abs(kernels).max() <= 0.2 and np.abs(tf1).max() <= 0.2
    assert abs(kernels.std() - tf1.std()) < 1e-3
    quantiles = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    np.testing.assert_allclose(np.quantile(kernels, quantiles), np.quantile(tf1, quantiles),
                               atol=3e-3)


def test_tf1_momentum_steps_as_tf1_momentum_optimizer():
    """The original's tf.train.MomentumOptimizer(lr, 0.9) (no Nesterov), step for step."""
    theirs, ours = tf.Variable([1.0, -2.0, 0.5]), tf.Variable([1.0, -2.0, 0.5])
    tf1 = tf.compat.v1.train.MomentumOptimizer(1e-3, 0.9)
    port = train.TF1Momentum(1e-3, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(20):
        g = tf.constant(rng.normal(size=3), tf.float32)
        tf1.apply_gradients([(g, theirs)])
        port.apply_gradients([(g, ours)])
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7)


def test_decision_threshold_differs_from_sigmoid_above_half_only_below_1e_7():
    """The original counts sigmoid(logit) > 0.5 as a 9; `make_evaluate` counts logit > 0. In
    float32 the two disagree only for logits in (0, ~1.2e-7]."""
    x = tf.constant(np.concatenate([-np.logspace(-12, 2, 2000), [0.0], np.logspace(-12, 2, 2000)]),
                    tf.float32)
    disagree = (tf.sigmoid(x) > 0.5).numpy() != (x > 0.0).numpy()
    assert disagree.any() and x.numpy()[disagree].min() > 0 and x.numpy()[disagree].max() < 2e-7


# ---- the batch stream ---------------------------------------------------------------------

def indices(ds, batches):
    return np.stack([b["index"].numpy() for b in ds.take(batches)])


def tiny(n):
    return np.zeros((n, 1, 1, 1), np.uint8), np.arange(n) % 2


def test_batches_are_the_originals_next_batch_stream():
    """The original's DataSet.next_batch: a fresh permutation per epoch, read in consecutive
    chunks; a batch at an epoch's end takes the rest of that epoch and the start of the next
    (always a full batch). So every aligned epoch-long window of the stream is a permutation."""
    n, batch = 49, 10
    stream = indices(data.example_dataset(*tiny(n), batch_size=batch, seed=3), 40).ravel()
    for epoch in range(len(stream) // n):
        assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert len({tuple(stream[e * n:(e + 1) * n]) for e in range(len(stream) // n)}) > 1


def test_the_clean_batch_is_all_ten_images_every_step():
    """The original reads next_batch(min(100, nval)) = 10 of its 10 clean images: all of them."""
    for batch in indices(data.example_dataset(*tiny(10), batch_size=10, seed=1), 5):
        assert sorted(batch) == list(range(10))


def test_skip_passes_over_the_stream_as_the_original_evaluation():
    """After every `steps` batches, `examples` positions of the same shuffled stream are passed
    over; the epochs' permutations are those of the stream without the skip."""
    n, batch, steps, examples = 13, 4, 3, 7
    plain = indices(data.example_dataset(*tiny(n), batch_size=batch, seed=5), 60).ravel()
    skipped = indices(data.example_dataset(*tiny(n), batch_size=batch, seed=5,
                                           skip=(steps, examples)), 30).ravel()
    cycle = steps * batch + examples
    kept = plain[np.arange(len(plain)) % cycle < steps * batch]
    np.testing.assert_array_equal(skipped, kept[:len(skipped)])


def test_skip_iterator_resumes_from_a_checkpoint(tmp_path):
    ds = data.example_dataset(*tiny(13), batch_size=4, seed=5, skip=(3, 7))
    iterator = iter(ds)
    for _ in range(5):
        next(iterator)
    path = tf.train.Checkpoint(it=iterator).save(str(tmp_path / "it"))
    want = np.stack([next(iterator)["index"].numpy() for _ in range(7)])
    restored = iter(ds)
    tf.train.Checkpoint(it=restored).restore(path)
    np.testing.assert_array_equal(np.stack([next(restored)["index"].numpy() for _ in range(7)]),
                                  want)


def exposures(stream, n):
    return np.bincount(stream.ravel(), minlength=n)


def test_original_eval_draws_spread_the_minority_exposures_as_the_original():
    """What the original's evaluation does to L2RW's stream (4,990 training images, 20 of them
    4s, 4,000 steps): without the skip every image is seen 80 or 81 times; with it, images are
    seen a varying number of times (the mean is unchanged), as in the original."""
    n, steps = 4990, 4000
    plain = exposures(indices(data.example_dataset(*tiny(n), seed=0), steps), n)
    skipped = exposures(indices(data.example_dataset(*tiny(n), seed=0,
                                                     skip=data.ORIGINAL_EVAL_DRAWS), steps), n)
    assert plain.min() >= 80 and plain.max() <= 81
    assert skipped.max() - skipped.min() >= 8
    assert abs(skipped.mean() - plain.mean()) < 1e-9  # every step still takes 100 images


def test_the_skip_is_a_no_op_in_distribution_for_the_baseline():
    """With the baseline's 5,000 images the skip is one whole epoch after every two: each image
    is still seen exactly twice per 100 steps."""
    n = 5000
    skipped = indices(data.example_dataset(*tiny(n), seed=0, skip=data.ORIGINAL_EVAL_DRAWS), 400)
    for cycle in range(4):
        counts = exposures(skipped[100 * cycle:100 * (cycle + 1)], n)
        assert counts.min() == counts.max() == 2


# ---- the flag and the flagfile ------------------------------------------------------------

def parsed(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["l2rw", *args])
    return config.from_flags(flags.FLAGS)


def test_original_flagfile_is_the_papers_but_for_steps_eval_draws_and_logging():
    def settings(path):
        lines = [line for line in open(path).read().splitlines()
                 if line.startswith("--")]
        return dict(line.split("=", 1) if "=" in line else (line, True) for line in lines)

    paper, original = settings(PAPER), settings(ORIGINAL)
    assert original.pop("--num_steps") == "4000" and paper.pop("--num_steps") == "8000"
    assert original.pop("--eval_interval") == "100" and paper.pop("--eval_interval") == "200"
    assert original.pop("--original_eval_draws") is True
    assert original == paper


def test_original_eval_draws_wires_the_skip_into_the_training_batches():
    """Same seed, same images: batch 100 (0-based) of the original flagfile's stream is batch
    150 of the paper flagfile's; the clean batches are untouched."""
    original = parsed(f"--flagfile={ORIGINAL}")
    built = experiment.build(original)
    train_ds, clean_ds = built.train_ds, built.clean_ds
    assert original.original_eval_draws is True
    paper = parsed(f"--flagfile={PAPER}")
    built = experiment.build(paper)
    plain_ds, plain_clean = built.train_ds, built.clean_ds
    assert config.record(paper)["original_eval_draws"] is None  # off: unset, old runs resume
    ours, plain = indices(train_ds, 101), indices(plain_ds, 151)
    np.testing.assert_array_equal(ours[:100], plain[:100])
    np.testing.assert_array_equal(ours[100], plain[150])
    np.testing.assert_array_equal(indices(clean_ds, 3), indices(plain_clean, 3))


@pytest.mark.parametrize("args,message", [
    (["--method=resample"], "--method=resample has class-balanced batches"),
    (["--task=noisy", "--dataset=mnist", "--model=lenet"],
     "--original_eval_draws applies to --task=imbalance only"),
])
def test_original_eval_draws_refused_where_it_does_not_apply(args, message):
    base = [f"--flagfile={ORIGINAL}"] if "--task=noisy" not in args else []
    with pytest.raises(main.UsageError, match=message):
        parsed(*base, *args, "--original_eval_draws")


def test_original_flagfile_runs(tmp_path):
    final = main.run(["l2rw", f"--flagfile={ORIGINAL}", "--num_steps=20", "--eval_interval=10",
                      f"--logdir={tmp_path / 'run'}"])
    assert final["step"] == 20 and np.isfinite(final["loss"])
    saved = json.loads((tmp_path / "run" / "flags.json").read_text())
    assert saved["original_eval_draws"] is True and saved["num_steps"] == 20
