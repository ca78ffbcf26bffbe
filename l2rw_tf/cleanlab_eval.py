"""L2RW's mislabel ranking against cleanlab's, on the training set of one finished L2RW run.

    pip install -e ".[eval]"     # cleanlab (and scikit-learn): an optional extra
    python -m l2rw_tf.cleanlab_eval --l2rw_run=runs/mnist_background/l2rw_seed0 \\
        --baseline_run=runs/mnist_background/baseline_seed0 --out=results/label_issues/mnist_background

The L2RW ranking is the run's own (`example_weights.csv`, ranked by `ranking.ranking_key`, the
one pipeline of `label_issues` and plots.py: by default the combined log-odds of the final
model's probability of the given label and the weights' aligned fraction; beside it the mean
weight first, the ranking before issue 23, and the probability alone). cleanlab gets what its
documentation asks for: out-of-sample predicted probabilities from K-fold cross-validation
(stratified by the given label, as `cleanlab.count.estimate_cv_predicted_probabilities`) of the
same model trained the same way — the run's flags with `--method=baseline` (uniform weights, the
noisy set, the same steps, batches and learning rates) — on K - 1 folds, predicting the held-out
one. Then `cleanlab.rank.get_label_quality_scores` (self-confidence) ranks every example and
`cleanlab.filter.find_label_issues` returns the set it flags.

Every ranking is scored against the known corrupted labels with ties in a random order
(`ranking.expected_hits`): precision and recall at k = 1,000 and at k = the number of corrupted
examples, plus the flagged sets' size, precision and recall. Wall times: the L2RW run's training
(its `result.json`), the folds' training and prediction and cleanlab's own time, each as
measured (the runs may have shared the machine with other jobs; the load average is recorded).

Fold runs are ordinary run directories (`--fold_dir`, default `<l2rw_run>_cleanlab<K>`):
an interrupted evaluation resumes them. Written to `--out`: summary.json, summary.md and
precision_curve.csv and .png (precision at k for k = 100, 200, ... of every ranking).
"""
import csv
import dataclasses
import json
import os
import sys
import time
from typing import Any, NamedTuple

import numpy as np
from absl import flags

from l2rw_tf import config as run_config
from l2rw_tf import ranking, rundir
from l2rw_tf.config import UsageError

# This tool's own flags (not the global absl FLAGS, which the training command line's are).
FLAGS = flags.FlagValues()
flags.DEFINE_string("l2rw_run", None, "A finished L2RW run directory of the noisy task (its "
                    "flags.json, result.json, example_weights.csv); its flags set the folds'.",
                    flag_values=FLAGS)
flags.DEFINE_string("baseline_run", None, "Optional: a finished baseline run of the same data, "
                    "whose own (in-sample) probability of the given label is ranked too.",
                    flag_values=FLAGS)
flags.DEFINE_integer("folds", 5, "K of the K-fold cross-validation that gives cleanlab its "
                     "out-of-sample probabilities.", flag_values=FLAGS)
flags.DEFINE_string("fold_dir", None, "Where the folds' runs go (default <l2rw_run>_cleanlab<K>);"
                    " finished folds are reused, interrupted ones resumed.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Directory for summary.json, summary.md, precision_curve.csv.",
                    flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace the results already in --out.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "tfds data directory to read the run's data from "
                    "(default: the one its flags.json records).", flag_values=FLAGS)

OUTPUTS = ("summary.json", "summary.md", "precision_curve.csv", "precision_curve.png")


class Runs(NamedTuple):
    """The runs compared: the folds' RunConfig (the L2RW run's, --method=baseline), the L2RW
    run's example_weights.csv columns and result.json, and the baseline run's (None without
    --baseline_run)."""
    config: Any
    l2rw: dict
    l2rw_result: dict
    baseline: Any
    baseline_result: Any


def need_cleanlab():
    try:
        import cleanlab.filter  # noqa: F401
        import sklearn.model_selection  # noqa: F401
    except ImportError as e:
        raise UsageError(f"this evaluation needs cleanlab and scikit-learn ({e}): "
                             f"pip install -e \".[eval]\"") from None


def read_json(path, what):
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist: {what}")
    with open(path) as f:
        return json.load(f)


def read_run(run_dir):
    """(flags.json record, result.json) of a finished run directory."""
    if not os.path.exists(os.path.join(run_dir, run_config.FLAGS_JSON)):
        raise UsageError(f"{os.path.join(run_dir, run_config.FLAGS_JSON)} does not exist: give a "
                         f"run directory")
    recorded = run_config.read_record(run_dir)
    return recorded, read_json(os.path.join(run_dir, "result.json"), "the run has not finished")


def read_example_weights(run_dir):
    """Every row of the run's example_weights.csv, in example order, as numpy columns."""
    path = os.path.join(run_dir, "example_weights.csv")
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist: give a finished noisy-task run")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or ranking.SECONDARY_SCORE not in rows[0]:
        raise UsageError(f"{path} has no {ranking.SECONDARY_SCORE} column: rerun it with "
                             f"this version of l2rw_tf")
    columns = {k: np.array([float(r[k]) if r[k] != "" else np.nan for r in rows])
               for k in rows[0]}
    if not np.array_equal(columns["index"], np.arange(len(rows))):
        raise UsageError(f"{path} is not one row per example in order")
    return columns


def load_runs():
    """Checks the runs of the flags; returns them (`Runs`) with the folds' config: the L2RW
    run's, --method=baseline (and this command's --data_dir if given)."""
    if not FLAGS.l2rw_run:
        raise UsageError("--l2rw_run is required: a finished L2RW run directory")
    if not FLAGS.out:
        raise UsageError("--out is required: the directory for the results")
    if FLAGS.folds < 2:
        raise UsageError(f"--folds={FLAGS.folds}: cross-validation needs at least 2")
    recorded, result = read_run(FLAGS.l2rw_run)
    if recorded.get("method") != "l2rw" or recorded.get("task") != "noisy":
        raise UsageError(f"{FLAGS.l2rw_run} is a {recorded.get('task')} run of "
                         f"--method={recorded.get('method')}: give a noisy-task L2RW run")
    l2rw = read_example_weights(FLAGS.l2rw_run)
    baseline = baseline_result = None
    if FLAGS.baseline_run:
        other, baseline_result = read_run(FLAGS.baseline_run)
        differ = [k for k in run_config.DATA_SETTINGS if other.get(k) != recorded.get(k)]
        if other.get("method") != "baseline" or differ:
            raise UsageError(f"--baseline_run={FLAGS.baseline_run} is not a baseline run "
                             f"of the same data (differs in {differ or ['method']})")
        baseline = read_example_weights(FLAGS.baseline_run)
    config = dataclasses.replace(run_config.from_record(recorded), method="baseline")
    if FLAGS["data_dir"].present:  # given here: it overrides the directory the run recorded
        config = dataclasses.replace(config, data_dir=FLAGS.data_dir)
    run_config.check_machine(config)
    return Runs(config, l2rw, result, baseline, baseline_result)


def check_out(out):
    """Refuses to replace earlier results unless --overwrite; probes that `out` is writable."""
    rundir.check_writable(out, "--out")
    present = [name for name in OUTPUTS if os.path.exists(os.path.join(out, name))]
    if present and not FLAGS.overwrite:
        raise UsageError(f"{out} already holds {', '.join(present)}; pass --overwrite to "
                         f"replace them, or choose another --out")


def class_probabilities(model, preprocess, images, batch_size):
    """The model's class probabilities (inference mode) [N, classes]: softmax, or for a single
    logit [1 - p, p]."""
    import tensorflow as tf

    @tf.function
    def probabilities(batch):
        logits = model(preprocess(batch), training=False)
        if logits.shape[-1] == 1:
            p = tf.sigmoid(logits)
            return tf.concat([1.0 - p, p], axis=-1)
        return tf.nn.softmax(logits)

    return np.concatenate([probabilities(images[start:start + batch_size]).numpy()
                           for start in range(0, len(images), batch_size)]).astype(np.float64)


def cross_validated_probabilities(config, inputs, fold_dir, log=print):
    """Out-of-sample class probabilities of every training example: --folds stratified folds,
    each predicted by the model of `config` (the run's, --method=baseline) trained on the
    others (a run directory per fold under `fold_dir`, resumed if interrupted). `inputs`: the
    run's `experiment.Inputs`. Returns (probabilities, per-fold records)."""
    import keras
    from sklearn.model_selection import StratifiedKFold
    from l2rw_tf import step, train
    from l2rw_tf.experiment import build_training
    arrays, preprocess = inputs.data, inputs.preprocess
    labels = arrays.train_labels
    folds = StratifiedKFold(n_splits=FLAGS.folds, shuffle=True, random_state=config.seed)
    probabilities = np.full([len(labels), arrays.num_classes], np.nan)
    records = []
    for k, (train_index, held_out) in enumerate(folds.split(np.zeros(len(labels)), labels)):
        run_dir = os.path.join(fold_dir, f"fold{k}")
        done_path = os.path.join(run_dir, "held_out.npz")
        if os.path.exists(done_path):
            saved = np.load(done_path)
            if not np.array_equal(saved["held_out"], held_out):
                raise UsageError(f"{done_path} holds another split; move {fold_dir} away")
            probabilities[held_out] = saved["probabilities"]
            records.append(json.loads(str(saved["record"])))
            log(f"fold {k + 1}/{FLAGS.folds}: reused {done_path}")
            continue
        log(f"fold {k + 1}/{FLAGS.folds}: training on {len(train_index)} examples, "
            f"predicting {len(held_out)}")
        part = dataclasses.replace(
            arrays, train_images=arrays.train_images[train_index],
            train_labels=labels[train_index], train_is_noisy=arrays.train_is_noisy[train_index],
            eval_sets={"test": arrays.eval_sets["test"]})
        keras.utils.set_random_seed(config.seed)
        fold = build_training(config, inputs._replace(data=part))
        final = train.train(fold.model, fold.optimizer, fold.train_ds, fold.clean_ds,
                            fold.evaluate, run_dir, config.num_steps,
                            step.StepConfig(method="baseline", seed=config.seed),
                            eval_interval=config.eval_interval,
                            checkpoint_interval=config.checkpoint_interval,
                            log=lambda msg: log(f"  fold {k + 1}: {msg}"))
        t0 = time.perf_counter()
        held_out_probabilities = class_probabilities(
            fold.model, preprocess, arrays.train_images[held_out], config.eval_batch_size)
        record = {"fold": k, "train_examples": int(len(train_index)),
                  "held_out": int(len(held_out)), "test_accuracy": final.get("test_accuracy"),
                  "train_seconds": final["train_seconds"],
                  "predict_seconds": time.perf_counter() - t0}
        np.savez(done_path, held_out=held_out, probabilities=held_out_probabilities,
                 record=json.dumps(record))
        probabilities[held_out] = held_out_probabilities
        records.append(record)
    return probabilities, records


def score_ranking(order_scores, is_noisy, ks, seed=0):
    """A ranking by ascending scores (a list of columns, most important first; ties in a seeded
    random order and scored as random), scored against `is_noisy`: expected precision and
    recall at each k."""
    order = ranking.rank_by(order_scores, seed)
    groups = ranking.tie_groups([np.asarray(s, np.float64)[order] for s in order_scores])
    noisy_ranked = is_noisy[order]
    total = int(is_noisy.sum())
    scores = {}
    for k in ks:
        hits = ranking.expected_hits(noisy_ranked, k, groups)
        scores[k] = {"precision": hits / k, "recall": hits / total}
    return scores, noisy_ranked, groups


def flagged_set(mask, is_noisy):
    mask = np.asarray(mask, bool)
    hits = int((mask & is_noisy).sum())
    return {"size": int(mask.sum()), "precision": hits / mask.sum() if mask.any() else None,
            "recall": hits / int(is_noisy.sum())}


def l2rw_rankings(l2rw):
    """The L2RW run's rankings, as {name: key columns}: ranking.py's default order (the one
    `label_issues` and plots.py use), its weight-first order of before issue 23, and the final
    model's probability of the given label alone."""
    def key(order):
        return [column for _, column in ranking.ranking_key(l2rw, order)]

    return {
        "L2RW default (evidence: label probability + aligned fraction)": key(None),
        "L2RW weight first (mean weight, then its model's label probability)": key("weight"),
        "L2RW model's label probability alone (in-sample)": [l2rw[ranking.SECONDARY_SCORE]],
    }


def evaluate(log=print):
    """The comparison of the flags (see the module docstring); returns the summary dict."""
    need_cleanlab()
    runs = load_runs()
    check_out(FLAGS.out)
    import cleanlab.filter
    import cleanlab.rank
    from l2rw_tf.experiment import build_data
    inputs = build_data(runs.config)
    labels, is_noisy = inputs.data.train_labels, inputs.data.train_is_noisy.astype(bool)
    if not (np.array_equal(runs.l2rw["label"], labels)
            and np.array_equal(runs.l2rw["is_noisy"], is_noisy)):
        raise UsageError(f"{FLAGS.l2rw_run}/example_weights.csv does not match the training "
                         f"set its flags build now (labels or corrupted flags differ)")
    log(f"{len(labels)} training examples, {int(is_noisy.sum())} corrupted; {inputs.data.info}")
    fold_dir = FLAGS.fold_dir or f"{FLAGS.l2rw_run.rstrip(os.sep)}_cleanlab{FLAGS.folds}"
    probabilities, folds = cross_validated_probabilities(runs.config, inputs, fold_dir, log)
    t0 = time.perf_counter()
    quality = cleanlab.rank.get_label_quality_scores(labels, probabilities,
                                                     method="self_confidence")
    rank_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    issues = cleanlab.filter.find_label_issues(labels, probabilities)
    seconds = {"cleanlab_rank": rank_seconds,
               "cleanlab_find_label_issues": time.perf_counter() - t0}
    summary, curve_ks, curves = summarize(runs, inputs.data, fold_dir, probabilities, folds,
                                          quality, issues, seconds)
    write_outputs(FLAGS.out, summary, curve_ks, curves)
    return summary


def summarize(runs, arrays, fold_dir, probabilities, folds, quality, issues, seconds):
    """The summary (rankings scored at k, flagged sets, times), the k of the precision curves
    and the curves of every ranking."""
    import cleanlab
    import l2rw_tf
    labels, is_noisy = arrays.train_labels, arrays.train_is_noisy.astype(bool)
    corrupted = int(is_noisy.sum())
    ks = sorted({k for k in (100, 1000, corrupted) if k <= len(labels)})
    rankings = {
        **l2rw_rankings(runs.l2rw),
        f"cleanlab self-confidence ({FLAGS.folds}-fold out-of-sample)": [quality],
    }
    if runs.baseline is not None:
        rankings["baseline model's label probability (in-sample)"] = \
            [runs.baseline[ranking.SECONDARY_SCORE]]
    curve_ks = list(range(100, len(labels) + 1, 100))
    scored, curves = {}, {}
    for name, key in rankings.items():
        scored[name], noisy_ranked, groups = score_ranking(key, is_noisy, ks)
        curves[name] = [ranking.precision_at(noisy_ranked, k, groups) for k in curve_ks]
    sets = {"cleanlab find_label_issues (prune_by_noise_rate)": flagged_set(issues, is_noisy),
            "L2RW default flagged (evidence below 0)":
                flagged_set(ranking.flagged(runs.l2rw), is_noisy),
            "L2RW mean weight exactly 0": flagged_set(runs.l2rw["mean_weight"] == 0, is_noisy)}
    fold_train = sum(r["train_seconds"] for r in folds)
    fold_predict = sum(r["predict_seconds"] for r in folds)
    baseline_result = runs.baseline_result
    summary = {
        "l2rw_run": FLAGS.l2rw_run, "baseline_run": FLAGS.baseline_run, "fold_dir": fold_dir,
        "folds": FLAGS.folds, "data": arrays.info, "train_examples": int(len(labels)),
        "corrupted": corrupted, "chance_precision": corrupted / len(labels),
        "rankings": {name: {str(k): v for k, v in s.items()} for name, s in scored.items()},
        "flagged_sets": sets,
        "cross_validated_accuracy_on_given_labels":
            float(np.mean(np.argmax(probabilities, axis=1) == labels)),
        "fold_records": folds,
        "seconds": {"l2rw_training": runs.l2rw_result.get("train_seconds"),
                    # as result.json records it: a resumed run counts its last session only
                    "baseline_training": baseline_result and baseline_result.get("train_seconds"),
                    "cleanlab_folds_training": fold_train,
                    "cleanlab_folds_predicting": fold_predict, **seconds,
                    "cleanlab_total": fold_train + fold_predict + seconds["cleanlab_rank"]
                    + seconds["cleanlab_find_label_issues"]},
        "load_average_at_end": list(os.getloadavg()),
        "runtime": {**l2rw_tf.runtime(), "cleanlab": cleanlab.__version__,
                    "scikit-learn": sys.modules["sklearn"].__version__},
    }
    return summary, curve_ks, curves


def markdown(summary):
    """summary.md: the two tables and the times."""
    ks = sorted({int(k) for s in summary["rankings"].values() for k in s})
    header = " | ".join(f"P@{k:,} / R@{k:,}" for k in ks)
    lines = [f"# Label issues: L2RW vs cleanlab, {summary['data'].get('dataset')} "
             f"{summary['data'].get('noise')} {summary['data'].get('ratio')}",
             "", f"{summary['train_examples']:,} training examples, {summary['corrupted']:,} "
             f"corrupted (chance precision {summary['chance_precision']:.3f}). Precision and "
             f"recall at k, ties in random order (expected values).", "",
             f"| ranking | {header} |", "|---|" + "---|" * len(ks)]
    for name, scores in summary["rankings"].items():
        cells = " | ".join(f"{scores[str(k)]['precision']:.3f} / {scores[str(k)]['recall']:.3f}"
                           for k in ks)
        lines.append(f"| {name} | {cells} |")
    lines += ["", "| flagged set | size | precision | recall |", "|---|---|---|---|"]
    for name, s in summary["flagged_sets"].items():
        precision = "" if s["precision"] is None else f"{s['precision']:.3f}"
        lines.append(f"| {name} | {s['size']:,} | {precision} | {s['recall']:.3f} |")
    sec = summary["seconds"]

    def fmt(value):
        return "" if value is None else f"{value:,.0f} s"

    lines += ["", f"Wall time: L2RW training {fmt(sec['l2rw_training'])} (one run); cleanlab "
              f"{fmt(sec['cleanlab_total'])} ({summary['folds']} fold trainings "
              f"{fmt(sec['cleanlab_folds_training'])}, predicting "
              f"{fmt(sec['cleanlab_folds_predicting'])}, ranking and filtering "
              f"{sec['cleanlab_rank'] + sec['cleanlab_find_label_issues']:.1f} s); a fold "
              f"(a baseline training, same steps) {fmt(sec['cleanlab_folds_training'] / summary['folds'])} "
              f"on average. Cross-validated accuracy on "
              f"the given labels: {summary['cross_validated_accuracy_on_given_labels']:.3f}. "
              f"Load average at the end: {', '.join(f'{x:.1f}' for x in summary['load_average_at_end'])}."]
    return "\n".join(lines) + "\n"


def write_outputs(out, summary, curve_ks, curves):
    from l2rw_tf import train
    os.makedirs(out, exist_ok=True)
    train.write_json(os.path.join(out, "summary.json"), summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown(summary))
    rows = [{"k": k, **{name: f"{curve[i]:.4f}" for name, curve in curves.items()}}
            for i, k in enumerate(curve_ks)]
    train.write_csv(os.path.join(out, "precision_curve.csv"), rows)
    curve_figure(os.path.join(out, "precision_curve.png"), summary, curve_ks, curves)


def curve_figure(path, summary, curve_ks, curves):
    """precision_curve.png: precision at k of every ranking, k up to twice the corrupted count,
    with chance and the number of corrupted examples marked."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    ks = np.asarray(curve_ks)
    shown = ks <= 2 * summary["corrupted"]
    for name, curve in curves.items():
        ax.plot(ks[shown], np.asarray(curve)[shown], label=name)
    ax.axhline(summary["chance_precision"], color="gray", linestyle=":", label="chance")
    ax.axvline(summary["corrupted"], color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("k (examples flagged, likeliest first)")
    ax.set_ylabel("precision at k (ties in random order)")
    ax.set_ylim(0, 1.02)
    data = summary["data"]
    ax.set_title(f"{data.get('dataset')}, {data.get('noise')} {data.get('ratio')}: "
                 f"{summary['corrupted']:,} of {summary['train_examples']:,} corrupted",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.savefig(path, dpi=110)


HELP_ARGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def entry(argv=None):
    from l2rw_tf import train
    argv = sys.argv if argv is None else argv
    if any(a in HELP_ARGS for a in argv[1:]):
        print(__doc__.strip())
        print(FLAGS.module_help(sys.modules[__name__]))
        sys.exit(0)
    try:
        rest = FLAGS(argv)
        if len(rest) > 1:
            raise UsageError(f"unexpected arguments {rest[1:]}; all options are --flags")
        summary = evaluate()
        print(markdown(summary))
    except (flags.Error, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (train.Diverged, train.UnreadableCheckpoint) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except train.Interrupted as e:
        print(f"cleanlab_eval: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("cleanlab_eval: stopped by SIGINT; rerun the same command to resume the folds",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    entry()
