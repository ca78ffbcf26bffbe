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
