"""The benchmark's machinery (not its timings) and the run report."""
import json

import pytest

from l2rw_tf import bench, report


def test_bench_rows_have_every_variant_and_agreeing_weights():
    rows = bench.bench_model("lenet", 8, [4], ["lookahead", "jvp", "layerwise"], rounds=1,
                             steps=1)
    (row,) = rows
    assert set(row["ms_per_step"]) == {"baseline", "l2rw_lookahead", "l2rw_jvp",
                                       "l2rw_jvp_unfused", "l2rw_lookahead_unfused",
                                       "l2rw_layerwise", bench.FLOOR}
    assert all(ms > 0 for ms in row["ms_per_step"].values())
    assert row["ratio_to_baseline"]["baseline"] == 1.0
    assert set(row["weights_relative_error"]) == {"lookahead", "jvp", "layerwise"}
    assert max(row["weights_relative_error"].values()) <= 1e-4
    # A model with BatchNorm skips layerwise; the table marks the missing cell.
    rows += bench.bench_model("resnet8_half", 8, [4], ["jvp", "layerwise"], rounds=1, steps=1)
    assert "l2rw_layerwise" not in rows[1]["ms_per_step"]
    table = bench.format_table(rows)
    assert "lenet" in table and "l2rw_layerwise" in table
    # lookahead and its unfused twin (not asked), layerwise (not applicable)
    assert table.splitlines()[-1].split().count("-") == 3
    assert bench.FLOOR in rows[1]["ratio_to_baseline"]


def write_run(root, name, flags, result):
    run = root / name
    run.mkdir(parents=True)
    (run / "flags.json").write_text(json.dumps(flags))
    (run / "result.json").write_text(json.dumps(result))


def test_report_groups_seeds_and_averages(tmp_path):
    for seed, acc in ((0, 0.9), (1, 0.8)):
        write_run(tmp_path / "runs", f"l2rw_{seed}", {"method": "l2rw", "seed": seed},
                  {"test_accuracy": acc, "train_seconds": 10.0})
    write_run(tmp_path / "runs", "baseline_0", {"method": "baseline", "seed": 0},
              {"test_accuracy": 0.5, "train_seconds": 5.0})
    assert report.main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    rows = {r["method"]: r for r in report.summarize(report.load_runs([str(tmp_path / "runs")]))}
    assert rows["l2rw"]["test_accuracy_mean"] == pytest.approx(0.85)
    assert rows["l2rw"]["test_accuracy_std"] == pytest.approx(0.1 / 2 ** 0.5)  # sample std (n - 1)
    assert rows["baseline"]["seeds"] == "0"
    table = (tmp_path / "out" / "summary.md").read_text()
    assert "85.00 ± 7.07" in table and "90.0, 80.0" in table
    assert report.main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2


def test_memory_probe_reports_the_steps_peak():
    mem = bench.memory_probe("mlp", 16, 4, "l2rw_jvp", steps=2)
    assert mem["peak_mb"] >= mem["rest_mb"] > 0 and mem["step_mb"] >= 0


def test_memory_is_measured_both_as_rss_and_as_live_tensors():
    """Each variant in its own subprocesses: RSS under the default allocator, live-tensor bytes
    under TF's counting allocator (TensorFlow's stock allocator keeps no statistics)."""
    assert bench.probe_env(counting=True)["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    assert "TF_CPU_ALLOCATOR_USE_BFC" not in bench.probe_env(counting=False)
    mem = bench.measure_memory("mlp", 16, 4, ["baseline", "l2rw_jvp"])
    for variant in ("baseline", "l2rw_jvp"):
        assert mem[variant]["peak_mb"] >= mem[variant]["rest_mb"] > 0
        assert mem[variant]["tensor_step_mb"] > 0
    row = {"model": "mlp", "n": 16, "m": 4, "memory": mem,
           "ms_per_step": {"baseline": 1.0, "l2rw_jvp": 2.0},
           "ratio_to_baseline": {"baseline": 1.0, "l2rw_jvp": 2.0},
           "weights_relative_error": {"jvp": 0.0},
           "step_memory_ratio": {"baseline": 1.0, "l2rw_jvp": 1.0},
           "tensor_memory_ratio": {k: v["tensor_step_mb"] / mem["baseline"]["tensor_step_mb"]
                                   for k, v in mem.items()}}
    table = bench.format_table([row])
    assert "peak bytes of live tensors" in table
    assert f"{mem['l2rw_jvp']['tensor_step_mb']:.0f} (" in table.splitlines()[-1]


def test_bench_command_quick(tmp_path):
    """`python -m l2rw_tf.bench --quick` (the CI smoke test of the command): table and JSON."""
    import subprocess
    import sys
    from conftest import REPO
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "l2rw_tf.bench", "--quick", "--nomemory",
                             "--clean_batch_sizes=10", f"--output={out}"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "l2rw_jvp" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["n"], r["m"]) for r in rows] == [("lenet", 100, 10)]


def test_report_skips_nan_metrics(tmp_path):
    """weight_noisy is NaN on a task without corrupted labels: no crash, no NaN mean."""
    for seed in (0, 1):
        write_run(tmp_path / "runs", f"r{seed}", {"method": "l2rw", "seed": seed},
                  {"test_accuracy": 0.9, "weight_noisy": float("nan")})
    (row,) = report.summarize(report.load_runs([str(tmp_path / "runs")]))
    assert "weight_noisy_mean" not in row and row["test_accuracy_mean"] == pytest.approx(0.9)


def test_bench_times_the_fit_path_beside_the_cli_steps():
    """`--fit`: fit_l2rw (L2RWModel's train_step under fit's tf.function) and fit_baseline (the
    same model's plain Model.fit step), with their ratio against the CLI step's."""
    (row,) = bench.bench_model("lenet", 8, [4], ["layerwise"], rounds=1, steps=2, fit=True)
    assert {"fit_baseline", "fit_l2rw", "baseline", "l2rw_layerwise"} <= set(row["ms_per_step"])
    assert all(ms > 0 for ms in row["ms_per_step"].values())
    fit = row["fit"]
    assert fit["meta_grad"] == "layerwise" and fit["cli_variant"] == "l2rw_layerwise"
    assert fit["fit_ratio"] == pytest.approx(
        row["ms_per_step"]["fit_l2rw"] / row["ms_per_step"]["fit_baseline"])
    assert fit["overhead"] == pytest.approx(fit["fit_ratio"] - fit["cli_ratio"])
    table = bench.format_table([row])
    assert "fit_l2rw" in table and "fit path" in table
    assert f"fit {fit['fit_ratio']:.2f}x" in table.splitlines()[-1]
    # A meta-gradient the CLI did not time: no CLI ratio to compare with.
    assert bench.fit_overhead({"fit_l2rw": 2.0, "fit_baseline": 1.0, "baseline": 1.0},
                              "jvp")["cli_ratio"] is None
