"""Figures, table and exports of l2rw_tf.plots on small synthetic run directories, and the run
list of run_experiments.sh (dry run, and a real run with a stub `python`). No TensorFlow, no
training: a few seconds."""
import csv
import json
import math
import os
import shlex
import statistics
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from l2rw_tf import plots

JPEG = "folder:../shared/datasets/cifar10_jpeg"
# t_{0.975, df} for df = 1..4, from a table (not from plots.py).
T = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


# ---------------------------------------------------------------------------------------------
# Synthetic run directories, in the format the CLI writes.

def imbalance_flags(method, seed, pos_ratio):
    return l2rw_only({
        "task": "imbalance", "dataset": "mnist", "model": "lenet", "method": method,
        "meta_grad": "layerwise", "seed": seed, "num_steps": 1000, "batch_size": 100,
        "clean_batch_size": None, "lr": 0.001, "lr_boundaries": None, "lr_values": None,
        "momentum": 0.9, "weight_decay": 0.0, "clean_weight_decay": True, "hard_mining_pool": 500,
        "pos_ratio": pos_ratio, "ntrain": 5000, "nval": 10, "ntest": 500})


def l2rw_only(flags):
    """As `config.record` records them: --meta_grad only for L2RW runs."""
    if flags["method"] != "l2rw":
        del flags["meta_grad"]
    return flags


def noisy_flags(method, seed, dataset="cifar10", noise="uniform", ratio=0.4, model="wrn28_10",
                num_steps=60000, num_clean=1000, clean_per_class=None, **extra):
    flags = {"task": "noisy", "dataset": dataset, "model": model, "method": method,
             "meta_grad": "jvp", "seed": seed, "num_steps": num_steps, "batch_size": 100,
             "clean_batch_size": 100, "lr": 0.1, "lr_boundaries": [40000, 50000],
             "lr_values": [0.01, 0.001], "momentum": 0.9, "weight_decay": 1e-4,
             "clean_weight_decay": True, "noise": noise, "ratio": ratio,
             "noise_semantics": "paper", "num_clean": num_clean,
             "clean_per_class": clean_per_class, "num_hyper_val": 5000,
             "num_train_subset": None, "augment": True, "dropout": None, "units": None,
             "width": None, "finetune_from": None, "finetune_lr": 0.001}
    flags.update(extra)
    return l2rw_only(flags)


def make_run(run_dir, flags, final_accuracy, curve=None, finished=True, weights=None):
    """A run directory: flags.json, metrics.csv (test accuracy `curve` at steps 100, 200, ...,
    ending at `final_accuracy`), result.json if `finished`, example_weights.csv if `weights`."""
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "flags.json"), "w") as f:
        json.dump(flags, f)
    curve = list(curve or [final_accuracy / 2]) + [final_accuracy]
    accuracy_columns = (["test_accuracy", "train_accuracy"] if flags["task"] == "imbalance" else
                        ["test_accuracy", "hyper_val_clean_accuracy",
                         "hyper_val_noisy_accuracy", "train_corrupted_accuracy"])
    rows = []
    for i, accuracy in enumerate(curve):
        row = {"step": 100 * (i + 1), "lr": 0.1, "loss": 1.0, "mean_loss": 1.0,
               "zero_weight_fraction": 0.5, "minority_weight_mass": "nan",
               "weight_noisy": 0.1, "weight_clean": 0.9, "test_accuracy": accuracy}
        row.update({c: 0.5 for c in accuracy_columns[1:]})
        rows.append(row)
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(rows)
    if finished:
        result = {k: float(v) for k, v in rows[-1].items()}
        result.update(train_seconds=1.0, traces=1, data={"dataset": "x"})
        if flags["task"] == "noisy":
            result["data"]["clean"] = (flags["num_clean"] or 10 * flags["clean_per_class"])
        with open(os.path.join(run_dir, "result.json"), "w") as f:
            json.dump(result, f)
    if weights is not None:
        with open(os.path.join(run_dir, "example_weights.csv"), "w", newline="") as f:
            # train.py's columns; label_probability only if the rows have it (newer runs).
            out = csv.DictWriter(f, fieldnames=list(weights[0]))
            out.writeheader()
            out.writerows(weights)


def example_weights(num=2000, noisy_every=5, noisy_high=50):
    """Examples i = 0..num-1, corrupted when i % noisy_every == 0. Corrupted examples get mean
    weight 0 (at zero 90% of the time), except the last `noisy_high` of them (weight 2); clean
    ones weight 0.5 + i/num. Example 1 was never in a batch (nan)."""
    noisy = [i for i in range(num) if i % noisy_every == 0]
    high = set(noisy[-noisy_high:])
    rows = []
    for i in range(num):
        is_noisy = i % noisy_every == 0
        weight = (2.0 if i in high else 0.0) if is_noisy else 0.5 + i / num
        rows.append({"index": i, "label": 3 if is_noisy else i % 10, "true_label": i % 10,
                     "is_noisy": int(is_noisy), "times_seen": 0 if i == 1 else 7,
                     "mean_weight": "nan" if i == 1 else weight,
                     "zero_fraction": "nan" if i == 1 else (0.9 if weight == 0 else 0.0)})
    return rows


def accuracy_of(*key):
    """A deterministic, distinct final accuracy per (method, seed, ...)."""
    return 0.5 + (sum(ord(c) for c in json.dumps(key)) % 400) / 1000


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """Every experiment of run_experiments.sh, small: 3 seeds, a few points each."""
    root = tmp_path_factory.mktemp("runs")
    for p in plots.POS_RATIOS:
        for m in plots.IMBALANCE_METHODS:
            for s in (0, 56789, 13578):
                make_run(root / "mnist_imbalance" / f"{m}_p{p}_seed{s}", imbalance_flags(m, s, p),
                         accuracy_of(m, s, p))
    weights = example_weights()
    settings = {
        "mnist_background": dict(dataset="mnist", noise="background", model="lenet",
                                 num_steps=4000, num_clean=None, clean_per_class=10),
        "cifar10_background": dict(dataset=JPEG, noise="background", model="resnet",
                                   num_steps=2000, num_clean=None, clean_per_class=10),
        "cifar10_uniform": dict(dataset=JPEG, noise="uniform", model="resnet", num_steps=2000),
    }
    for experiment, setting in settings.items():
        for m in ("baseline", "l2rw"):
            for s in (0, 6, 28):
                make_run(root / experiment / f"{m}_seed{s}", noisy_flags(m, s, **setting),
                         accuracy_of(experiment, m, s), curve=[0.3, 0.4 + s / 1000],
                         weights=weights if m == "l2rw" else None)
    for per_class in (1, 5, 50):
        make_run(root / "cifar10_background_clean_sweep" / f"l2rw_cpc{per_class}_seed0",
                 noisy_flags("l2rw", 0, **dict(settings["cifar10_background"],
                                               clean_per_class=per_class)),
                 accuracy_of("cpc", per_class))
    for ratio in (0.0, 0.2):
        for m in ("baseline", "l2rw"):
            make_run(root / "cifar10_uniform_noise_sweep" / f"{m}_ratio{ratio}_seed0",
                     noisy_flags(m, 0, **dict(settings["cifar10_uniform"], ratio=ratio)),
                     accuracy_of("ratio", m, ratio))
    # An interrupted run: left out of everything, never a crash.
    make_run(root / "cifar10_uniform" / "l2rw_seed184",
             noisy_flags("l2rw", 184, **settings["cifar10_uniform"]), 0.1, finished=False)
    return root


@pytest.fixture(scope="module")
def results(runs_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert plots.main([f"--runs={runs_root}", f"--out={out}", "--scale=cpu"]) == 0
    return out


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Figures and files.

def test_every_figure_and_table_is_written(results):
    figures = ["mnist_imbalance", "clean_set_sweep", "noise_sweep"] + [
        f"{kind}_{e}" for kind in ("curves", "weights") for e in plots.CURVE_EXPERIMENTS]
    for name in figures:
        assert (results / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert read_rows(results / f"{name}.csv"), name
    for e in plots.CURVE_EXPERIMENTS:
        assert read_rows(results / f"mislabelled_{e}" / "ranked_examples.csv")
        assert json.loads((results / f"mislabelled_{e}" / "mislabel_precision.json").read_text())
    assert "| dataset |" in (results / "results_table.md").read_text()
    runs = read_rows(results / "runs.csv")
    assert len(runs) == 90 + 18 + 3 + 4 + 1
    assert sum(r["finished"] == "0" for r in runs) == 1


def test_imbalance_csv_is_mean_and_std_of_test_error(results):
    rows = read_rows(results / "mnist_imbalance.csv")
    assert len(rows) == 5 * 6
    assert [r["method"] for r in rows[::5]] == list(plots.IMBALANCE_METHODS)
    for row in rows:
        p, m = float(row["pos_ratio"]), row["method"]
        errors = [100 * (1 - accuracy_of(m, s, p)) for s in (0, 56789, 13578)]
        assert int(row["n_seeds"]) == 3
        assert float(row["test_error_mean"]) == pytest.approx(statistics.mean(errors))
        assert float(row["test_error_std"]) == pytest.approx(statistics.stdev(errors))


def test_curves_average_the_seeds_at_each_step(results):
    rows = read_rows(results / "curves_cifar10_uniform.csv")
    assert {r["method"] for r in rows} == {"Baseline", "L2RW"}
    l2rw = [r for r in rows if r["method"] == "L2RW"]
    assert [int(r["step"]) for r in l2rw] == [100, 200, 300]  # the unfinished run is left out
    assert all(int(r["n_seeds"]) == 3 for r in l2rw)
    assert float(l2rw[1]["test_accuracy_mean"]) == pytest.approx(
        statistics.mean([100 * (0.4 + s / 1000) for s in (0, 6, 28)]))
    assert float(l2rw[2]["test_accuracy_mean"]) == pytest.approx(
        statistics.mean([100 * accuracy_of("cifar10_uniform", "l2rw", s) for s in (0, 6, 28)]))


def test_weight_histogram_counts_clean_and_corrupted_examples(tmp_path):
    make_run(tmp_path / "run", noisy_flags("l2rw", 0), 0.8, weights=example_weights())
    rows = plots.weight_histogram(str(tmp_path / "run"), str(tmp_path / "w.png"))
    assert (tmp_path / "w.png").exists() and read_rows(tmp_path / "w.csv")
    # 2000 examples, 400 corrupted, example 1 (clean) never seen.
    assert sum(r["corrupted_count"] for r in rows) == 400
    assert sum(r["clean_count"] for r in rows) == 1599
    assert rows[0]["corrupted_count"] == 350 and rows[0]["clean_count"] == 0  # weight 0


def test_precision_of_the_mislabelled_ranking(tmp_path):
    """An old example_weights.csv (no label_probability column) still ranks and reports."""
    make_run(tmp_path / "run", noisy_flags("l2rw", 0), 0.8, weights=example_weights())
    summary = plots.export_mislabelled(str(tmp_path / "run"), str(tmp_path / "out"), top_k=600)
    # Ranked: the 350 corrupted at weight 0 (one tie), then clean ones (0.5 + i/2000), the 50
    # corrupted at weight 2 last; example 1 (never seen) is not ranked.
    assert summary["num_examples"] == 2000 and summary["num_ranked"] == 1999
    assert summary["num_corrupted"] == 400
    assert summary["precision_at"] == {"100": 1.0, "500": 350 / 500, "1000": 350 / 1000,
                                       "400": 350 / 400}
    assert summary["chance_precision"] == summary["corrupted_fraction"] == 400 / 1999
    assert summary["recall_at"] == {"100": 100 / 400, "500": 350 / 400, "1000": 350 / 400,
                                    "400": 350 / 400}
    assert summary["zero_weight_group"] == {"size": 350, "num_corrupted": 350,
                                            "corrupted_fraction": 1.0}
    assert summary["secondary_score"] is None
    assert "no label_probability column" in summary["secondary_score_note"]
    assert summary["ranking_key"] == ["mean_weight", "-zero_fraction"]
    # The 350-example tie crosses k = 100 only; every clean weight differs.
    assert summary["tie_across_k"]["100"] == {"first_rank": 1, "last_rank": 350, "size": 350,
                                              "corrupted_fraction": 1.0}
    assert summary["tie_across_k"]["500"] is None and summary["largest_tie_across_k"] == 350
    # One tie of 350 at weight 0, one of the 50 at weight 2, the 1,599 clean ones alone.
    assert summary["largest_tie_group"] == 350 and summary["num_tie_groups"] == 1 + 1 + 1599
    assert json.loads((tmp_path / "out" / "mislabel_precision.json").read_text()) == summary
    ranked = read_rows(tmp_path / "out" / "ranked_examples.csv")
    assert list(ranked[0]) == ["rank", "index", "label", "is_noisy", "mean_weight",
                               "label_probability", "zero_fraction", "flagged",
                               "tie_first_rank", "tie_last_rank"]
    # Without a label probability the order falls back to the weights, and so does the cut:
    # the flagged examples are those at mean weight exactly 0.
    assert summary["order"] == "weight"
    assert summary["flagged"] == {"rule": "mean weight exactly 0", "size": 350,
                                  "num_corrupted": 350, "precision": 1.0, "recall": 350 / 400}
    assert all(r["flagged"] == "1" for r in ranked[:350])
    assert all(r["flagged"] == "0" for r in ranked[350:])
    assert len(ranked) == 600 and [int(r["rank"]) for r in ranked] == list(range(1, 601))
    assert all(r["label_probability"] == "" for r in ranked)
    assert {int(r["index"]) for r in ranked[:350]} == set(range(0, 1750, 5))
    assert [int(r["index"]) for r in ranked[:350]] != sorted(int(r["index"]) for r in ranked[:350])
    assert all((r["tie_first_rank"], r["tie_last_rank"]) == ("1", "350") for r in ranked[:350])
    assert [int(r["index"]) for r in ranked[350:352]] == [2, 3]  # then the lightest clean ones
    assert (ranked[350]["tie_first_rank"], ranked[350]["tie_last_rank"]) == ("351", "351")
    weights = [float(r["mean_weight"]) for r in ranked]
    assert weights == sorted(weights)


def constant_weights(num, corrupted):
    """A baseline's example_weights.csv: every mean weight 1, never zero, in the old format (no
    label_probability); the examples of `corrupted` (indices) have a wrong label."""
    return [{"index": i, "label": (i + 1) % 10 if i in corrupted else i % 10,
             "true_label": i % 10, "is_noisy": int(i in corrupted), "times_seen": 7,
             "mean_weight": 1.0, "zero_fraction": 0.0} for i in range(num)]


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_ranking_that_ignores_the_weights_scores_chance(tmp_path, where):
    """All weights equal (a baseline) and 40% of labels corrupted, as noise.corrupt_labels does
    it: the first indices of the pool, or (so that no index direction helps) the last ones.
    The scores say nothing, so precision@k is chance and recall@k is k / n, at every k."""
    num = 2000
    corrupted = set(range(800)) if where == "first" else set(range(num - 800, num))
    make_run(tmp_path / "run", noisy_flags("baseline", 0), 0.8,
             weights=constant_weights(num, corrupted))
    summary = plots.export_mislabelled(str(tmp_path / "run"), str(tmp_path / "out"))
    assert sorted(summary["precision_at"], key=int) == ["100", "500", "800", "1000"]
    for k, precision in summary["precision_at"].items():
        assert precision == pytest.approx(0.4, abs=1e-12), k
    assert summary["chance_precision"] == 0.4
    for k in summary["precision_at"]:
        assert summary["recall_at"][k] == pytest.approx(int(k) / num, abs=1e-12), k
        assert summary["tie_across_k"][k]["size"] == num
    assert summary["largest_tie_across_k"] == summary["largest_tie_group"] == num
    assert summary["zero_weight_group"] == {"size": 0, "num_corrupted": 0,
                                            "corrupted_fraction": None}


def test_precision_does_not_depend_on_the_index(tmp_path):
    """An L2RW-like run: 1,500 examples at mean weight exactly 0 (1,000 of them corrupted), then
    clean ones with distinct weights. Numbering the examples backwards changes no number."""
    rows = []
    for i in range(3000):
        zero = i < 1500
        rows.append({"index": i, "label": 0, "true_label": 0 if i >= 1000 else 1,
                     "is_noisy": int(i < 1000), "times_seen": 5,
                     "mean_weight": 0.0 if zero else 0.5 + i / 3000,
                     "zero_fraction": 1.0 if zero else 0.2})
    backwards = [dict(r, index=2999 - r["index"]) for r in reversed(rows)]
    summaries = []
    for name, weights in (("forward", rows), ("backward", backwards)):
        make_run(tmp_path / name, noisy_flags("l2rw", 0), 0.8, weights=weights)
        summaries.append(plots.export_mislabelled(str(tmp_path / name),
                                                  str(tmp_path / f"{name}_out")))
    forward, backward = summaries
    assert forward["precision_at"] == backward["precision_at"]
    # Inside the zero-weight tie: its corrupted fraction, 2/3, at every k it covers.
    assert forward["precision_at"]["100"] == pytest.approx(2 / 3)
    assert forward["precision_at"]["1000"] == pytest.approx(2 / 3)
    assert forward["recall_at"]["1000"] == pytest.approx(2 / 3)
    assert forward["zero_weight_group"] == {"size": 1500, "num_corrupted": 1000,
                                            "corrupted_fraction": pytest.approx(2 / 3)}
    assert forward["largest_tie_across_k"] == 1500


@pytest.mark.parametrize("order", ["evidence", "weight"])
def test_label_probability_breaks_the_tie_at_weight_zero(tmp_path, order):
    """With the final model's probability of the given label, the examples at mean weight 0 are
    ranked by it: the corrupted ones, which the model doubts, first, though their indices come
    last. An exact tie in the probability too is still counted at random order. Here the default
    order (evidence: the probability and the aligned fraction as added log-odds) and the weight
    order agree: the weights split the examples in two and the probability orders each half."""
    rows = []
    for i in range(2000):
        zero = i < 1000
        noisy = 400 <= i < 1000          # the last 600 of the zero-weight group
        probability = 0.01 + i / 100_000 if noisy else 0.5 + i / 10_000
        rows.append({"index": i, "label": 1 if noisy else 0, "true_label": 0,
                     "is_noisy": int(noisy), "times_seen": 5,
                     "mean_weight": 0.0 if zero else 0.5 + i / 2000,
                     "zero_fraction": 1.0 if zero else 0.0, "label_probability": probability})
    for i in (0, 1, 998, 999):           # two clean, two corrupted: one tie at probability 0
        rows[i]["label_probability"] = 0.0
    make_run(tmp_path / "run", noisy_flags("l2rw", 0), 0.8, weights=rows)
    summary = plots.export_mislabelled(str(tmp_path / "run"), str(tmp_path / "out"),
                                       order=None if order == "evidence" else order)
    assert summary["order"] == order
    assert summary["num_corrupted"] == 600
    # Ranks 1-4: the probability-0 tie (half corrupted), then the other 598 corrupted ones.
    assert summary["precision_at"]["100"] == pytest.approx(98 / 100)
    assert summary["precision_at"]["600"] == pytest.approx(598 / 600)
    assert summary["secondary_score"] == "label_probability"
    assert summary["ranking_key"] == (
        ["evidence", "mean_weight", "-zero_fraction"] if order == "evidence" else
        ["mean_weight", "label_probability", "-zero_fraction"])
    # The cut: evidence below 0 flags the zero-weight group (logit(1/7) = -1.79 outweighs the
    # clean ones' logit(0.5 + i/10,000) <= 0.16) and no example seen at positive weight.
    assert summary["flagged"]["size"] == 1000 and summary["flagged"]["num_corrupted"] == 600
    assert summary["recall_at"]["600"] == pytest.approx(598 / 600)
    assert summary["precision_at"]["1000"] == pytest.approx(600 / 1000)
    assert summary["zero_weight_group"]["size"] == 1000
    assert summary["largest_tie_across_k"] == 0 and summary["largest_tie_group"] == 4
    ranked = read_rows(tmp_path / "out" / "ranked_examples.csv")
    assert {int(r["index"]) for r in ranked[:4]} == {0, 1, 998, 999}
    assert all((r["tie_first_rank"], r["tie_last_rank"]) == ("1", "4") for r in ranked[:4])
    assert [int(r["index"]) for r in ranked[4:602]] == list(range(400, 998))
    probabilities = [float(r["label_probability"]) for r in ranked[:1000]]
    assert probabilities == sorted(probabilities)


def test_tie_aware_precision_helpers():
    noisy = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    groups = plots.tie_groups([np.array([0., 0., 1., 1., 1., 1., 2., np.nan])])
    assert list(groups) == [0, 0, 1, 1, 1, 1, 2, 3]
    assert plots.expected_hits(noisy, 3, groups) == pytest.approx(2 + 1 / 4)
    assert plots.expected_hits(noisy, 6, groups) == 3
    assert plots.precision_at(noisy, 3) == pytest.approx(2 / 3)  # no groups: the plain count
    assert plots.tie_across(groups, 3) == (3, 6) and plots.tie_across(groups, 2) is None
    # Two missing scores are one tie; a second key column splits a group.
    assert list(plots.tie_groups([np.array([np.nan, np.nan, 1.]),
                                  np.array([0., 1., 1.])])) == [0, 1, 2]
    assert list(plots.tie_groups([np.array([np.nan, np.nan])])) == [0, 0]
    # A label_probability column without a value is no secondary score.
    assert not plots.has_secondary_score({"label_probability": np.array([np.nan, np.nan])})
    assert plots.has_secondary_score({"label_probability": np.array([np.nan, 0.5])})


def test_run_mode_prints_precision_and_recall(tmp_path, capsys):
    make_run(tmp_path / "run", noisy_flags("l2rw", 0), 0.8, weights=example_weights())
    assert plots.main([f"--run={tmp_path / 'run'}", f"--out={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr().out
    assert "precision@100 1.000  recall@100 0.250" in out
    assert "precision@400 0.875  recall@400 0.875" in out
    assert "chance (corrupted fraction): 0.200" in out
    assert "mean weight exactly 0: 350 examples, 1.000 corrupted" in out
    assert "secondary score: none" in out
    assert (tmp_path / "out" / "weights.png").exists()
    assert (tmp_path / "out" / "mislabel_precision.json").exists()


def test_sweeps(results):
    noise = read_rows(results / "noise_sweep.csv")
    # ratio 0.4 comes from the main setting: seed 0 only, the one every point has.
    points = {(r["method"], float(r["x"])): r for r in noise}
    assert sorted(points) == [(m, x) for m in ("baseline", "l2rw") for x in (0.0, 20.0, 40.0)]
    assert all(int(r["n_seeds"]) == 1 for r in noise)
    assert float(points["l2rw", 40.0]["test_accuracy_mean"]) == pytest.approx(
        100 * accuracy_of("cifar10_uniform", "l2rw", 0))
    assert float(points["baseline", 20.0]["test_accuracy_mean"]) == pytest.approx(
        100 * accuracy_of("ratio", "baseline", 0.2))
    clean = read_rows(results / "clean_set_sweep.csv")
    l2rw = [r for r in clean if r["method"] == "l2rw"]
    assert [float(r["x"]) for r in l2rw] == [10, 50, 100, 500]
    # The baseline, at the main setting only (a reference line), over all its seeds.
    baseline = [r for r in clean if r["method"] == "baseline"]
    assert len(baseline) == 1 and int(baseline[0]["n_seeds"]) == 3


def test_sweep_refuses_mixed_settings(tmp_path):
    make_run(tmp_path / "a", noisy_flags("l2rw", 0, ratio=0.2), 0.8)
    make_run(tmp_path / "b", noisy_flags("l2rw", 0, ratio=0.4, model="resnet32"), 0.7)
    with pytest.raises(ValueError, match="--model"):
        plots.sweep_figure([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "s.png"),
                           "noise_ratio")


# ---------------------------------------------------------------------------------------------
# The results table.

def table_rows(out_path):
    return {(r["dataset"], r["setting"], r["method"]): r
            for r in read_rows(os.path.splitext(out_path)[0] + ".csv")}


def test_table_mean_and_ci_are_those_of_the_seeds(tmp_path):
    accuracies = {"l2rw": [0.8692, 0.8701, 0.8650, 0.8733, 0.8688],  # 5 seeds
                  "baseline": [0.70, 0.66, 0.68],                       # 3 seeds
                  "random": [0.80, 0.84],                                # 2 seeds
                  "finetune": [0.7866]}                                  # 1 seed
    run_dirs = []
    for method, values in accuracies.items():
        for seed, accuracy in zip((0, 6, 28, 184, 229), values):
            extra = {"num_steps": 5000, "finetune_from": f"runs/baseline_seed{seed}"} \
                if method == "finetune" else {}
            run_dirs.append(str(tmp_path / f"{method}_{seed}"))
            make_run(run_dirs[-1], noisy_flags(method, seed, **extra), accuracy)
    out = str(tmp_path / "table.md")
    plots.results_table(run_dirs, out, scale="paper")
    rows = table_rows(out)
    markdown = open(out).read()
    for method, values in accuracies.items():
        row = rows["CIFAR-10", "UniformFlip 40%, 1,000 clean", method]
        percent = [100 * v for v in values]
        mean = sum(percent) / len(percent)
        assert float(row["test_accuracy_mean"]) == pytest.approx(mean)
        assert int(row["n_seeds"]) == len(values) and row["scale"] == "paper"
        if len(values) == 1:
            assert row["test_accuracy_ci95"] == ""
            assert f"{mean:.2f} (n=1)" in markdown
        else:
            ci = T[len(values) - 1] * statistics.stdev(percent) / math.sqrt(len(values))
            assert float(row["test_accuracy_ci95"]) == pytest.approx(ci, rel=1e-4)
            assert f"{mean:.2f} ± {ci:.2f}" in markdown
    # The paper's numbers (reference §4), comparable: the paper's own setting.
    assert rows["CIFAR-10", "UniformFlip 40%, 1,000 clean", "l2rw"]["paper_mean"] == "86.92"
    assert rows["CIFAR-10", "UniformFlip 40%, 1,000 clean", "l2rw"]["paper_ci95"] == "0.19"
    assert rows["CIFAR-10", "UniformFlip 40%, 1,000 clean", "finetune"]["paper_mean"] == "78.66"
    assert all(r["comparable_to_paper"] == "yes" for r in rows.values())
    assert "| 86.92 ± 0.19 | yes |" in markdown


def test_table_never_calls_the_jpeg_copy_cifar10(results):
    rows = table_rows(results / "results_table.md")
    datasets = {key[0] for key in rows}
    assert datasets == {"MNIST", "CIFAR-10 (JPEG copy)"}
    row = rows["CIFAR-10 (JPEG copy)", "UniformFlip 40%, 1,000 clean", "l2rw"]
    assert row["paper_mean"] == "86.92"
    assert row["comparable_to_paper"].startswith("no: CIFAR-10 (JPEG copy), not the paper's data")
    assert "model resnet (paper wrn28_10)" in row["comparable_to_paper"]
    # Its mean over the three finished seeds (the unfinished seed 184 is left out).
    expected = [100 * accuracy_of("cifar10_uniform", "l2rw", s) for s in (0, 6, 28)]
    assert float(row["test_accuracy_mean"]) == pytest.approx(statistics.mean(expected))
    assert float(row["test_accuracy_ci95"]) == pytest.approx(
        T[2] * statistics.stdev(expected) / math.sqrt(3), rel=1e-4)
    markdown = (results / "results_table.md").read_text()
    assert "| CIFAR-10 |" not in markdown
    # Imbalance rows have no paper number (Fig. 2 prints none).
    assert rows["MNIST", "4 vs 9, 99.5% nines", "l2rw"]["paper_mean"] == ""


def test_missing_runs_skip_figures_with_a_note(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert plots.main([f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}"]) == 0
    assert "skipped mnist_imbalance.png: no runs found" in capsys.readouterr().out
    assert plots.main([f"--runs={tmp_path / 'nothere'}", f"--out={tmp_path / 'out'}"]) == 2


def test_plots_does_not_import_tensorflow():
    code = "import sys, l2rw_tf.plots; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# ---------------------------------------------------------------------------------------------
# run_experiments.sh

def script(*args, **kwargs):
    return subprocess.run(["bash", str(REPO / "run_experiments.sh"), *args], capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_paper_dry_run_lists_the_reference_settings():
    result = script("--scale=paper", "--dry_run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("python -m l2rw_tf.main --flagfile=configs/") for line in lines)
    # Fig. 2: 5 ratios x 6 methods x 10 seeds; MNIST BackgroundFlip 2 x 3; Table 1: 2 x 5 x 5;
    # Table 2: 2 x 6 x 5; Fig. 4: 6 clean sizes x 5 seeds (10/class is Table 2's run);
    # Fig. 5: 5 ratios x 2 methods x 5 seeds (0.4 is Table 1's).
    assert len(lines) == 300 + 6 + 50 + 60 + 30 + 50 == 496
    assert len(set(lines)) == len(lines)
    assert ("python -m l2rw_tf.main --flagfile=configs/mnist_imbalance.flags --method=l2rw "
            "--seed=0 --pos_ratio=0.9 --logdir=runs/paper/mnist_imbalance/l2rw_p0.9_seed0"
            ) == lines[0]
    imbalance = [line for line in lines if "mnist_imbalance.flags" in line]
    assert {line.split("--seed=")[1].split()[0] for line in imbalance} == {
        str(t * 123456789 % 100000) for t in range(10)}
    baseline = ("python -m l2rw_tf.main --flagfile=configs/cifar10_background_resnet32.flags "
                "--method=baseline --seed=184 "
                "--logdir=runs/paper/cifar10_background/baseline_seed184")
    finetune = ("python -m l2rw_tf.main --flagfile=configs/cifar10_background_resnet32.flags "
                "--method=finetune --seed=184 --num_steps=5000 "
                "--finetune_from=runs/paper/cifar10_background/baseline_seed184 "
                "--logdir=runs/paper/cifar10_background/finetune_seed184")
    assert lines.index(baseline) < lines.index(finetune)
    assert ("python -m l2rw_tf.main --flagfile=configs/cifar100_uniform_wrn28_10.flags "
            "--method=clean_only --seed=6 --num_steps=2000 "
            "--logdir=runs/paper/cifar100_uniform/clean_only_seed6") in lines
    for flagfile in ("cifar10_background_resnet32", "cifar100_background_resnet32",
                     "cifar10_uniform_wrn28_10", "cifar100_uniform_wrn28_10"):
        table = [line for line in lines if f"configs/{flagfile}.flags" in line
                 and "_sweep/" not in line]
        methods = ["baseline", "random", "l2rw", "clean_only", "finetune"] + (
            ["weighted"] if "background" in flagfile else [])
        assert len(table) == 5 * len(methods)
        for method in methods:
            seeds = [line.split("--seed=")[1].split()[0] for line in table
                     if f"--method={method} " in line]
            assert seeds == ["0", "6", "28", "184", "229"], (flagfile, method)
    sweep = [line for line in lines if "clean_sweep/" in line]
    assert ("--clean_per_class=1 --clean_batch_size=10 "
            "--logdir=runs/paper/cifar10_background_clean_sweep/l2rw_cpc1_seed0") in sweep[0]
    noise = [line for line in lines if "noise_sweep/" in line]
    assert {line.split("--ratio=")[1].split()[0] for line in noise} == {"0", "0.1", "0.2", "0.3",
                                                                       "0.5"}


def effective_flags(line):
    """The settings one dry-run command trains with: its flagfile, then its own flags."""
    args = shlex.split(line)[3:]
    flagfile = REPO / args[0].removeprefix("--flagfile=")
    settings = {}
    for arg in [l for l in flagfile.read_text().splitlines() if l.startswith("--")] + args[1:]:
        name, _, value = arg[2:].partition("=")
        if not value and name.startswith("no"):
            name, value = name[2:], "false"
        settings[name] = value or "true"
    return settings


# The reference's settings (reference.md sections 2-4), by experiment directory.
REFERENCE = {
    "mnist_imbalance": dict(task="imbalance", dataset="mnist", model="lenet", ntrain="5000",
                            nval="10", ntest="500", batch_size="100", lr="0.001",
                            momentum="0.9", num_steps="8000"),
    "cifar10_uniform": dict(dataset="cifar10", noise="uniform", ratio="0.4", model="wrn28_10",
                            num_clean="1000", num_steps="60000", lr="0.1",
                            lr_boundaries="40000,50000", lr_values="0.01,0.001"),
    "cifar100_uniform": dict(dataset="cifar100", noise="uniform", ratio="0.4", model="wrn28_10",
                             num_clean="1000", num_steps="60000", lr="0.1",
                             lr_boundaries="40000,50000", lr_values="0.01,0.001"),
    "cifar10_background": dict(dataset="cifar10", noise="background", ratio="0.4",
                               model="resnet32", clean_per_class="10", num_steps="80000",
                               lr="0.1", lr_boundaries="40000,60000", lr_values="0.01,0.001"),
    "cifar100_background": dict(dataset="cifar100", noise="background", ratio="0.4",
                                model="resnet32", clean_per_class="10", num_steps="80000",
                                lr="0.1", lr_boundaries="40000,60000", lr_values="0.01,0.001"),
}
CIFAR_COMMON = dict(task="noisy", batch_size="100", clean_batch_size="100", momentum="0.9",
                    weight_decay="1e-4", clean_weight_decay="true", augment="true",
                    num_hyper_val="5000", noise_semantics="paper")


def test_paper_dry_run_matches_the_reference_row_by_row():
    lines = script("--scale=paper", "--dry_run").stdout.splitlines()
    for line in lines:
        got = effective_flags(line)
        experiment, run = got["logdir"].split("/")[-2:]
        method, seed = got["method"], got["seed"]
        assert run.startswith(f"{method}_") and run.endswith(f"_seed{seed}"), line
        base = experiment.removesuffix("_clean_sweep").removesuffix("_noise_sweep")
        if base == "mnist_background":
            assert got["model"] == "lenet" and got["noise"] == "background", line
            assert got["clean_per_class"] == "10" and got["ratio"] == "0.4", line
            continue
        want = dict(REFERENCE[base])
        if base != "mnist_imbalance":
            want.update(CIFAR_COMMON)
            assert seed in {"0", "6", "28", "184", "229"}, line
        if method == "clean_only":
            want["num_steps"] = "2000"               # from scratch on the clean set, lr 0.1
        if method == "finetune":
            want["num_steps"] = "5000"               # lr 1e-3: main's --finetune_lr default
            assert got["finetune_from"].endswith(f"/{experiment}/baseline_seed{seed}"), line
            assert "finetune_lr" not in got
        if method == "weighted":
            assert base.endswith("_background"), line
        if experiment.endswith("_clean_sweep"):
            del want["clean_per_class"]
            per_class = int(got["clean_per_class"])
            assert per_class in {1, 2, 5, 20, 50, 100}, line
            want["clean_batch_size"] = str(min(100, 10 * per_class))
        if experiment.endswith("_noise_sweep"):
            want["ratio"] = got["ratio"]
            assert got["ratio"] in {"0", "0.1", "0.2", "0.3", "0.5"}, line
        assert {k: got.get(k) for k in want} == want, line


def test_cpu_dry_run_and_options():
    result = script("--dry_run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 60 + 4 + 8 + 2 + 4 and len(set(lines)) == len(lines)
    assert all(line.startswith("python -m l2rw_tf.main --flagfile=configs/")
               and "--logdir=runs/cpu/" in line for line in lines)
    assert all("_cpu.flags" in line for line in lines if "mnist_imbalance" not in line)
    assert all("--num_steps=400" in line for line in lines if "mnist_imbalance" in line)
    moved = script("--dry_run", "--runs", "/tmp/elsewhere").stdout.splitlines()
    assert moved[0].endswith("--logdir=/tmp/elsewhere/mnist_imbalance/l2rw_p0.9_seed0")
    bad = script("--scale=gpu", "--dry_run")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --scale=gpu is unknown; choose cpu or paper"


def test_script_runs_every_command_in_order_and_records_them(tmp_path):
    """The real (not dry) path on a copy of the script with stand-in CPU flagfiles, and a stub
    `python` in place of training: the loop, progress lines, logs and commands.txt."""
    checkout = tmp_path / "checkout"
    (checkout / "configs").mkdir(parents=True)
    (checkout / "run_experiments.sh").write_text((REPO / "run_experiments.sh").read_text())
    for name in ("mnist_imbalance", "mnist_background_lenet_cpu", "cifar10_uniform_wrn28_10_cpu"):
        (checkout / "configs" / f"{name}.flags").write_text("--task=noisy\n")
    (checkout / "configs" / "cifar10_background_resnet32_cpu.flags").write_text(
        "--clean_per_class=10\n--clean_batch_size=100\n")
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls.txt\necho trained\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "run_experiments.sh", "--scale=cpu"], cwd=checkout,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert progress[0] == ("[1/78] python -m l2rw_tf.main --flagfile=configs/"
                           "mnist_imbalance.flags --method=l2rw --seed=0 --pos_ratio=0.9 "
                           "--num_steps=400 --eval_interval=100 "
                           "--logdir=runs/cpu/mnist_imbalance/l2rw_p0.9_seed0")
    assert progress[-1] == ("[plots] python -m l2rw_tf.plots --runs=runs/cpu --out=results/cpu "
                            "--scale=cpu")
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 79
    # The flagfile's clean batch of 100 is cut to the 10-image clean set of 1 per class.
    assert any("--clean_per_class=1 --clean_batch_size=10 " in call for call in calls)
    assert (checkout / "runs/cpu/mnist_imbalance/l2rw_p0.9_seed0.log").read_text() == "trained\n"
    recorded = (checkout / "results/cpu/commands.txt").read_text().splitlines()
    assert recorded[0].startswith("# run_experiments.sh --scale=cpu")
    assert [line.removeprefix("python ") for line in recorded if not line.startswith("#")] \
        == calls


def test_script_stops_at_a_failed_run(tmp_path):
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\necho 'error: no data' >&2\nexit 2\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"}
    result = script("--scale=paper", f"--runs={tmp_path}/runs", f"--out={tmp_path}/out", env=env)
    assert result.returncode == 1
    assert "[1/496] FAILED (log: " in result.stderr and "rerun the script" in result.stderr
    assert "error: no data" in result.stdout  # the run's own output, also in its log


def test_parallel_jobs_run_every_command_and_finetune_waits_for_its_baseline(tmp_path):
    """--jobs=3 at paper scale with a stub `python`: every run once, up to three at a time with
    the cores split between them, each finetune run started only after the baseline it loads
    has ended, each run's output in its log."""
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\nlog={tmp_path}/calls.txt\ndir=\n'
                    'for a; do case $a in --logdir=*) dir=${a#--logdir=};; esac; done\n'
                    '[ -n "$dir" ] || exit 0\n'  # the plots command
                    'echo "start $dir $TF_NUM_INTRAOP_THREADS" >> $log\n'
                    # A table's baselines outlast the runs between them and their finetune runs.
                    'case $dir in *_uniform/baseline_*|*_background/baseline_*) sleep 0.5;; '
                    '*) sleep 0.01;; esac\n'
                    'echo "end $dir" >> $log\necho trained\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"}
    env.pop("TF_NUM_INTRAOP_THREADS", None)
    runs, out = tmp_path / "runs", tmp_path / "out"
    result = script("--scale=paper", "--jobs=3", f"--runs={runs}", f"--out={out}", env=env)
    assert result.returncode == 0, result.stderr
    events = [line.split() for line in (tmp_path / "calls.txt").read_text().splitlines()]
    starts = [e[1] for e in events if e[0] == "start"]
    assert len(starts) == len(set(starts)) == 496
    assert sorted(e[1] for e in events if e[0] == "end") == sorted(starts)
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    assert {e[2] for e in events if e[0] == "start"} == {str(max(1, cores // 3))}
    running, ended, most = set(), set(), 0
    for kind, run, *_ in events:
        if kind == "start":
            if "/finetune_" in run:
                assert run.replace("/finetune_", "/baseline_") in ended, run
            running.add(run)
            most = max(most, len(running))
        else:
            running.discard(run)
            ended.add(run)
    assert most == 3
    assert (runs / "cifar10_background/finetune_seed0.log").read_text() == "trained\n"
    assert "[496/496] finished" in result.stdout


def test_bad_jobs_value_is_a_one_line_error():
    bad = script("--jobs=0", "--dry_run")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --jobs=0 must be a positive integer"


def test_imbalance_figure_with_the_original_scripts_step_counts(tmp_path):
    """The original script trains L2RW 4,000 steps and its baseline 8,000: one step count per
    method is one setting (each line says its steps); two within a method are refused."""
    dirs = []
    for method, steps in (("l2rw", 4000), ("baseline", 8000)):
        for p in (0.9, 0.995):
            for seed in (0, 56789):
                flags = {**imbalance_flags(method, seed, p), "num_steps": steps}
                run = tmp_path / "runs" / f"{method}_{p}_{seed}"
                make_run(run, flags, accuracy_of(method, seed, p))
                dirs.append(str(run))
    rows = plots.imbalance_figure(dirs, str(tmp_path / "out"))
    assert [(r["method"], r["num_steps"], r["n_seeds"]) for r in rows] == \
        [("l2rw", 4000, 2)] * 2 + [("baseline", 8000, 2)] * 2
    assert (tmp_path / "out" / "mnist_imbalance.png").exists()
    odd = tmp_path / "runs" / "l2rw_8000"
    make_run(odd, {**imbalance_flags("l2rw", 1, 0.9), "num_steps": 8000}, 0.9)
    with pytest.raises(ValueError, match="--method=l2rw runs take --num_steps 4000, 8000"):
        plots.imbalance_figure(dirs + [str(odd)], str(tmp_path / "out2"))


def test_mnist_imbalance_run_sh_names_sweep_and_redrawn_runs(tmp_path):
    """results/mnist_imbalance/run.sh (issue 18): the Fig. 2 proportions and the --train_seed
    redraws become their own flags and run names; 0.995 keeps the existing names and commands."""
    env = {**os.environ, "DRY_RUN": "1", "SET": "original", "SEEDS": "0 56789",
           "RATIOS": "0.9 0.995", "ARMS": "l2rw:4000 baseline:8000", "RUNS": str(tmp_path)}
    result = subprocess.run(["bash", str(REPO / "results/mnist_imbalance/run.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    flagfile = "python -m l2rw_tf.main --flagfile=configs/mnist_imbalance_original.flags"
    assert set(result.stdout.splitlines()) == {
        f"{flagfile} --method={m} --seed={s} --num_steps={n}{p and ' --pos_ratio=' + p} "
        f"--logdir={tmp_path}/{m}_{n}{p and '_p' + p}_seed{s}"
        for m, n in (("l2rw", 4000), ("baseline", 8000)) for s in (0, 56789) for p in ("0.9", "")}
    env.update(SEEDS="0", RATIOS="0.995", TRAIN_SEEDS="1 2", ARMS="baseline:8000")
    result = subprocess.run(["bash", str(REPO / "results/mnist_imbalance/run.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert set(result.stdout.splitlines()) == {
        f"{flagfile} --method=baseline --seed=0 --num_steps=8000 --train_seed={t} "
        f"--logdir={tmp_path}/baseline_8000_seed0_t{t}" for t in (1, 2)}
