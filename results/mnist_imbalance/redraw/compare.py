"""The port against the original code on the original's own three splits (issue 18).

The original code seeds only its data split: each of its runs on seed s trains on split s with
fresh initial weights and batch order. The port's run of seed s fixes both; with --train_seed=t
(same --seed) it redraws them on the same split. So on the three splits the original measured
(seeds 0, 56789, 13578), the port's runs with --train_seed unset, 1 and 2 are draws of what the
original's runs are draws of, and their spread within a split is the spread of the original's
runs if the two behave alike.

    python results/mnist_imbalance/redraw/compare.py   # after run.sh with TRAIN_SEEDS (README)

writes compare.csv (one row per run) and compare.md (the test) beside this file.
"""
import csv
import json
import math
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..", "..")
SEEDS = (0, 56789, 13578)
TRAIN_SEEDS = (None, 1, 2)
# The authors' code on the three seeds, mean of its three runs (issue 18).
ORIGINAL_MEAN = {"baseline_8000": 80.3, "l2rw_4000": 96.2}
ARM_NAMES = {"baseline_8000": "baseline, 8,000 steps", "l2rw_4000": "L2RW, 4,000 steps"}


def run_dir(arm, seed, train_seed):
    if train_seed is None:
        return os.path.join(ROOT, "runs", "mnist_imbalance_original", f"{arm}_seed{seed}")
    return os.path.join(ROOT, "runs", "mnist_imbalance_redraw", f"{arm}_seed{seed}_t{train_seed}")


def compare(arm, rows):
    """Markdown lines and a summary of one arm's runs against the original's mean."""
    by_split = {s: [r["test_accuracy"] for r in rows if r["seed"] == s] for s in SEEDS}
    lines = [f"### {ARM_NAMES[arm]}", "",
             "| split (--seed) | --train_seed unset / 1 / 2 | mean |", "|---|---|---|"]
    for s, values in by_split.items():
        lines.append(f"| {s} | {' / '.join(f'{v:.1f}' for v in values)} | "
                     f"{statistics.fmean(values):.2f} |" if values else f"| {s} | | |")
    splits = [v for v in by_split.values() if v]  # the splits with runs
    # Pooled within-split variance: the spread that initial weights and batch order alone give.
    dof = sum(len(v) - 1 for v in splits)
    if not dof:
        return lines + ["", "(no redrawn runs yet)"], None
    values = [r["test_accuracy"] for r in rows]
    # One number per split, as the original's mean is one run per split.
    mean = statistics.fmean(statistics.fmean(v) for v in splits)
    within = math.sqrt(sum((x - statistics.fmean(v)) ** 2 for v in splits for x in v) / dof)
    # Under the hypothesis that the original's runs spread as the port's within a split, the
    # variance of the gap is within^2 (1/3 + sum_s 1/n_s / 9): the original's mean of one run per
    # split, the port's mean of its split means (n_s runs on split s).
    se = within * math.sqrt(1 / len(splits) + sum(1 / len(v) for v in splits) / len(splits) ** 2)
    original = ORIGINAL_MEAN[arm]
    gap = mean - original
    try:  # two-sided, Student's t with the within-split degrees of freedom
        from scipy import stats
        p_value = float(2 * stats.t.sf(abs(gap / se), dof))
    except ImportError:
        p_value = None
    summary = {"arm": arm, "runs": len(values), "port_mean_of_split_means": mean,
               "within_split_std": within, "within_split_dof": dof, "original_mean": original,
               "gap": gap, "se_of_gap": se, "gap_in_se": gap / se, "p_value": p_value}
    lines += ["", f"Port, {len(values)} runs on the three splits: mean of the split means "
              f"{mean:.2f}; spread within a split (initial weights and batch order only, pooled "
              f"over the splits, {dof} degrees of freedom): std {within:.2f}. Original code, one "
              f"run per split: {original}. Gap {gap:+.2f} points; standard error of the gap "
              f"{se:.2f} ({gap / se:+.1f} standard errors"
              + (f", two-sided p = {p_value:.3f} by Student's t" if p_value is not None else "")
              + ")."]
    return lines, summary


def main():
    rows, lines, summaries = [], [], []
    for arm in ORIGINAL_MEAN:
        mine = []
        for seed in SEEDS:
            for train_seed in TRAIN_SEEDS:
                path = os.path.join(run_dir(arm, seed, train_seed), "result.json")
                if os.path.exists(path):
                    with open(path) as f:
                        accuracy = 100 * json.load(f)["test_accuracy"]
                    mine.append({"arm": arm, "seed": seed,
                                 "train_seed": "" if train_seed is None else train_seed,
                                 "test_accuracy": accuracy})
        arm_lines, summary = compare(arm, mine)
        rows += mine
        lines += arm_lines + [""]
        if summary:
            summaries.append(summary)
    with open(os.path.join(HERE, "compare.csv"), "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=["arm", "seed", "train_seed", "test_accuracy"])
        out.writeheader()
        out.writerows(rows)
    with open(os.path.join(HERE, "compare.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(HERE, "compare.json"), "w") as f:
        json.dump(summaries, f, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
