"""Speed of the L2RW step against the baseline step, in one process.

    python -m l2rw_tf.bench                      # LeNet, n = 100, m in {10, 100}
    python -m l2rw_tf.bench --quick              # a smoke test
    python -m l2rw_tf.bench --output=results/bench/bench.json

Every step variant trains the same model on fixed random batches (no input pipeline), and the
variants are timed interleaved, round after round, so that machine load affects them alike; the
figure is the median over rounds of the mean ms/step within a round. The weights of the
meta-gradient methods on one batch are compared too (relative error, float32).
"""
import json
import os
import platform
import statistics
import time

from absl import app, flags

flags.DEFINE_list("models", ["lenet"], "Models to time (names of l2rw_tf.models.build_model).")
flags.DEFINE_integer("batch_size", 100, "Noisy batch size n.")
flags.DEFINE_list("clean_batch_sizes", ["10", "100"], "Clean batch sizes m.")
flags.DEFINE_list("meta_grads", ["lookahead", "jvp"], "Meta-gradient methods to time.")
flags.DEFINE_integer("rounds", 15, "Timing rounds (the median is reported).")
flags.DEFINE_integer("steps", 20, "Steps per variant per round.")
flags.DEFINE_bool("quick", False, "Few rounds and steps: checks that everything runs.")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS

# name -> (input shape, classes) of the task each model is benchmarked on.
MODEL_TASKS = {"lenet": ((28, 28, 1), 2), "resnet32": ((32, 32, 3), 10),
               "resnet": ((32, 32, 3), 10), "wrn28_10": ((32, 32, 3), 10)}


def random_batch(n, shape, classes, seed):
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    return {"image": tf.constant(rng.random((n, *shape), dtype=np.float32)),
            "label": tf.constant(rng.integers(0, classes, n)),
            "is_noisy": tf.zeros([n], tf.bool)}


def time_variants(steps_by_name, noisy, clean, rounds, steps):
    """Median over rounds of ms/step for each variant, timed interleaved."""
    samples = {name: [] for name in steps_by_name}
    for name, step in steps_by_name.items():  # warm-up: trace and run a few steps
        for _ in range(3):
            step(noisy, clean)
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            for _ in range(steps):
                step(noisy, clean)
            samples[name].append((time.perf_counter() - start) / steps * 1000.0)
    return {name: statistics.median(s) for name, s in samples.items()}


def bench_model(model_name, n, clean_sizes, meta_grads, rounds, steps):
    import numpy as np
    import tensorflow as tf
    from l2rw_tf import models, reweight, train
    shape, classes = MODEL_TASKS.get(model_name, ((32, 32, 3), 10))
    rows = []
    for m in clean_sizes:
        model = models.build_model(model_name, classes, shape, seed=0)
        noisy = random_batch(n, shape, classes, seed=1)
        clean = random_batch(m, shape, classes, seed=2)
        rng = tf.random.Generator.from_seed(0)
        variants = {"baseline": train.StepConfig(method="baseline")}
        variants.update({f"l2rw_{g}": train.StepConfig(method="l2rw", meta_grad=g)
                         for g in meta_grads})
        if "jvp" in meta_grads:  # the JVP in a pass of its own, before the weighted step
            variants["l2rw_jvp_unfused"] = train.StepConfig(method="l2rw", meta_grad="jvp",
                                                            fused=False)
        step_fns = {name: train.make_train_step(model, train.TF1Momentum(1e-3), cfg, rng)[0]
                    for name, cfg in variants.items()}
        ms = time_variants(step_fns, noisy, clean, rounds, steps)

        weights = {g: reweight.example_weights(
            model, (noisy["image"], noisy["label"]), (clean["image"], clean["label"]), g).numpy()
            for g in meta_grads}
        reference = weights[meta_grads[0]]
        agreement = {g: float(np.max(np.abs(w - reference)) / max(np.max(np.abs(reference)),
                                                                   1e-30))
                     for g, w in weights.items()}
        rows.append({"model": model_name, "n": n, "m": m,
                     "ms_per_step": ms,
                     "ratio_to_baseline": {k: v / ms["baseline"] for k, v in ms.items()},
                     "weights_relative_error": agreement})
    return rows


def machine():
    import tensorflow as tf
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor(), "tensorflow": tf.__version__}


def format_table(rows):
    variants = list(rows[0]["ms_per_step"])
    header = (f"{'model':<10}{'n':>5}{'m':>5}  " + "".join(f"{v:>22}" for v in variants)
              + "   weights rel. err")
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = "".join(
            f"{r['ms_per_step'][v]:>9.2f} ms ({r['ratio_to_baseline'][v]:4.2f}x)" for v in variants)
        err = max(r["weights_relative_error"].values())
        lines.append(f"{r['model']:<10}{r['n']:>5}{r['m']:>5}  {cells}   {err:.1e}")
    return "\n".join(lines)


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rounds, steps = (2, 3) if FLAGS.quick else (FLAGS.rounds, FLAGS.steps)
    rows = []
    for model_name in FLAGS.models:
        rows += bench_model(model_name, FLAGS.batch_size,
                            [int(m) for m in FLAGS.clean_batch_sizes], FLAGS.meta_grads,
                            rounds, steps)
    result = {"machine": machine(), "rounds": rounds, "steps_per_round": steps, "rows": rows}
    print(format_table(rows))
    print(f"(median of {rounds} interleaved rounds of {steps} steps; {result['machine']})")
    if FLAGS.output:
        os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
        with open(FLAGS.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
