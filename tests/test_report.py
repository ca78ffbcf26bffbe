"""l2rw_tf.report: grouping finished runs, mean and sample standard deviation over seeds."""
import pytest

from l2rw_tf import report


def test_std_over_seeds_is_the_sample_one():
    runs = [{"run_dir": f"r{s}", "method": "l2rw", "seed": s, "test_accuracy": a}
            for s, a in [(0, 0.944), (1, 0.948), (2, 0.952)]]
    (row,) = report.summarize(runs)
    assert row["test_accuracy_mean"] == pytest.approx(0.948)
    assert row["test_accuracy_std"] == pytest.approx(0.004)  # n - 1: 0.00327 with n
    assert "94.80 ± 0.40" in report.markdown([row])


def test_a_training_seed_is_a_seed_not_a_setting():
    """Runs that differ only in --train_seed (the same split, other initial weights and batch
    order) are one group; their seeds read <seed>/<train_seed>."""
    runs = [{"run_dir": "a", "method": "baseline", "seed": 0, "train_seed": None,
             "test_accuracy": 0.80},
            {"run_dir": "b", "method": "baseline", "seed": 0, "train_seed": 1,
             "test_accuracy": 0.82},
            {"run_dir": "c", "method": "l2rw", "seed": 0, "train_seed": 1, "test_accuracy": 0.96}]
    rows = report.summarize(runs)
    assert [(r["method"], r["seeds"]) for r in rows] == [("baseline", "0 0/1"), ("l2rw", "0/1")]
    assert rows[0]["test_accuracy_mean"] == pytest.approx(0.81)
