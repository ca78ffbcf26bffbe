"""The examples/ scripts run end to end on tiny settings and print both methods' test accuracy.

In-process (`main(argv)`, one TensorFlow for all), except the tabular one, run from the command
line in a subprocess.
The tabular and token examples read datasets bundled with scikit-learn (the optional "examples"
extra) and are skipped without it; the image example needs MNIST prepared for tfds in
$TFDS_DATA_DIR (conftest points it at ../shared) and is skipped without it.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

EXAMPLES = REPO / "examples"
ROW = r"\| {name} \| (\d+\.\d\d)(?: ± \d+\.\d\d)? \|"  # one seed, or mean ± std


def load(name):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accuracies(text):
    """The test accuracies of the printed table: {method row name: percent}."""
    found = {}
    for name in ("plain `model.fit` (noisy set)", "L2RW `L2RWModel.fit`"):
        match = re.search(ROW.format(name=re.escape(name)), text)
        assert match, f"no row {name!r} in:\n{text}"
        found[name] = float(match.group(1))
        assert 0.0 <= found[name] <= 100.0
    return found


def check_outputs(out, seeds=(0,)):
    result = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in result["runs"]] == list(seeds)
    for run in result["runs"]:
        assert set(run["methods"]) >= {"plain", "l2rw"}
        assert run["ranking"]["k"] == run["num_corrupted"] > 0
        assert (out / f"seed_{run['seed']}" / "label_issues.csv").is_file()
    assert (out / "results.md").read_text().count("L2RW `L2RWModel.fit`") == 1
    return result


def mnist_prepared():
    import tensorflow_datasets as tfds
    return tfds.builder("mnist", data_dir=os.environ.get("TFDS_DATA_DIR")).is_prepared()


def test_mnist_cnn_runs_and_draws_the_suspects(tmp_path, capsys):
    if not mnist_prepared():
        pytest.skip("MNIST is not prepared for tfds in $TFDS_DATA_DIR")
    out = tmp_path / "mnist"
    load("mnist_cnn").main(["--num_train=200", "--num_test=100", "--epochs=1",
                            "--batch_size=50", "--clean_per_class=2", "--no-clean_only",
                            f"--out={out}"])
    accuracies(capsys.readouterr().out)
    result = check_outputs(out)
    assert result["runs"][0]["methods"]["l2rw"]["meta_grad"] == "jvp"  # BatchNorm, dropout
    assert (out / "seed_0" / "suspects.png").stat().st_size > 1000


def test_digits_tokens_runs(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "tokens"
    load("digits_tokens").main(["--epochs=1", "--seeds=0", "--noise=background",
                                f"--out={out}"])
    accuracies(capsys.readouterr().out)
    result = check_outputs(out)
    assert result["runs"][0]["methods"]["l2rw"]["meta_grad"] == "jvp"  # an Embedding
    assert result["runs"][0]["background_class"] is not None


def test_an_earlier_run_is_not_overwritten(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        load("tabular_mlp").main([f"--out={out}"])
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


def test_tabular_mlp_runs_two_seeds_from_the_command_line(tmp_path):
    """`python examples/tabular_mlp.py ...` in a subprocess, from another directory."""
    pytest.importorskip("sklearn")
    out = tmp_path / "tabular"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "tabular_mlp.py"), "--epochs=2", "--seeds=0,1",
         f"--out={out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    accuracies(done.stdout)
    assert "plain `model.fit` (clean set only)" in done.stdout
    result = check_outputs(out, seeds=(0, 1))
    assert result["runs"][0]["methods"]["l2rw"]["meta_grad"] == "layerwise"


def test_mnist_imbalance_through_fit_alone(tmp_path, capsys):
    """The 4-vs-9 imbalance example: the command line's data (20 fours among 4,990 training
    images, 10 clean), L2RWModel.fit and, with --plain, plain fit in the same batches."""
    if not mnist_prepared():
        pytest.skip("MNIST is not prepared for tfds in $TFDS_DATA_DIR")
    out = tmp_path / "imbalance"
    load("mnist_imbalance").main(["--seeds=0", "--steps=50", "--plain", f"--out={out}"])
    text = capsys.readouterr().out
    assert re.search(r"\| L2RW `L2RWModel.fit` \| \d+\.\d \| \d+\.\d\d ± 0\.00 \|", text), text
    assert "| plain `model.fit` | 50.0 |" in text  # 50 steps: every test image called a 9
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert (run["train_fours"], run["train_nines"], run["steps"]) == (20, 4970, 50)
    assert 0.0 < run["l2rw_weight_on_fours_last_epoch"] <= 1.0
    with pytest.raises(SystemExit):  # an earlier run's results are kept
        load("mnist_imbalance").main(["--seeds=0", "--steps=50", f"--out={out}"])
