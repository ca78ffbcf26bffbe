"""Figures and tables of the paper, regenerated from the run directories the CLI writes.

    python -m l2rw_tf.plots --runs=runs/cpu --out=results/cpu --scale=cpu
    python -m l2rw_tf.plots --run=RUN_DIR --out=DIR     # one run: histogram, ranking, precision

reads every run directory below `--runs` (`flags.json`, `metrics.csv`, `result.json`,
`example_weights.csv`; see train.py) and writes PNG figures, the CSV behind each of them and a
markdown table into `--out`:

* `mnist_imbalance.png`: test error vs proportion of the majority class, per method (paper Fig. 2).
* `curves_<experiment>.png`: test accuracy vs iteration, baseline vs L2RW (the report's figures).
* `weights_<experiment>.png`: histogram of L2RW's per-example mean weights, clean vs corrupted
  examples (paper Fig. 3), and `mislabelled_<experiment>/`: the training examples ranked
  likeliest mislabelled first (`ranked_examples.csv`) with the precision and recall of that
  ranking (`mislabel_precision.json`).
* `clean_set_sweep.png`, `noise_sweep.png`: test accuracy vs clean-set size and vs noise ratio
  (paper Figs. 4 and 5).
* `results_table.md` / `.csv`: final test accuracy, mean ± 95% CI over seeds, per setting and
  method, next to the paper's number (reference.md §4).

The mislabelled ranking is ranking.py's (`ranking_key`, one pipeline with `label_issues`): by
default the combined log-odds that the given label is right, from `label_probability` (the final
model's probability of the given label, in example_weights.csv of runs that recorded it) and the
fraction of steps the example's weight was above 0, then the mean weight, then most often at
weight zero; runs without the probability fall back to the mean weight first. Never by index:
the noise corrupts a contiguous block of indices, and L2RW gives tens of thousands of examples
mean weight exactly 0, so an index tie-break would decide the precision. Examples equal in the
whole key are one tie group; precision@k and recall@k are the expectation over a random order
of each group (the examples before the group at rank k count fully, the group its corrupted
fraction times its slots up to k), so a ranking whose scores say nothing scores chance, the
corrupted fraction. The JSON also gives the chance level, the group at mean weight exactly 0
(size, corrupted fraction), the flagged set (`ranking.flagged`: size, precision, recall),
whether the secondary score was there, and the ties across each k; the CSV gives each row's tie
group as a rank range (rows within a group in a seeded random order) and whether it is flagged.

Figures find their runs by experiment: run_experiments.sh writes each run to
`RUNS/<experiment>/<run>/` (the experiment names are below). The table takes every finished run
under `--runs`. A figure whose runs are absent is skipped with a note.

Only numpy, csv, json and matplotlib: no TensorFlow, so plotting is fast and runs anywhere.
"""
import argparse
import csv
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from l2rw_tf.config import FLAGS_JSON, read_record  # noqa: E402  (flags.json's one reader)
# The tie-honest ranking (numpy only), shared with l2rw_tf.label_issues.
from l2rw_tf.ranking import (  # noqa: E402,F401
    SECONDARY_SCORE, expected_hits, flagged, has_secondary_score, precision_at, rank_by_weight,
    ranking_key, resolve_order, tie_across, tie_groups)

# The experiments of run_experiments.sh: RUNS/<experiment>/<run>/.
IMBALANCE_EXPERIMENT = "mnist_imbalance"
CURVE_EXPERIMENTS = ("mnist_background", "cifar10_background", "cifar10_uniform")
# Each sweep adds its own runs to those of the main setting it varies (ratio 0.4 of the noise
# sweep is the Table 1 run, 10 clean images per class of the clean-set sweep the Table 2 run).
CLEAN_SWEEP_EXPERIMENTS = ("cifar10_background_clean_sweep", "cifar10_background")
NOISE_SWEEP_EXPERIMENTS = ("cifar10_uniform_noise_sweep", "cifar10_uniform")

POS_RATIOS = (0.9, 0.95, 0.98, 0.99, 0.995)
IMBALANCE_METHODS = ("l2rw", "baseline", "ratio", "resample", "hard_mining", "random")
METHOD_ORDER = ("baseline", "random", "ratio", "resample", "hard_mining", "weighted",
                "finetune", "clean_only", "l2rw")
METHOD_NAMES = {"l2rw": "L2RW", "baseline": "Baseline", "random": "Random weights",
                "ratio": "Proportion", "resample": "Resample", "hard_mining": "Hard mining",
                "weighted": "Weighted", "finetune": "Baseline +FT", "clean_only": "Clean only"}
# One colour per method in every figure.
METHOD_COLORS = {"l2rw": "tab:red", "baseline": "tab:blue", "random": "tab:gray",
                 "ratio": "tab:green", "resample": "tab:purple", "hard_mining": "tab:brown",
                 "weighted": "tab:olive", "finetune": "tab:cyan", "clean_only": "tab:pink"}
NOISE_NAMES = {"uniform": "UniformFlip", "background": "BackgroundFlip", "none": "no noise"}
# Flags that differ between the seeds of one setting (finetune names its own seed's baseline);
# and where the data was read from (flags.json's data_dir), which is no part of the setting.
PER_SEED_FLAGS = ("seed", "train_seed", "finetune_from", "data_dir")

# Paper Tables 1 and 2 (reference.md §4): test accuracy %, 40% noise, mean ± 95% CI over 5 splits.
# Keyed by (dataset, noise, method); Weighted is BackgroundFlip CIFAR-10 only.
PAPER_ACCURACY = {
    ("CIFAR-10", "uniform", "baseline"): (67.97, 0.62),
    ("CIFAR-10", "uniform", "random"): (86.06, 0.32),
    ("CIFAR-10", "uniform", "finetune"): (78.66, 0.44),
    ("CIFAR-10", "uniform", "clean_only"): (46.64, 3.90),
    ("CIFAR-10", "uniform", "l2rw"): (86.92, 0.19),
    ("CIFAR-100", "uniform", "baseline"): (50.66, 0.24),
    ("CIFAR-100", "uniform", "random"): (58.01, 0.37),
    ("CIFAR-100", "uniform", "finetune"): (54.52, 0.40),
    ("CIFAR-100", "uniform", "clean_only"): (9.94, 0.82),
    ("CIFAR-100", "uniform", "l2rw"): (61.34, 2.06),
    ("CIFAR-10", "background", "baseline"): (59.54, 2.16),
    ("CIFAR-10", "background", "random"): (69.51, 1.36),
    ("CIFAR-10", "background", "finetune"): (82.82, 0.93),
    ("CIFAR-10", "background", "clean_only"): (15.90, 3.32),
    ("CIFAR-10", "background", "l2rw"): (86.73, 0.48),
    ("CIFAR-10", "background", "weighted"): (79.17, 1.36),
    ("CIFAR-100", "background", "baseline"): (37.82, 0.69),
    ("CIFAR-100", "background", "random"): (36.56, 0.44),
    ("CIFAR-100", "background", "finetune"): (54.23, 1.75),
    ("CIFAR-100", "background", "clean_only"): (8.06, 0.76),
    ("CIFAR-100", "background", "l2rw"): (59.30, 0.60),
}
# The same reference, at 0% noise (a baseline without corrupted labels; no CI given).
PAPER_CLEAN_ACCURACY = {("CIFAR-10", "resnet32"): 92.5, ("CIFAR-100", "resnet32"): 68.1,
                        ("CIFAR-10", "wrn28_10"): 95.5, ("CIFAR-100", "wrn28_10"): 78.2}
# The paper's setting behind those numbers (reference §3), to say whether a row is comparable.
PAPER_SETTINGS = {
    "uniform": {"model": "wrn28_10", "num_clean": 1000, "clean_per_class": None,
                "num_steps": 60000},
    "background": {"model": "resnet32", "num_clean": None, "clean_per_class": 10,
                   "num_steps": 80000},
}
PAPER_METHOD_STEPS = {"clean_only": 2000, "finetune": 5000}
PAPER_RATIO = 0.4

# Student t quantiles t_{0.975, df} for df = 1..30 (two-sided 95%).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# ---------------------------------------------------------------------------------------------
# Reading run directories.

class NoRuns(ValueError):
    """Nothing to draw: the runs a figure needs are absent or unfinished (a note, not an error)."""


def find_runs(root):
    """Every run directory (one holding flags.json) below `root`, sorted; symlinked experiment
    directories are followed (a root may gather experiments kept elsewhere)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if FLAGS_JSON in filenames:
            found.append(dirpath)
            dirnames[:] = []  # a run directory holds no other runs (ckpt/, tb/)
        dirnames.sort()
    return sorted(found)


def to_float(text):
    """A CSV cell as a float: empty or unparsable cells are nan."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_run(run_dir):
    """{"dir", "flags", "metrics" (rows of floats), "result" (None until finished)}."""
    run_flags = read_record(run_dir)
    metrics_path = os.path.join(run_dir, "metrics.csv")
    metrics = []
    if os.path.exists(metrics_path):
        metrics = [{k: to_float(v) for k, v in row.items()} for row in read_csv(metrics_path)]
    result = None
    result_path = os.path.join(run_dir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
    return {"dir": run_dir, "flags": run_flags, "metrics": metrics, "result": result}


def finished_runs(run_dirs):
    """The finished runs (with result.json) of `run_dirs`; a note names how many are not."""
    runs = [load_run(d) for d in run_dirs]
    done = [r for r in runs if r["result"] is not None]
    if len(done) < len(runs):
        print(f"note: {len(runs) - len(done)} unfinished run(s) left out, e.g. "
              f"{next(r['dir'] for r in runs if r['result'] is None)}")
    return done


def dataset_label(dataset):
    """How results on `dataset` must be named: the JPEG copy is never plain "CIFAR-10".
    (The same rule as l2rw_tf.data.dataset_label, kept here so plotting needs no TensorFlow.)"""
    if dataset.startswith("folder:"):
        path = dataset[len("folder:"):]
        if os.path.basename(path.rstrip("/")) == "cifar10_jpeg":
            return "CIFAR-10 (JPEG copy)"
        return f"image folder {path}"
    return {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(dataset, dataset)


def test_accuracy(run):
    return float(run["result"].get("test_accuracy", math.nan))


def clean_set_size(run):
    """Clean images of a noisy-task run: as the run reported it, else from its flags."""
    data = run["result"].get("data") or {}
    if "clean" in data:
        return int(data["clean"])
    f = run["flags"]
    if f.get("num_clean"):
        return int(f["num_clean"])
    classes = {"cifar100": 100}.get(f.get("dataset"), 10)
    return int(f["clean_per_class"]) * classes


def check_one_setting(runs, varying):
    """Refuses to average runs that differ in anything but the seed and the `varying` flags.
    A flag a run does not record does not apply to it (e.g. --meta_grad to a baseline run)."""
    keys = sorted({k for r in runs for k in r["flags"]} - set(PER_SEED_FLAGS) - set(varying))
    for key in keys:
        values = {json.dumps(r["flags"][key]) for r in runs if key in r["flags"]}
        if len(values) > 1:
            raise ValueError(f"runs of different settings mixed: --{key} takes the values "
                             f"{', '.join(sorted(values))}")


# ---------------------------------------------------------------------------------------------
# Statistics.

def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def t_quantile_975(df):
    """t_{0.975, df}: the table above, then the Cornish-Fisher expansion (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci95(values):
    """Mean and half-width of the 95% Student t confidence interval (None for one value)."""
    mean, std = mean_std(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))


def write_rows(path, rows, fieldnames=None):
    fieldnames = fieldnames or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=fieldnames)
        out.writeheader()
        out.writerows(rows)


def save_figure(fig, path):
    """Every figure's finish: light grid and a small legend on each axes, then a PNG."""
    for ax in fig.axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Paper Fig. 2: MNIST 4 vs 9, test error vs class imbalance.

def imbalance_figure(run_dirs, out_dir, title=None):
    """Test error (%) vs pos_ratio, mean ± std over seeds, one line per method. Writes
    `mnist_imbalance.png` and `mnist_imbalance.csv`; returns the CSV rows. The step count may
    differ between methods (the original script trains L2RW 4,000 steps, its baselines 8,000),
    not within one; each line's label then names its steps."""
    runs = [r for r in finished_runs(run_dirs) if r["flags"].get("task") == "imbalance"]
    if not runs:
        raise NoRuns("no finished imbalance runs")
    check_one_setting(runs, varying=("method", "pos_ratio", "num_steps"))
    steps_of = {}
    for r in runs:
        steps_of.setdefault(r["flags"]["method"], set()).add(r["flags"].get("num_steps"))
    for method, steps in steps_of.items():
        if len(steps) > 1:
            raise ValueError(f"runs of different settings mixed: --method={method} runs take "
                             f"--num_steps {', '.join(sorted(map(str, steps)))}")
    all_steps = {s for steps in steps_of.values() for s in steps}
    rows = []
    for method in IMBALANCE_METHODS + tuple(sorted(set(steps_of) - set(IMBALANCE_METHODS))):
        for pos_ratio in sorted({r["flags"]["pos_ratio"] for r in runs}):
            errors = [100.0 * (1.0 - test_accuracy(r)) for r in runs
                      if r["flags"]["method"] == method and r["flags"]["pos_ratio"] == pos_ratio]
            if errors:
                mean, std = mean_std(errors)
                rows.append({"method": method, "pos_ratio": pos_ratio, "n_seeds": len(errors),
                             "num_steps": next(iter(steps_of[method])),
                             "test_error_mean": mean, "test_error_std": std})
    os.makedirs(out_dir, exist_ok=True)
    write_rows(os.path.join(out_dir, "mnist_imbalance.csv"), rows)

    # The proportions are equally spaced on the axis, as in the paper (0.98..0.995 would
    # otherwise overlap).
    ratios = sorted({row["pos_ratio"] for row in rows})
    position = {p: i for i, p in enumerate(ratios)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(row["method"] for row in rows):
        points = [row for row in rows if row["method"] == method]
        label = METHOD_NAMES.get(method, method)
        if len(all_steps) > 1:
            label += f", {points[0]['num_steps']:,} steps"
        ax.errorbar([position[p["pos_ratio"]] for p in points],
                    [p["test_error_mean"] for p in points],
                    yerr=[p["test_error_std"] for p in points], marker="o", capsize=3,
                    color=METHOD_COLORS.get(method), label=label)
    ax.set_xticks(range(len(ratios)), [f"{p:g}" for p in ratios])
    ax.set_xlabel("proportion of the majority class (9s)")
    ax.set_ylabel("test error (%)")
    seeds = max(row["n_seeds"] for row in rows)
    steps = f"{next(iter(all_steps))} steps " if len(all_steps) == 1 else ""
    ax.set_title(title or f"MNIST 4 vs 9, {steps}(mean ± std, up to {seeds} seeds)")
    save_figure(fig, os.path.join(out_dir, "mnist_imbalance.png"))
    return rows


# ---------------------------------------------------------------------------------------------
# The report's figures: test accuracy vs iteration.

def setting_title(run_flags):
    """E.g. "CIFAR-10 (JPEG copy) BackgroundFlip 40%, resnet-8 x0.5"."""
    label = dataset_label(run_flags.get("dataset", "?"))
    if run_flags.get("task") == "imbalance":
        return f"{label} 4 vs 9, {100 * run_flags.get('pos_ratio', 0):g}% nines"
    noise = NOISE_NAMES.get(run_flags.get("noise"), run_flags.get("noise"))
    return f"{label} {noise} {100 * run_flags.get('ratio', 0):g}%, {model_name(run_flags)}"


def curves_figure(groups, out_path, title=None):
    """Test accuracy vs iteration, mean over seeds with a ± std band, one line per group.
    `groups` maps a line label (e.g. "Baseline") to its run directories. Writes `out_path` (PNG)
    and the CSV behind it (same name, .csv); returns the CSV rows. Only the steps that every
    seed of a group has evaluated are averaged."""
    rows, title_flags, drawn = [], None, []
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, run_dirs in groups.items():
        runs = [r for r in finished_runs(run_dirs) if r["metrics"]]
        if not runs:
            continue
        check_one_setting(runs, varying=())
        title_flags = title_flags or runs[0]["flags"]
        curves = [{row["step"]: row.get("test_accuracy", math.nan) for row in r["metrics"]}
                  for r in runs]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        stats = [mean_std([100.0 * c[s] for c in curves]) for s in steps]
        for step, (mean, std) in zip(steps, stats):
            rows.append({"method": label, "step": int(step), "n_seeds": len(runs),
                         "test_accuracy_mean": mean, "test_accuracy_std": std})
        mean = np.array([m for m, _ in stats])
        std = np.array([s for _, s in stats])
        # A method's colour; its second and later groups (e.g. other step counts) dashed, dotted.
        method = runs[0]["flags"].get("method")
        line, = ax.plot(steps, mean, color=METHOD_COLORS.get(method),
                        linestyle=("-", "--", ":", "-.")[drawn.count(method) % 4],
                        label=f"{label} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        drawn.append(method)
    if not rows:
        plt.close(fig)
        raise NoRuns("no finished runs with metrics")
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or setting_title(title_flags))
    save_figure(fig, out_path)
    write_rows(os.path.splitext(out_path)[0] + ".csv", rows)
    return rows


# ---------------------------------------------------------------------------------------------
# Paper Fig. 3 and the mislabelled-example export, from example_weights.csv.

# The columns of example_weights.csv read here (train.py writes them) and the optional one:
# the final model's probability of each example's given label, absent from older runs.
WEIGHT_COLUMNS = ("index", "label", "is_noisy", "times_seen", "mean_weight", "zero_fraction")


def read_example_weights(run_dir):
    """The rows of `example_weights.csv` as numpy columns, examples never seen left out (their
    mean weight is undefined). `label_probability` is among them only if the file has it."""
    path = os.path.join(run_dir, "example_weights.csv")
    if not os.path.exists(path):
        raise NoRuns(f"{path} does not exist (written by finished noisy-task runs)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [k for k in WEIGHT_COLUMNS if k not in header]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(missing)}")
    names = WEIGHT_COLUMNS + ((SECONDARY_SCORE,) if SECONDARY_SCORE in header else ())
    columns = {k: np.array([to_float(r[k]) for r in rows], dtype=np.float64) for k in names}
    seen = (columns["times_seen"] > 0) & np.isfinite(columns["mean_weight"])
    return {k: v[seen] for k, v in columns.items()}, len(rows)


def weight_histogram(run_dir, out_path, bins=40):
    """Histogram of the per-example mean weights (1.0 = the uniform weight 1/n), clean vs
    corrupted examples, each normalised to its own total. Writes `out_path` (PNG) and the bin
    counts as CSV (same name, .csv); returns the CSV rows."""
    columns, _ = read_example_weights(run_dir)
    weights, noisy = columns["mean_weight"], columns["is_noisy"] > 0
    if not len(weights):
        raise ValueError(f"{run_dir}: no example was ever in a batch")
    edges = np.histogram_bin_edges(weights, bins=bins)
    clean_counts, _ = np.histogram(weights[~noisy], bins=edges)
    noisy_counts, _ = np.histogram(weights[noisy], bins=edges)
    rows = [{"bin_left": float(a), "bin_right": float(b), "clean_count": int(c),
             "corrupted_count": int(n)}
            for a, b, c, n in zip(edges[:-1], edges[1:], clean_counts, noisy_counts)]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_rows(os.path.splitext(out_path)[0] + ".csv", rows)

    fig, ax = plt.subplots(figsize=(6, 4))
    widths = np.diff(edges)
    for counts, label, color in ((clean_counts, "clean", "tab:blue"),
                                 (noisy_counts, "corrupted", "tab:red")):
        if counts.sum():
            ax.bar(edges[:-1], counts / counts.sum(), width=widths, align="edge", alpha=0.5,
                   color=color, label=f"{label} ({int(counts.sum())} examples)")
    ax.set_xlabel("mean weight over training (relative to uniform, 1 = 1/n)")
    ax.set_ylabel("fraction of examples")
    ax.set_title(f"L2RW weights: {setting_title(read_record(run_dir))}")
    save_figure(fig, out_path)
    return rows


def export_mislabelled(run_dir, out_dir, top_k=None, order=None):
    """Ranks the training examples of a finished run, likeliest mislabelled first
    (`rank_by_weight` with ranking.py's `order`, default "evidence"): writes `ranked_examples.csv` (the first `top_k`, all if None) and
    `mislabel_precision.json`, the precision and recall of the ranking against the known
    corruption at k = 100, 500, 1000 and the number of corrupted examples. Ties are counted as
    if ordered at random (`expected_hits`), so a ranking whose scores say nothing scores chance
    (the corrupted fraction). Returns that summary."""
    columns, num_examples = read_example_weights(run_dir)
    order = resolve_order(columns, order)
    columns["flagged"] = flagged(columns, order)
    permutation = rank_by_weight(columns, order=order)
    ranked = {k: v[permutation] for k, v in columns.items()}
    key = ranking_key(ranked, order)
    groups = tie_groups([column for _, column in key])
    is_noisy = ranked["is_noisy"] > 0
    num_ranked, num_corrupted = len(permutation), int(is_noisy.sum())
    marked = ranked["flagged"].astype(bool)
    ks = [k for k in dict.fromkeys((100, 500, 1000, num_corrupted)) if 0 < k <= num_ranked]
    hits = {k: expected_hits(is_noisy, k, groups) for k in ks}
    zero = ranked["mean_weight"] == 0
    num_zero, zero_corrupted = int(zero.sum()), int((zero & is_noisy).sum())
    across = {k: tie_across(groups, k) for k in ks}
    sizes = np.bincount(groups) if num_ranked else np.zeros(0, dtype=int)
    has_score = has_secondary_score(columns)
    summary = {
        "run_dir": run_dir, "num_examples": num_examples, "num_ranked": num_ranked,
        "num_corrupted": num_corrupted,
        "corrupted_fraction": num_corrupted / num_ranked if num_ranked else None,
        "chance_precision": num_corrupted / num_ranked if num_ranked else None,
        "order": order,
        "ranking_key": [name for name, _ in key],
        "flagged": {
            "rule": {"evidence": "combined log-odds below 0",
                     "probability": "label probability below 0.5",
                     "weight": "mean weight exactly 0"}[order],
            "size": int(marked.sum()), "num_corrupted": int((marked & is_noisy).sum()),
            "precision": float((marked & is_noisy).sum() / marked.sum()) if marked.any()
            else None,
            "recall": float((marked & is_noisy).sum() / num_corrupted) if num_corrupted
            else None},
        "secondary_score": SECONDARY_SCORE if has_score else None,
        "secondary_score_note": (
            f"the final model's probability of the given label is in the key (order {order})"
            if has_score else
            "example_weights.csv has no label_probability column (a run written before it "
            "existed) or no value in it: no secondary score, ties in mean weight are broken by "
            "the zero fraction only, and count at random order"),
        "ties": "precision and recall are expectations over a random order of each tie group "
                "(examples equal in every ranking_key score); never decided by the index",
        "precision_at": {str(k): hits[k] / k for k in ks},
        "recall_at": {str(k): hits[k] / num_corrupted if num_corrupted else None
                      for k in ks},
        "zero_weight_group": {
            "size": num_zero, "num_corrupted": zero_corrupted,
            "corrupted_fraction": zero_corrupted / num_zero if num_zero else None},
        "num_tie_groups": int(len(sizes)),
        "largest_tie_group": int(sizes.max()) if len(sizes) else 0,
        "tie_across_k": {str(k): None if r is None else {
            "first_rank": r[0], "last_rank": r[1], "size": r[1] - r[0] + 1,
            "corrupted_fraction": float(is_noisy[r[0] - 1:r[1]].mean())}
            for k, r in across.items()},
        "largest_tie_across_k": max([r[1] - r[0] + 1 for r in across.values() if r] or [0]),
    }
    os.makedirs(out_dir, exist_ok=True)
    keep = num_ranked if top_k is None else min(top_k, num_ranked)
    first = np.searchsorted(groups, groups, side="left") + 1
    last = np.searchsorted(groups, groups, side="right")
    fields = ["rank", "index", "label", "is_noisy", "mean_weight", SECONDARY_SCORE,
              "zero_fraction", "flagged", "tie_first_rank", "tie_last_rank"]
    write_rows(os.path.join(out_dir, "ranked_examples.csv"),
               [{"rank": i + 1, "index": int(ranked["index"][i]), "label": int(ranked["label"][i]),
                 "is_noisy": int(is_noisy[i]), "mean_weight": float(ranked["mean_weight"][i]),
                 SECONDARY_SCORE: float(ranked[SECONDARY_SCORE][i]) if has_score else "",
                 "zero_fraction": float(ranked["zero_fraction"][i]),
                 "flagged": int(marked[i]),
                 "tie_first_rank": int(first[i]), "tie_last_rank": int(last[i])}
                for i in range(keep)], fieldnames=fields)
    with open(os.path.join(out_dir, "mislabel_precision.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def summary_lines(summary):
    """The precision and recall of a ranking, and what its ties hide, as lines to print."""
    chance = summary["chance_precision"]
    number = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [f"precision@{k} {number(p)}  recall@{k} {number(summary['recall_at'][k])}"
             for k, p in summary["precision_at"].items()]
    lines.append(f"chance (corrupted fraction): {number(chance)}")
    zero = summary["zero_weight_group"]
    if zero["size"]:
        lines.append(f"mean weight exactly 0: {zero['size']} examples, "
                     f"{zero['corrupted_fraction']:.3f} corrupted")
    lines.append(f"secondary score: {summary['secondary_score'] or 'none'}; largest tie "
                 f"across a reported k: {summary['largest_tie_across_k']} examples "
                 f"(counted at random order)")
    return lines


# ---------------------------------------------------------------------------------------------
# Paper Figs. 4 and 5: test accuracy vs clean-set size and vs noise ratio.

SWEEPS = {
    # name: (x of a run, flags that vary along the sweep, x label, log x axis)
    "clean_set": (clean_set_size, ("num_clean", "clean_per_class", "clean_batch_size"),
                  "clean images", True),
    "noise_ratio": (lambda run: 100.0 * run["flags"]["ratio"], ("ratio",),
                    "corrupted labels (%)", False),
}


def sweep_figure(run_dirs, out_path, sweep, title=None):
    """Test accuracy vs the swept quantity (`sweep` = "clean_set" for Fig. 4, "noise_ratio" for
    Fig. 5), mean ± std over seeds, one line per method. A method run at a single x value (e.g.
    the baseline of the clean-set sweep, which needs no clean set) is drawn as a horizontal
    reference line. A line averages, at each x, only the seeds it has at every x, so all its
    points compare like with like. Writes `out_path` (PNG) and the CSV; returns the CSV rows."""
    if sweep not in SWEEPS:
        raise ValueError(f"sweep={sweep!r} is unknown; choose one of {', '.join(SWEEPS)}")
    x_of, varying, x_label, log_x = SWEEPS[sweep]
    runs = [r for r in finished_runs(run_dirs) if r["flags"].get("task") == "noisy"]
    if not runs:
        raise NoRuns("no finished noisy-task runs")
    check_one_setting(runs, varying=("method",) + varying)
    rows = []
    fig, ax = plt.subplots(figsize=(6, 4))
    methods = sorted({r["flags"]["method"] for r in runs}, key=method_rank)
    for method in methods:
        mine = [r for r in runs if r["flags"]["method"] == method]
        xs = sorted({x_of(r) for r in mine})
        seeds_at = [{r["flags"]["seed"] for r in mine if x_of(r) == x} for x in xs]
        common = set.intersection(*seeds_at)
        points = []
        for x, seeds in zip(xs, seeds_at):
            use = common if common else seeds
            accuracies = [100.0 * test_accuracy(r) for r in mine
                          if x_of(r) == x and r["flags"]["seed"] in use]
            mean, std = mean_std(accuracies)
            points.append((x, mean, std))
            rows.append({"method": method, "x": x, "n_seeds": len(accuracies),
                         "test_accuracy_mean": mean, "test_accuracy_std": std})
        seeds = max(row["n_seeds"] for row in rows if row["method"] == method)
        name = f"{METHOD_NAMES.get(method, method)} ({seeds} seed{'s' * (seeds > 1)})"
        color = METHOD_COLORS.get(method)
        if len(points) == 1:
            x, mean, std = points[0]
            ax.axhline(mean, linestyle="--", color=color, label=f"{name} (at {x:g})")
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.1)
        else:
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[p[2] for p in points], marker="o", capsize=3, color=color,
                        label=name)
    if log_x:
        ax.set_xscale("log")
        ax.minorticks_off()
    ticks = sorted({row["x"] for row in rows})
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    flags0 = runs[0]["flags"]
    ax.set_title(title or f"{dataset_label(flags0.get('dataset', '?'))} "
                          f"{NOISE_NAMES.get(flags0.get('noise'), '')}, {model_name(flags0)}")
    save_figure(fig, out_path)
    write_rows(os.path.splitext(out_path)[0] + ".csv", rows)
    return rows


def method_rank(method):
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


# ---------------------------------------------------------------------------------------------
# The results table, next to the paper's numbers.

def setting_name(run_flags, clean_size=None):
    """The setting of a row, e.g. "UniformFlip 40%, 1,000 clean" or "4 vs 9, 99.5% nines"."""
    f = run_flags
    if f.get("task") == "imbalance":
        return f"4 vs 9, {100 * f['pos_ratio']:g}% nines"
    if f.get("ratio") == 0 or f.get("noise") == "none":
        text = "no noise"
    else:
        text = f"{NOISE_NAMES.get(f.get('noise'), f.get('noise'))} {100 * f.get('ratio', 0):g}%"
    if f.get("clean_per_class"):
        text += f", {f['clean_per_class']}/class clean"
    elif f.get("num_clean") or clean_size:
        text += f", {f.get('num_clean') or clean_size:,} clean"
    if f.get("num_train_subset"):
        text += f", {f['num_train_subset']:,}-image train subset"
    if f.get("augment") is False:
        text += ", no augmentation"
    return text


def model_name(run_flags):
    """The network of a row; the reduced ResNet with its depth and width ("resnet-8 x0.5")."""
    f = run_flags
    if f.get("model") != "resnet":
        return str(f.get("model"))
    units = f.get("units") or 5
    return f"resnet-{6 * units + 2} x{f.get('width') or 1:g}"


def paper_number(run_flags):
    """(paper mean, paper CI or None, differences from the paper's setting) of a row, or None
    when the paper reports nothing for it."""
    f = run_flags
    label = dataset_label(f.get("dataset", ""))
    dataset = "CIFAR-10" if label == "CIFAR-10 (JPEG copy)" else label
    noise, method = f.get("noise"), f.get("method")
    if f.get("task") != "noisy" or noise not in PAPER_SETTINGS:
        return None
    setting = PAPER_SETTINGS[noise]
    if f.get("ratio") == 0:
        if method != "baseline" or (dataset, f.get("model")) not in PAPER_CLEAN_ACCURACY:
            return None
        mean, ci = PAPER_CLEAN_ACCURACY[(dataset, f.get("model"))], None
    elif f.get("ratio") == PAPER_RATIO and (dataset, noise, method) in PAPER_ACCURACY:
        mean, ci = PAPER_ACCURACY[(dataset, noise, method)]
    else:
        return None
    differences = []
    if label != dataset:
        differences.append(f"{label}, not the paper's data")
    expected = dict(setting, num_steps=PAPER_METHOD_STEPS.get(method, setting["num_steps"]))
    for key, value in expected.items():
        if f.get(key) != value:
            differences.append(f"{key} {f.get(key)} (paper {value})")
    if f.get("num_train_subset"):
        differences.append(f"train subset of {f['num_train_subset']}")
    if f.get("augment") is False:
        differences.append("no augmentation")
    return mean, ci, differences


def format_accuracy(mean, ci, n):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if ci is None:
        return f"{mean:.2f} (n={n})" if n == 1 else f"{mean:.2f}"
    return f"{mean:.2f} ± {ci:.2f}"


def results_table(run_dirs, out_path, scale=""):
    """Final test accuracy (%), mean ± 95% CI (Student t) over seeds, per setting and method,
    next to the paper's number where it reports one. Writes `out_path` (markdown) and the same
    rows as CSV (same name, .csv); returns the rows."""
    runs = finished_runs(run_dirs)
    if not runs:
        raise NoRuns("no finished runs")
    groups = {}
    for r in runs:
        key = json.dumps({k: v for k, v in r["flags"].items() if k not in PER_SEED_FLAGS},
                         sort_keys=True)
        groups.setdefault(key, []).append(r)
    rows = []
    for members in groups.values():
        f = members[0]["flags"]
        accuracies = [100.0 * test_accuracy(r) for r in members]
        mean, ci = mean_ci95(accuracies)
        clean = clean_set_size(members[0]) if f.get("task") == "noisy" else None
        paper = paper_number(f)
        comparable = ""
        if paper is not None:
            comparable = "yes" if not paper[2] else "no: " + "; ".join(paper[2])
        rows.append({
            "dataset": dataset_label(f.get("dataset", "?")), "setting": setting_name(f, clean),
            "model": model_name(f), "method": f.get("method"), "num_steps": f.get("num_steps"),
            "scale": scale, "n_seeds": len(members),
            "seeds": " ".join(str(r["flags"].get("seed")) for r in
                              sorted(members, key=lambda r: r["flags"].get("seed", 0))),
            "test_accuracy_mean": mean, "test_accuracy_ci95": ci,
            "paper_mean": paper[0] if paper else None, "paper_ci95": paper[1] if paper else None,
            "comparable_to_paper": comparable,
            "_sort": (f.get("task") != "imbalance", rows_dataset_rank(f), f.get("noise") or "",
                      f.get("pos_ratio") or 0, f.get("ratio") or 0, clean or 0,
                      model_name(f), method_rank(f.get("method")))})
    rows.sort(key=lambda row: row.pop("_sort"))

    header = ("| dataset | setting | model | method | steps | scale | n | test accuracy (%) | "
              "paper (%) | comparable to the paper |")
    lines = [f"Final test accuracy, mean ± 95% CI over seeds (Student t); paper numbers from "
             f"reference.md §4 (Tables 1-2: 40% noise, 5 splits).", "", header,
             "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        ours = format_accuracy(row["test_accuracy_mean"], row["test_accuracy_ci95"],
                               row["n_seeds"])
        paper = format_accuracy(row["paper_mean"], row["paper_ci95"], None)
        lines.append(f"| {row['dataset']} | {row['setting']} | {row['model']} | {row['method']} "
                     f"| {row['num_steps']} | {row['scale']} | {row['n_seeds']} | {ours} | "
                     f"{paper} | {row['comparable_to_paper']} |")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    write_rows(os.path.splitext(out_path)[0] + ".csv", rows)
    return rows


def rows_dataset_rank(run_flags):
    order = ("MNIST", "CIFAR-10", "CIFAR-10 (JPEG copy)", "CIFAR-100")
    label = dataset_label(run_flags.get("dataset", ""))
    return order.index(label) if label in order else len(order)


# ---------------------------------------------------------------------------------------------
# Everything under a runs root.

def experiment_runs(runs_root, *experiments, methods=None):
    """Run directories of the given experiments (RUNS/<experiment>/<run>), optionally only
    those of some methods."""
    found = []
    for experiment in experiments:
        for run_dir in find_runs(os.path.join(runs_root, experiment)):
            if methods is None or load_run(run_dir)["flags"].get("method") in methods:
                found.append(run_dir)
    return found


def runs_index(runs_root, out_path):
    """One row per run directory: its experiment, whether it finished, and all its flags (so
    the seeds, steps and flags of every run are recorded beside the results)."""
    rows = []
    for run_dir in find_runs(runs_root):
        run = load_run(run_dir)
        rows.append({"run_dir": run_dir,
                     "experiment": os.path.relpath(run_dir, runs_root).split(os.sep)[0],
                     "finished": int(run["result"] is not None),
                     **{k: json.dumps(v) if isinstance(v, list) else v
                        for k, v in run["flags"].items()}})
    write_rows(out_path, rows)
    return rows


def regenerate(runs_root, out_dir, scale="", top_k=1000):
    """Every figure and table whose runs exist under `runs_root`, into `out_dir`. Missing runs
    skip a figure with a note; returns the number of figures that failed for another reason."""
    os.makedirs(out_dir, exist_ok=True)
    failures = 0

    def attempt(name, make, run_dirs, missing="no runs found"):
        nonlocal failures
        if not run_dirs:
            print(f"skipped {name}: {missing}")
            return
        try:
            make()
            print(f"wrote {name}")
        except NoRuns as e:
            print(f"skipped {name}: {e}")
        except ValueError as e:  # runs that cannot be drawn together: say so, draw the rest
            failures += 1
            print(f"error: {name}: {e}", file=sys.stderr)

    out = lambda name: os.path.join(out_dir, name)  # noqa: E731
    imbalance = experiment_runs(runs_root, IMBALANCE_EXPERIMENT)
    attempt("mnist_imbalance.png", lambda: imbalance_figure(imbalance, out_dir), imbalance)

    for experiment in CURVE_EXPERIMENTS:
        groups = {METHOD_NAMES[m]: experiment_runs(runs_root, experiment, methods=(m,))
                  for m in ("baseline", "l2rw")}
        groups = {k: v for k, v in groups.items() if v}
        attempt(f"curves_{experiment}.png",
                lambda: curves_figure(groups, out(f"curves_{experiment}.png")),
                [d for v in groups.values() for d in v])
        # Fig. 3 and the ranking of mislabelled examples: the L2RW run of the first seed.
        l2rw = [r for r in finished_runs(groups.get("L2RW", []))
                if os.path.exists(os.path.join(r["dir"], "example_weights.csv"))]
        first = min(l2rw, key=lambda r: r["flags"].get("seed", 0))["dir"] if l2rw else None
        missing = "no finished L2RW run with example_weights.csv"
        attempt(f"weights_{experiment}.png",
                lambda: weight_histogram(first, out(f"weights_{experiment}.png")),
                [first] if first else [], missing)
        attempt(f"mislabelled_{experiment}/",
                lambda: export_mislabelled(first, out(f"mislabelled_{experiment}"), top_k),
                [first] if first else [], missing)

    clean_sweep = experiment_runs(runs_root, *CLEAN_SWEEP_EXPERIMENTS, methods=("l2rw",))
    if experiment_runs(runs_root, CLEAN_SWEEP_EXPERIMENTS[0]):
        clean_sweep += experiment_runs(runs_root, CLEAN_SWEEP_EXPERIMENTS[1],
                                       methods=("baseline",))
    else:
        clean_sweep = []  # the main setting alone is no sweep
    attempt("clean_set_sweep.png",
            lambda: sweep_figure(clean_sweep, out("clean_set_sweep.png"), "clean_set"),
            clean_sweep)
    noise_sweep = []
    if experiment_runs(runs_root, NOISE_SWEEP_EXPERIMENTS[0]):
        noise_sweep = experiment_runs(runs_root, *NOISE_SWEEP_EXPERIMENTS,
                                      methods=("baseline", "l2rw"))
    attempt("noise_sweep.png",
            lambda: sweep_figure(noise_sweep, out("noise_sweep.png"), "noise_ratio"),
            noise_sweep)

    everything = find_runs(runs_root)
    attempt("results_table.md",
            lambda: results_table(everything, out("results_table.md"), scale), everything)
    attempt("runs.csv", lambda: runs_index(runs_root, out("runs.csv")), everything)
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m l2rw_tf.plots",
        description="Figures and tables from run directories (see the module docstring).")
    parser.add_argument("--runs", default="runs/cpu", help="root of the run directories, laid "
                        "out RUNS/<experiment>/<run>/ by run_experiments.sh (default runs/cpu)")
    parser.add_argument("--out", default=None, help="output directory (default results/<scale>)")
    parser.add_argument("--scale", default=None, help="scale named in the table (default: the "
                        "last component of --runs, e.g. cpu)")
    parser.add_argument("--run", default=None, help="only export one finished noisy-task run: "
                        "its weight histogram and ranked examples, into --out")
    parser.add_argument("--top_k", type=int, default=1000, help="rows of ranked_examples.csv "
                        "(0: all; default 1000)")
    args = parser.parse_args(argv)
    scale = args.scale or os.path.basename(os.path.normpath(args.runs))
    out_dir = args.out or os.path.join("results", scale)
    top_k = args.top_k or None
    try:
        if args.run is not None:
            weight_histogram(args.run, os.path.join(out_dir, "weights.png"))
            summary = export_mislabelled(args.run, out_dir, top_k)
            print("\n".join(summary_lines(summary)))
            return 0
        if not os.path.isdir(args.runs):
            raise ValueError(f"--runs={args.runs} is not a directory")
        return 1 if regenerate(args.runs, out_dir, scale, top_k) else 0
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
