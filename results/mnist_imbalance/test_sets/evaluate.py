"""How much the choice of test images moves the MNIST 4-vs-9 numbers (issue 18).

The original code's test set for a seed is the *first* 250 fours of the MNIST test file (it draws
a shuffle for them but never applies it) and 250 shuffled nines. The test file's first 5,000
images come from NIST's SD-3 writers, its last 5,000 from SD-1, and MNIST's documentation calls
the first half the cleaner, easier one: the original's 250 test fours (all within the first
2,500 images) are easy fours. This script re-evaluates every finished run's final model, without
training anything, on:

* `as_run`: the run's own test set (must reproduce its result.json),
* `last_250_fours`: the same 250 nines with the *last* 250 fours of the test file (SD-1),
* `every_test_image`: balanced accuracy over all 982 fours and 1,009 nines (mean of the two
  class accuracies).

    python results/mnist_imbalance/test_sets/evaluate.py runs/mnist_imbalance_original

writes `test_sets.csv` (one row per run) and `summary.md` (mean ± std per arm) beside this file.
"""
import csv
import glob
import json
import os
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def evaluate_runs(roots):
    import tensorflow as tf
    from l2rw_tf import data, models
    (_, _), (test_x, test_y) = data.load_tfds("mnist", "train"), data.load_tfds("mnist", "test")
    fours, nines = np.flatnonzero(test_y == 4), np.flatnonzero(test_y == 9)
    rows = []
    for root in roots:
        for result_path in sorted(glob.glob(os.path.join(root, "*", "result.json"))):
            run_dir = os.path.dirname(result_path)
            with open(os.path.join(run_dir, "flags.json")) as f:
                run_flags = json.load(f)
            with open(result_path) as f:
                result = json.load(f)
            if run_flags.get("task") != "imbalance" or run_flags.get("model") != "lenet":
                continue
            experiment = data.mnist_imbalance(
                pos_ratio=run_flags["pos_ratio"], ntrain=run_flags["ntrain"],
                nval=run_flags["nval"] if run_flags["method"] == "l2rw" else 0,
                ntest=run_flags["ntest"], seed=run_flags["seed"])
            model = models.build_model("lenet", 2, experiment.input_shape)
            ckpt = tf.train.latest_checkpoint(os.path.join(run_dir, "ckpt"))
            tf.train.Checkpoint(model=model).restore(ckpt).expect_partial()

            def predict_nine(images):
                logits = model.predict(data.to_float(images), batch_size=500, verbose=0)
                return logits.reshape(-1) > 0

            test_images, test_labels = experiment.eval_sets["test"]
            as_run = float(np.mean(predict_nine(test_images) == (test_labels == 1)))
            # The run's 250 nines are those of its test set; swap its fours for the last 250.
            nine_images = test_images[test_labels == 1]
            last_fours = test_x[fours[-250:]]
            last_250 = float(np.mean(np.concatenate([~predict_nine(last_fours),
                                                     predict_nine(nine_images)])))
            every = 0.5 * (float(np.mean(~predict_nine(test_x[fours])))
                           + float(np.mean(predict_nine(test_x[nines]))))
            first_fours_acc = float(np.mean(~predict_nine(test_x[fours[:250]])))
            rows.append({"run": os.path.relpath(run_dir), "method": run_flags["method"],
                         "num_steps": run_flags["num_steps"], "seed": run_flags["seed"],
                         "train_seed": run_flags.get("train_seed"),
                         "result_test_accuracy": result["test_accuracy"], "as_run": as_run,
                         "first_250_fours_recall": first_fours_acc,
                         "last_250_fours_recall": float(np.mean(~predict_nine(last_fours))),
                         "last_250_fours": last_250, "every_test_image": every})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv):
    roots = argv[1:] or ["runs/mnist_imbalance_original"]
    rows = evaluate_runs(roots)
    if not rows:
        raise SystemExit(f"no finished imbalance runs under {' '.join(roots)}")
    mismatched = [r["run"] for r in rows if abs(r["as_run"] - r["result_test_accuracy"]) > 1e-9]
    if mismatched:
        raise SystemExit(f"the restored models do not reproduce result.json: {mismatched}")
    with open(os.path.join(HERE, "test_sets.csv"), "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(rows)
    lines = ["| arm | runs | as run (first 250 test fours) | recall of those fours | "
             "recall of the last 250 fours | with the last 250 fours | every test image "
             "(balanced) |", "|---|---|---|---|---|---|---|"]
    arms = sorted({(r["method"], r["num_steps"]) for r in rows})
    for method, steps in arms:
        mine = [r for r in rows if (r["method"], r["num_steps"]) == (method, steps)]

        def cell(key):
            values = [100 * r[key] for r in mine]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.2f} ± {std:.2f}"
        lines.append(f"| {method}, {steps:,} steps | {len(mine)} | {cell('as_run')} | "
                     f"{cell('first_250_fours_recall')} | {cell('last_250_fours_recall')} | "
                     f"{cell('last_250_fours')} | {cell('every_test_image')} |")
    with open(os.path.join(HERE, "summary.md"), "w") as f:
        f.write(f"Runs: {', '.join(roots)}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv)
