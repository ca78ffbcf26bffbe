"""Collects finished runs into a summary: one row per run and mean ± std per group.

    python -m l2rw_tf.report runs/mnist_imbalance --out results/mnist_imbalance

reads every `result.json` (with its `flags.json`) below the given directories and writes
`runs.csv` (one row per run) and `summary.csv` / `summary.md` (grouped by every flag that is not
the seed).
"""
import csv
import glob
import json
import math
import os
import statistics
import sys

from l2rw_tf.config import read_record

METRICS = ("test_accuracy", "train_accuracy", "zero_weight_fraction", "minority_weight_mass",
           "weight_noisy", "weight_clean", "train_seconds")


def load_runs(roots):
    runs = []
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "**", "result.json"), recursive=True)):
            run_dir = os.path.dirname(path)
            with open(path) as f:
                result = json.load(f)
            run_flags = read_record(run_dir)
            runs.append({"run_dir": run_dir, **run_flags,
                         **{k: result.get(k) for k in METRICS}})
    return runs


def seed_name(run):
    """"<seed>", or "<seed>/<train_seed>" for a run whose training was seeded apart."""
    if run.get("train_seed") is None:
        return str(run["seed"])
    return f"{run['seed']}/{run['train_seed']}"


def summarize(runs):
    """Groups runs by all flags except the seeds (--seed, --train_seed); mean and sample
    standard deviation (n - 1) of each metric, as plots.mean_std."""
    flag_keys = [k for k in runs[0]  # (where the data was read from is no part of the setting)
                 if k not in METRICS and k not in ("run_dir", "seed", "train_seed", "data_dir")]
    varying = [k for k in flag_keys if len({json.dumps(r.get(k)) for r in runs}) > 1]
    groups = {}
    for r in runs:
        groups.setdefault(tuple(json.dumps(r.get(k)) for k in varying), []).append(r)
    rows = []
    for key, members in groups.items():
        row = {k: json.loads(v) for k, v in zip(varying, key)}
        row["seeds"] = " ".join(seed_name(r) for r in members)
        for metric in METRICS:
            values = [r[metric] for r in members
                      if r.get(metric) is not None and not math.isnan(r[metric])]
            if values:
                row[f"{metric}_mean"] = statistics.fmean(values)
                row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def write_csv(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=keys)
        out.writeheader()
        out.writerows(rows)


def markdown(rows):
    group_keys = [k for k in rows[0] if not k.endswith(("_mean", "_std")) and k != "per_seed"]
    lines = ["| " + " | ".join(group_keys) + " | test accuracy (%) | per seed |",
             "|" + "---|" * (len(group_keys) + 2)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]) for k in group_keys)
                     + f" | {100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f}"
                     + f" | {r.get('per_seed', '')} |")
    return "\n".join(lines) + "\n"


def main(argv):
    args = argv[1:]
    if "--out" not in args or args.index("--out") == len(args) - 1:
        print("usage: python -m l2rw_tf.report RUN_DIR [RUN_DIR ...] --out OUT_DIR",
              file=sys.stderr)
        return 2
    i = args.index("--out")
    out, roots = args[i + 1], args[:i] + args[i + 2:]
    runs = load_runs(roots)
    if not runs:
        print(f"error: no finished runs (result.json) under {roots}", file=sys.stderr)
        return 2
    rows = summarize(runs)
    for row in rows:  # the individual seeds' accuracies, for the markdown table
        members = [r for r in runs if all(r.get(k) == row[k] for k in row
                                          if not k.endswith(("_mean", "_std")) and k != "seeds")]
        row["per_seed"] = ", ".join(f"{100 * r['test_accuracy']:.1f}" for r in members)
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, "runs.csv"), runs)
    write_csv(os.path.join(out, "summary.csv"), rows)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
