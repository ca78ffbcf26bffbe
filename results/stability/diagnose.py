"""Why does L2RW lose to plain training on a BatchNorm + dropout CNN under uniform noise?

Training-set diagnostics only: the noisy training images (with their given and their true
labels), the clean set, and a validation split carved from MNIST's training images (the last
5,000, disjoint from the training pool; never the test set).

One run trains examples/mnist_cnn.py's model (Conv-BN-ReLU-Pool x2, Dropout, Dense, Dropout,
Dense) on examples/mnist_cnn.py's data (the first 10,000 MNIST training images, 10 clean per
class, UniformFlip 40% of the rest by default) with one step `--variant` (below), the
examples' optimizer (SGD, momentum 0.9, lr 0.01 / 10 at half the steps / 100 at three quarters)
and batches, and records

* every step (steps.csv): the fraction of zero weights, the effective sample size 1/Σw², the
  weight mass on the corrupted examples, the weight mass on each given label;
* every `--probe_every` steps, on that step's batch before the step (probes.csv): the alignments
  ⟨∇θ C_i, ∇θ l_g⟩ computed four ways from the same parameters — (a) as the step computes them
  (training mode, its dropout masks), (b) with other dropout masks (noisy and clean pass), (c)
  without dropout in either meta pass (BatchNorm on batch statistics), (d) in inference mode
  (BatchNorm's moving statistics, no dropout) — and for each the fraction of positive
  alignments, the sign agreement with (a), and the AUC of the alignment for telling the clean
  examples of the batch from the corrupted ones (0.5: no better than a ranking ignoring the data);
* every epoch (epochs.csv): the accuracy on the validation split and on the training images'
  true labels, and the share of corrupted training images predicted as their wrong given label.

    python results/stability/diagnose.py --variant=paper --seed=0 --out=results/stability/runs/paper_s0

Variants of the step (the meta-gradient always at ε = 0, clipped at zero and normalised):
  paper         Algorithm 1 as the library does it (fused jvp): meta passes in training mode.
  plain         uniform weights (plain training, for the same diagnostics).
  nodrop_meta   the meta passes without dropout (BatchNorm still on batch statistics); the step's
                own forward pass keeps its dropout.
  infer_meta    the meta passes in inference mode (BatchNorm's moving statistics, no dropout).
  nodrop_binary, infer_binary: as nodrop_meta, infer_meta, but every example of positive
                alignment gets the same weight (1 / their number) instead of one proportional to
                its alignment.
"""
import argparse
import contextlib
import csv
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "examples"))

VARIANTS = ("paper", "plain", "nodrop_meta", "infer_meta", "nodrop_binary", "infer_binary")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=VARIANTS, default="paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", choices=("uniform", "background"), default="uniform")
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--num_train", type=int, default=10000)
    p.add_argument("--num_val", type=int, default=5000)
    p.add_argument("--probe_every", type=int, default=25)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def alignments(model, loss_fn, x, y, clean_x, clean_y, seed_shift=0, dropout=True,
               training=True):
    """⟨∇θ C_i, ∇θ l_g⟩ by forward mode, the meta passes' dropout masks moved along their seed
    counters by `seed_shift` (0: the step's own), without dropout or in inference mode."""
    import tensorflow as tf
    from l2rw_tf import reweight

    params = reweight.current_params(model)

    def state(clean):
        offset = seed_shift + (reweight.CLEAN_PASS_SEED_OFFSET if clean else 0)
        return [v.value + tf.constant([0, offset], v.value.dtype) if reweight.is_seed_state(v)
                else v.value for v in model.non_trainable_variables]

    with (contextlib.nullcontext() if dropout else reweight.noise_off(model)):
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits, _ = model.stateless_call(params, state(True), clean_x, training=training)
            clean_loss = tf.reduce_mean(loss_fn(clean_y, logits))
        direction = tape.gradient(clean_loss, params)
        with tf.autodiff.ForwardAccumulator(params, direction) as acc:
            logits, _ = model.stateless_call(params, state(False), x, training=training)
            losses = loss_fn(y, logits)
        return acc.jvp(losses)


def auc(score, positive):
    """P(score of a random positive > score of a random negative), ties counted half."""
    import numpy as np
    positive = np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if not n_pos or not n_neg:
        return float("nan")
    # Ranks 1..n, tied scores sharing their mean rank (numpy only: scipy is no dependency).
    values, inverse = np.unique(score, return_inverse=True)
    first = np.searchsorted(np.sort(score), values)
    counts = np.bincount(inverse)
    ranks = (first + (counts + 1) / 2)[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main(argv=None):
    args = parse(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import l2rw_tf  # noqa: F401  (TensorFlow's CPU options)
    import harness
    import mnist_cnn
    import keras
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from l2rw_tf import fit, reweight, step

    builder = tfds.builder("mnist")
    train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1, as_supervised=True))
    images, labels = train[0].astype(np.float32) / 255.0, train[1].astype(np.int64)
    pool_x, pool_y = images[:args.num_train], labels[:args.num_train]
    val_x, val_y = images[-args.num_val:], labels[-args.num_val:]  # disjoint from the pool

    split_args = argparse.Namespace(clean_per_class=10, ratio=args.ratio, noise=args.noise)
    clean, noisy, noisy_y, is_corrupted, background = harness.split_and_corrupt(
        pool_y, 10, split_args, args.seed)
    x, true_y = pool_x[noisy], pool_y[noisy]
    clean_x, clean_y = tf.constant(pool_x[clean]), tf.constant(pool_y[clean])
    n, batch = len(noisy), 100
    steps_per_epoch = math.ceil(n / batch)
    steps = steps_per_epoch * args.epochs

    keras.utils.set_random_seed(args.seed)
    model = mnist_cnn.build_model(args, None)  # examples/mnist_cnn.py's CNN
    lr = keras.optimizers.schedules.PiecewiseConstantDecay(
        [steps // 2, (3 * steps) // 4], [args.lr, args.lr / 10, args.lr / 100])
    optimizer = keras.optimizers.SGD(lr, momentum=0.9)
    optimizer.build(model.trainable_variables)
    loss_fn = fit.per_example(keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def apply(result):
        optimizer.apply(result.gradients, model.trainable_variables)
        return result.example_weights

    @tf.function
    def paper_step(x, y, cx, cy):
        return apply(step.step_gradients(model, step.StepConfig(meta_grad="jvp"), (x, y),
                                         (cx, cy), loss_fn=loss_fn))

    @tf.function
    def plain_step(x, y, cx, cy):
        return apply(step.weighted_step(model, step.uniform_weights(y), (x, y), loss_fn))

    def meta_variant_step(dropout, training, binary=False):
        normalize = reweight.equal_weights if binary else reweight.normalize_weights

        @tf.function
        def run(x, y, cx, cy):
            weights = normalize(
                alignments(model, loss_fn, x, y, cx, cy, dropout=dropout, training=training))
            return apply(step.weighted_step(model, weights, (x, y), loss_fn))
        return run

    train_step = {"paper": paper_step, "plain": plain_step,
                  "nodrop_meta": meta_variant_step(False, True),
                  "infer_meta": meta_variant_step(False, False),
                  "nodrop_binary": meta_variant_step(False, True, binary=True),
                  "infer_binary": meta_variant_step(False, False, binary=True)}[args.variant]

    step_rows, probe_rows, epoch_rows = [], [], []
    rng = np.random.RandomState(args.seed + 1)
    start = time.perf_counter()
    global_step = 0

    def predict(images):
        return np.argmax(model.predict(images, batch_size=1000, verbose=0), 1)

    for epoch in range(args.epochs):
        order = rng.permutation(n)
        for b in range(steps_per_epoch):
            index = order[b * batch:(b + 1) * batch]
            bx, by = tf.constant(x[index]), tf.constant(noisy_y[index])
            corrupted = is_corrupted[index]
            if global_step % args.probe_every == 0:
                ways = {"step": {}, "other_masks": {"seed_shift": 7919 * (global_step + 1)},
                        "no_dropout": {"dropout": False},
                        "inference": {"dropout": False, "training": False}}
                scores = {name: alignments(model, loss_fn, bx, by, clean_x, clean_y,
                                           **kw).numpy() for name, kw in ways.items()}
                row = {"step": global_step}
                for name, score in scores.items():
                    row[f"{name}_positive"] = float(np.mean(score > 0))
                    row[f"{name}_agree_step"] = float(np.mean(
                        (score > 0) == (scores["step"] > 0)))
                    row[f"{name}_auc_clean"] = auc(score, ~corrupted)
                    w = np.maximum(score, 0)
                    row[f"{name}_mass_corrupted"] = (float(w[corrupted].sum() / w.sum())
                                                     if w.sum() > 0 else float("nan"))
                probe_rows.append(row)
            weights = train_step(bx, by, clean_x, clean_y).numpy().astype(np.float64)
            squares = float(np.sum(weights ** 2))
            row = {"step": global_step, "zero_fraction": float(np.mean(weights == 0)),
                   "effective_sample_size": 1 / squares if squares > 0 else 0.0,
                   "mass_corrupted": float(weights[corrupted].sum()),
                   "corrupted_in_batch": float(corrupted.mean())}
            for c in range(10):
                row[f"mass_given_{c}"] = float(weights[noisy_y[index] == c].sum())
            step_rows.append(row)
            global_step += 1
        train_pred = predict(x)
        epoch_rows.append({
            "epoch": epoch + 1, "step": global_step, "seconds": time.perf_counter() - start,
            "val_accuracy": float(np.mean(predict(val_x) == val_y)),
            "train_true_accuracy": float(np.mean(train_pred == true_y)),
            "memorised": float(np.mean(train_pred[is_corrupted] == noisy_y[is_corrupted])),
            "mean_zero_fraction": float(np.mean([r["zero_fraction"]
                                                 for r in step_rows[-steps_per_epoch:]])),
            "mean_ess": float(np.mean([r["effective_sample_size"]
                                       for r in step_rows[-steps_per_epoch:]]))})
        print(json.dumps(epoch_rows[-1]), flush=True)

    for name, rows in (("steps", step_rows), ("probes", probe_rows), ("epochs", epoch_rows)):
        with open(out / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: f"{v:.5g}" for k, v in row.items()} for row in rows)
    summary = {"args": vars(args), "final": epoch_rows[-1], "runtime": l2rw_tf.runtime(),
               "command": "python results/stability/diagnose.py " + " ".join(sys.argv[1:])}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
