"""l2rw_tf.cleanlab_eval: L2RW's mislabel ranking against cleanlab's K-fold ranking."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from l2rw_tf import cleanlab_eval, ranking

FLAGFILE = REPO / "configs" / "mnist_background_lenet_cpu.flags"
TINY = ["--num_train_subset=400", "--num_hyper_val=100", "--num_steps=12",
        "--eval_interval=6", "--checkpoint_interval=6"]


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_scores_honest_about_ties():
    """A score that says nothing (all equal) scores chance, wherever the corrupted examples are;
    a perfect score scores 1."""
    is_noisy = np.zeros(1000, bool)
    is_noisy[:300] = True  # the corrupted block first: an index tie-break would score 1.0
    flat, _, _ = cleanlab_eval.score_ranking([np.zeros(1000)], is_noisy, [100, 300])
    assert flat[100]["precision"] == pytest.approx(0.3)
    assert flat[300]["recall"] == pytest.approx(0.3)
    perfect, _, _ = cleanlab_eval.score_ranking([(~is_noisy).astype(float)], is_noisy, [300])
    assert perfect[300] == {"precision": 1.0, "recall": 1.0}


def test_flagged_set():
    is_noisy = np.array([1, 1, 0, 0], bool)
    assert cleanlab_eval.flagged_set([1, 0, 1, 0], is_noisy) == \
        {"size": 2, "precision": 0.5, "recall": 0.5}
    assert cleanlab_eval.flagged_set([0, 0, 0, 0], is_noisy)["precision"] is None


def test_the_l2rw_ranking_is_the_one_of_label_issues():
    """One ranking pipeline: the default row scores exactly as ranking.rank_examples orders."""
    rng = np.random.default_rng(0)
    n = 500
    is_noisy = rng.random(n) < 0.4
    seen = rng.integers(1, 6, n).astype(float)
    aligned = np.where(is_noisy, rng.binomial(seen.astype(int), 0.3),
                       rng.binomial(seen.astype(int), 0.8))
    columns = {"mean_weight": aligned / seen, "zero_fraction": 1 - aligned / seen,
               "times_seen": seen,
               "label_probability": np.where(is_noisy, rng.uniform(0, 0.7, n),
                                             rng.uniform(0.3, 1, n))}
    rankings = cleanlab_eval.l2rw_rankings(columns)
    assert list(rankings)[0].startswith("L2RW default")
    scores, noisy_ranked, groups = cleanlab_eval.score_ranking(
        list(rankings.values())[0], is_noisy, [100, 200])
    ranked = ranking.rank_examples({**columns, "is_noisy": is_noisy})
    for k in (100, 200):
        assert scores[k]["precision"] == pytest.approx(
            ranking.precision_at(ranked["is_noisy"], k, ranked["tie_group"]))
    assert np.array_equal(noisy_ranked, ranked["is_noisy"])


def test_missing_cleanlab_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    with pytest.raises(cleanlab_eval.UsageError, match=r"pip install -e \"\.\[eval\]\""):
        cleanlab_eval.need_cleanlab()


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    pytest.importorskip("cleanlab")
    root = tmp_path_factory.mktemp("cleanlab_runs")
    for method in ("l2rw", "baseline"):
        result = run("l2rw_tf.main", f"--flagfile={FLAGFILE}", *TINY, f"--method={method}",
                     f"--logdir={root / method}")
        assert result.returncode == 0, result.stderr[-2000:]
    return root


@pytest.mark.slow  # about a minute: two tiny CLI runs, then the folds
def test_end_to_end_then_refuses_to_overwrite_then_reuses_the_folds(tiny_runs, tmp_path):
    out = tmp_path / "out"
    args = [f"--l2rw_run={tiny_runs / 'l2rw'}", f"--baseline_run={tiny_runs / 'baseline'}",
            "--folds=2", f"--out={out}", f"--fold_dir={tmp_path / 'folds'}"]
    result = run("l2rw_tf.cleanlab_eval", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 400 and summary["folds"] == 2
    weights = np.genfromtxt(tiny_runs / "l2rw" / "example_weights.csv", delimiter=",",
                            names=True)
    assert summary["corrupted"] == int(weights["is_noisy"].sum())
    k = str(summary["corrupted"])
    for scores in summary["rankings"].values():
        assert 0.0 <= scores[k]["precision"] <= 1.0
        assert scores[k]["precision"] == pytest.approx(scores[k]["recall"])  # k = #corrupted
    assert [r["held_out"] for r in summary["fold_records"]] == [200, 200]
    assert (out / "summary.md").read_text().startswith("# Label issues")
    assert (out / "precision_curve.csv").read_text().splitlines()[0].startswith("k,")
    assert (out / "precision_curve.png").read_bytes()[:4] == b"\x89PNG"
    # Each fold predicts examples it never trained on: the two held-out halves partition the set.
    held = [np.load(tmp_path / "folds" / f"fold{i}" / "held_out.npz")["held_out"]
            for i in range(2)]
    assert sorted(np.concatenate(held).tolist()) == list(range(400))

    before = (out / "summary.json").read_text()
    again = run("l2rw_tf.cleanlab_eval", *args)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--overwrite" in again.stderr.strip().splitlines()[-1]
    assert (out / "summary.json").read_text() == before

    reused = run("l2rw_tf.cleanlab_eval", *args, "--overwrite")
    assert reused.returncode == 0, reused.stderr[-2000:]
    assert reused.stdout.count("reused") == 2
    assert json.loads((out / "summary.json").read_text())["rankings"] == summary["rankings"]


@pytest.mark.parametrize("extra, message", [
    ([], "--l2rw_run is required"),
    (["--l2rw_run=/nonexistent/run"], "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, extra, message):
    result = run("l2rw_tf.cleanlab_eval", *extra, f"--out={tmp_path / 'out'}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_baseline_of_other_data_is_refused(tiny_runs, tmp_path):
    flags_path = tiny_runs / "baseline" / "flags.json"
    other = tmp_path / "other"
    other.mkdir()
    saved = json.loads(flags_path.read_text())
    (other / "flags.json").write_text(json.dumps({**saved, "seed": 5}))
    (other / "result.json").write_text((tiny_runs / "baseline" / "result.json").read_text())
    result = run("l2rw_tf.cleanlab_eval", f"--l2rw_run={tiny_runs / 'l2rw'}",
                 f"--baseline_run={other}", f"--out={tmp_path / 'out'}")
    assert result.returncode == 2 and "seed" in result.stderr
    assert not os.path.exists(tmp_path / "out")
