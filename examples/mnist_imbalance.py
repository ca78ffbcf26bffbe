"""MNIST 4 vs 9 at 99.5% nines (the paper's class-imbalance experiment) through Keras `fit` alone.

The data of the command line's `--task=imbalance` (`l2rw_tf.data.mnist_imbalance`: the original
code's draws, image for image: 4,990 training images of which 25 are 4s, a clean set of 5 4s and
5 9s, 500 balanced test images), the LeNet of the original code with one sigmoid logit, and
nothing imbalance-specific: `L2RWModel` with the 10 clean images as `clean_data`, binary
cross-entropy, SGD with momentum 0.9 at lr 0.001 (Keras' momentum form, which equals the TF1
form of the original at a constant rate), batch 100, 4,000 steps (the original script's L2RW
setting). `weight_on={"fours": ...}` makes the weight mass on the minority a metric.

    python examples/mnist_imbalance.py --seeds=0,56789,13578   # the original's first 3 seeds

Compare the printed mean with the command line's 10 seeds in results/mnist_imbalance/original/
(`configs/mnist_imbalance_original.flags`; it also reproduces a side effect of the original's
evaluation on its batches, which this script does not). `--plain` also trains plain
`model.fit` in the same batches from the same initial weights (it stays at 50% for thousands of
steps: every test image predicted a 9). Writes results.json and results.md to `--out`
(default runs/examples/mnist_imbalance).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

# The original's seeds: (t * 123456789) % 100000, t = 0..9.
ORIGINAL_SEEDS = [t * 123456789 % 100000 for t in range(10)]


def build_parser():
    p = argparse.ArgumentParser(prog="python examples/mnist_imbalance.py",
                                description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", default="0,56789,13578",
                   help="comma-separated seeds (each: its own split, initial weights and order); "
                        "'original10' for the original's ten")
    p.add_argument("--steps", type=int, default=4000, help="training steps of batch 100")
    p.add_argument("--pos_ratio", type=float, default=0.995, help="proportion of 9s")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--plain", action="store_true", help="also train plain model.fit")
    p.add_argument("--algorithm", choices=("select", "paper"), default="select",
                   help="L2RWModel's algorithm: its default or the paper's Algorithm 1")
    p.add_argument("--data_dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR)")
    p.add_argument("--out", default=None,
                   help="output directory (default runs/examples/mnist_imbalance)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2))
    return p


def validation_set(arrays):
    """Balanced 4s (label 0) and 9s (label 1) from the first 5,000 MNIST training images, TF's
    validation split, which the experiment never draws from: a validation set carved from the
    training data (the test set only measures)."""
    import numpy as np
    from l2rw_tf import data
    images, labels = arrays[0][0][:data.MNIST_TF_VALIDATION], arrays[0][1][:data.MNIST_TF_VALIDATION]
    fours, nines = np.flatnonzero(labels == 4), np.flatnonzero(labels == 9)
    k = min(len(fours), len(nines))
    index = np.concatenate([fours[:k], nines[:k]])
    return (data.to_float(images[index]).numpy(),
            np.concatenate([np.zeros(k), np.ones(k)]).astype(np.float32))


def run_seed(seed, args, arrays):
    import keras
    import numpy as np
    import l2rw_tf
    from l2rw_tf import data, models

    experiment = data.mnist_imbalance(pos_ratio=args.pos_ratio, seed=seed, arrays=arrays)
    x = data.to_float(experiment.train_images).numpy()
    y = experiment.train_labels.astype(np.float32)
    clean = (data.to_float(experiment.clean_images).numpy(),
             experiment.clean_labels.astype(np.float32))
    test_x, test_y = experiment.eval_sets["test"]
    test = (data.to_float(test_x).numpy(), test_y.astype(np.float32))
    batches_per_epoch = -(-len(y) // 100)
    epochs = -(-args.steps // batches_per_epoch)

    def compile_(model):
        model.compile(optimizer=keras.optimizers.SGD(args.lr, momentum=0.9),
                      loss=keras.losses.BinaryCrossentropy(from_logits=True),
                      # one logit: a 9 when it is above 0 (Keras' "accuracy" would threshold
                      # the logit at 0.5)
                      metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])

    keras.utils.set_random_seed(seed)
    model = models.build_model("lenet", 2, experiment.input_shape, seed=seed)
    initial = model.get_weights()
    results = {"seed": seed, "train_fours": int((y == 0).sum()), "train_nines": int(y.sum()),
               "steps": epochs * batches_per_epoch}
    trainer = l2rw_tf.L2RWModel(model, clean_data=clean, seed=seed,
                                weight_on={"fours": y == 0}, algorithm=args.algorithm)
    compile_(trainer)
    t0 = time.time()
    history = trainer.fit(x, y, batch_size=100, epochs=epochs, verbose=args.verbose)
    results["l2rw_seconds"] = time.time() - t0
    results["l2rw_test_accuracy"] = float(trainer.evaluate(*test, verbose=0, return_dict=True)
                                          ["accuracy"])
    results["l2rw_validation_accuracy"] = float(trainer.evaluate(
        *validation_set(arrays), verbose=0, return_dict=True)["accuracy"])
    results["l2rw_weight_on_fours_last_epoch"] = float(history.history["weight_on_fours"][-1])
    if args.plain:
        plain = models.build_model("lenet", 2, experiment.input_shape, seed=seed)
        plain.set_weights(initial)
        compile_(plain)
        t0 = time.time()
        epoch_key = l2rw_tf.fit.EpochKey()  # each epoch's order as the trainer's
        plain.fit(l2rw_tf.fit.noisy_batches(x, y, 100, seed=seed, epoch_key=epoch_key),
                  epochs=epochs, verbose=args.verbose, callbacks=[epoch_key])
        results["plain_seconds"] = time.time() - t0
        results["plain_test_accuracy"] = float(plain.evaluate(*test, verbose=0,
                                                              return_dict=True)["accuracy"])
    return results


def table(runs, plain):
    lines = ["| seed | " + " | ".join(str(r["seed"]) for r in runs) + " | mean ± std |",
             "|---|" + "---|" * (len(runs) + 1)]
    methods = [("L2RW `L2RWModel.fit`", "l2rw_test_accuracy")]
    if plain:
        methods.append(("plain `model.fit`", "plain_test_accuracy"))
    for name, key in methods:
        values = [r[key] for r in runs]
        mean, std = harness._mean_std(values)
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in values)
                     + f" | {100 * mean:.2f} ± {100 * std:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.seeds == "original10":
        args.seeds = ORIGINAL_SEEDS
    else:
        try:
            args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            p.error(f"--seeds={args.seeds!r}: give comma-separated integers or original10")
    if not args.seeds or args.steps < 1 or not 0 < args.pos_ratio < 1:
        p.error("give at least one seed, --steps >= 1 and --pos_ratio in (0, 1)")
    out = harness.prepare_out(p, args, "mnist_imbalance")
    import l2rw_tf
    from l2rw_tf import data
    try:
        arrays = (data.load_tfds("mnist", "train", args.data_dir),
                  data.load_tfds("mnist", "test", args.data_dir))
    except data.DataError as e:
        p.error(str(e))
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args, arrays))
        print(json.dumps(runs[-1]), flush=True)
    text = (f"MNIST 4 vs 9, {args.pos_ratio:.1%} nines, {runs[0]['steps']} steps of batch 100 "
            f"through Keras fit; test accuracy (%) on 500 balanced images\n\n"
            + table(runs, args.plain) + "\n")
    print(text)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(harness.finite_or_null(
        {"args": {k: v for k, v in vars(args).items()}, "runs": runs,
         "runtime": l2rw_tf.runtime()}), indent=2, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
