"""The command line end to end: bad input, a short real MNIST run, and kill -9 / resume."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from absl import flags

from conftest import REPO
from l2rw_tf import config, experiment, main, rundir, train

FLAGFILE = str(REPO / "configs" / "mnist_imbalance.flags")


def strict_json(path):
    """The JSON file at `path`, read as strict JSON readers do (no NaN or Infinity)."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")
    return json.loads(pathlib.Path(path).read_text(), parse_constant=refuse)


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "l2rw_tf.main", f"--flagfile={FLAGFILE}", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=600, **kwargs)


@pytest.mark.parametrize("args,message", [
    (["--method=magic"], "--method=magic is unknown"),
    (["--meta_grad=hessian"], "--meta_grad=hessian is unknown"),
    (["--pos_ratio=1.5"], "--pos_ratio=1.5 must be strictly between 0 and 1"),
    (["--pos_ratio=0"], "--pos_ratio=0.0 must be strictly between 0 and 1"),
    (["--nval=9"], "--nval=9 must be even"),
    (["--nval=6000"], "--nval=6000 must be smaller than --ntrain=5000"),
    (["--nval=100"], "minority training images"),  # more 4s asked for than the budget has
    (["--num_steps=abc"], "num_steps"),
    (["--data_dir=/nonexistent/tfds"], "tfds data directory /nonexistent/tfds does not exist"),
    (["--meta_grad=layerwise", "--model=resnet", "--units=1"],
     "--meta_grad=layerwise does not apply to --model=resnet: it has non-trainable state"),
])
def test_bad_input_is_a_one_line_error(tmp_path, args, message):
    with pytest.raises((main.UsageError, flags.Error)) as info:
        main.run(["l2rw", f"--flagfile={FLAGFILE}", *args, f"--logdir={tmp_path / 'run'}"])
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing is created for a run that cannot start


@pytest.mark.parametrize("args,message", [
    (["--pos_ratio=1.5"], "--pos_ratio=1.5 must be strictly between 0 and 1"),
    (["--num_steps=abc"], "num_steps"),
    (["--data_dir=/nonexistent/tfds"], "tfds data directory /nonexistent/tfds does not exist"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = cli(*args, f"--logdir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr[-2000:]


def test_existing_directory_of_another_run_is_not_touched(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    result = cli(f"--logdir={run}", "--num_steps=5")
    assert result.returncode == 2 and "is not a run directory" in result.stderr
    assert (run / "notes.txt").read_text() == "mine" and len(list(run.iterdir())) == 1


def test_short_run_on_real_mnist_then_refuses_other_flags(tmp_path):
    run = tmp_path / "run"
    result = cli(f"--logdir={run}", "--num_steps=200", "--eval_interval=100")
    assert result.returncode == 0, result.stderr[-3000:]
    final = strict_json(run / "result.json")
    assert final["step"] == 200 and final["traces"] == 1
    assert final["weight_noisy"] is None  # no corrupted example in the imbalance task: undefined
    assert strict_json(run / "flags.json")["input_shape"] == [28, 28, 1]
    assert final["test_accuracy"] >= 0.85  # far above the 0.5 of chance on balanced 4s vs 9s
    assert 0 < final["zero_weight_fraction"] < 1
    assert final["runtime"]["onednn"] == os.environ["TF_ENABLE_ONEDNN_OPTS"]  # kernels recorded
    # The time breakdown: every part measured, together within the run's wall time.
    parts = [final[f"{name}_seconds"] for name in ("input", "step", "eval", "checkpoint")]
    assert all(p > 0 for p in parts) and sum(parts) <= final["train_seconds"]
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,lr,") and len(lines) == 3
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())
    assert json.loads((run / "flags.json").read_text())["method"] == "l2rw"
    again = cli(f"--logdir={run}", "--num_steps=200", "--eval_interval=100")
    assert again.returncode == 0 and "is complete" in again.stdout
    other = cli(f"--logdir={run}", "--num_steps=200", "--method=baseline")
    assert other.returncode == 2 and "holds a different run" in other.stderr


def test_only_l2rw_run_directories_record_meta_grad(tmp_path):
    """A baseline does not use --meta_grad, so its run directory resumes under any value; an L2RW
    run directory refuses another one."""
    for method, resumes in (("baseline", True), ("l2rw", False)):
        run = tmp_path / method
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["l2rw", f"--flagfile={FLAGFILE}", f"--method={method}", "--meta_grad=jvp"])
        run_config = config.from_flags(flags.FLAGS)
        flags_path = rundir.prepare_run_dir(str(run), run_config)
        train.write_json(flags_path, config.record(run_config))
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["l2rw", f"--flagfile={FLAGFILE}", f"--method={method}",
                     "--meta_grad=layerwise"])
        if resumes:
            assert rundir.prepare_run_dir(str(run), config.from_flags(flags.FLAGS)) == flags_path
        else:
            with pytest.raises(main.UsageError, match="--meta_grad was 'jvp', now 'layerwise'"):
                rundir.prepare_run_dir(str(run), config.from_flags(flags.FLAGS))


# The second method and the second signal run in the slow pass (.ci/run): the default suite keeps
# one of each under ~10 minutes on 2 cores.
@pytest.mark.parametrize("method", ["l2rw", pytest.param("random", marks=pytest.mark.slow)])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, method):
    args = [f"--method={method}", "--num_steps=80", "--eval_interval=20",
            "--checkpoint_interval=30"]
    straight = cli(*args, f"--logdir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "l2rw_tf.main", f"--flagfile={FLAGFILE}", *args, f"--logdir={run}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "ckpt" / "checkpoint").exists():  # first checkpoint written (step 30)
        assert proc.poll() is None and time.time() < deadline, "run ended before a checkpoint"
        time.sleep(0.05)
    time.sleep(0.3)  # a few steps past the checkpoint: those are lost and redone
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "result.json").exists(), "the run finished before it could be killed"

    resumed = cli(*args, f"--logdir={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    for name in ("metrics.csv", "example_weights.csv"):  # per-example statistics resume too
        assert (run / name).read_text() == (tmp_path / "straight" / name).read_text()
    a = json.loads((run / "result.json").read_text())
    b = json.loads((tmp_path / "straight" / "result.json").read_text())
    for key in ("loss", "test_accuracy", "train_accuracy", "zero_weight_fraction"):
        assert a[key] == b[key]


def test_a_run_directory_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / rundir.LOCK_NAME).write_text(str(other.pid))
        with pytest.raises(main.UsageError, match=f"is in use by process {other.pid}"):
            main.run(["l2rw", f"--flagfile={FLAGFILE}", "--num_steps=2", f"--logdir={run}"])
        assert os.listdir(run) == [rundir.LOCK_NAME]    # the other process's lock stays
    finally:
        other.kill()
        other.wait()
    # Its owner is gone (as after kill -9): the next run takes the directory over and frees it.
    final = main.run(["l2rw", f"--flagfile={FLAGFILE}", "--num_steps=2", "--eval_interval=2",
                      f"--logdir={run}"])
    assert final["step"] == 2 and not (run / rundir.LOCK_NAME).exists()


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="TensorFlow's oneDNN kernels: x86-64 Linux builds")
def test_onednn_kernels_are_on_unless_the_environment_says_otherwise():
    """The package turns TensorFlow's oneDNN CPU kernels on before TensorFlow is imported (TF does
    so by itself only on recent Intel CPUs); TF_ENABLE_ONEDNN_OPTS=0 keeps the stock kernels."""
    code = ("import l2rw_tf\nfrom tensorflow.python.util import _pywrap_util_port as port\n"
            "print(port.IsMklEnabled())")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    for extra, expected in (({}, "True"), ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "False")):
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra},
                             capture_output=True, text=True, check=True, timeout=120).stdout
        assert out.split()[-1] == expected


@pytest.mark.parametrize("arg,full", [("--helpfull", True), ("--help", False), ("-h", False)])
def test_help_lists_the_flags_and_exits_0(arg, full):
    result = subprocess.run([sys.executable, "-m", "l2rw_tf.main", arg], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--meta_grad" in result.stdout and "--flagfile" in result.stdout
    assert ("--helpfull" in result.stdout) != full  # the short help points to the full one


@pytest.mark.parametrize("args,message", [
    (["--lr=nan"], "--lr=nan is not a finite number"),
    (["--lr=inf"], "--lr=inf is not a finite number"),
    (["--momentum=-inf"], "--momentum=-inf is not a finite number"),
    (["--lr_boundaries=10", "--lr_values=nan"], "--lr_values=nan is not a finite number"),
])
def test_non_finite_flag_values_are_refused(tmp_path, args, message):
    with pytest.raises(main.UsageError, match=message):
        main.run(["l2rw", f"--flagfile={FLAGFILE}", *args, f"--logdir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_flags_are_checked_before_tensorflow_is_imported(tmp_path):
    code = ("import sys\nfrom l2rw_tf import main\ntry:\n"
            f"    main.entry(['l2rw', '--flagfile={FLAGFILE}', '--pos_ratio=1.5', "
            f"'--logdir={tmp_path / 'run'}'])\n"
            "except SystemExit as e:\n    print(e.code, 'tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stderr[-2000:]
    assert "--pos_ratio=1.5 must be strictly between 0 and 1" in result.stderr


def test_logdir_that_is_a_file_or_cannot_be_created(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    result = cli(f"--logdir={afile}")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --logdir={afile} is a file, not a directory; choose another --logdir"]
    assert afile.read_text() == "mine"
    with pytest.raises(main.UsageError, match="is a file, not a directory"):
        main.run(["l2rw", f"--flagfile={FLAGFILE}", f"--logdir={afile / 'run'}"])

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(rundir.tempfile, "mkdtemp", read_only)
    with pytest.raises(main.UsageError, match=f"cannot create --logdir={tmp_path}/ro/run: "
                                              f"{tmp_path} is not a writable directory"):
        main.run(["l2rw", f"--flagfile={FLAGFILE}", f"--logdir={tmp_path / 'ro' / 'run'}"])
    assert not (tmp_path / "ro").exists()


@pytest.mark.skipif(not os.path.isdir("/sys") or os.access("/sys", os.W_OK) is False,
                    reason="needs /sys, a read-only file system that os.access calls writable")
def test_logdir_under_a_read_only_file_system_exits_2(tmp_path):
    if subprocess.run(["mkdir", "/sys/l2rw_probe"], capture_output=True).returncode == 0:
        os.rmdir("/sys/l2rw_probe")
        pytest.skip("/sys is writable here")
    result = cli("--logdir=/sys/l2rw/run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: cannot create --logdir=/sys/l2rw/run: /sys is not a writable directory")


def checkpoint_values_are_finite(prefix):
    import numpy as np
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(prefix))
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:
            assert np.all(np.isfinite(reader.get_tensor(name))), name


def test_a_diverged_run_stops_with_one_line_and_keeps_its_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = cli("--method=baseline", "--lr=1e6", "--num_steps=200", "--eval_interval=5",
                 "--checkpoint_interval=2", f"--logdir={run}")
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training diverged at step ") and "lower --lr" in line, line
    diverged_at = int(line.split("at step ")[1].split(":")[0])
    assert 1 < diverged_at < 200
    assert not (run / "result.json").exists() and not (run / rundir.LOCK_NAME).exists()
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(str(run / "ckpt"))
    assert latest and int(latest.rsplit("-", 1)[1]) < diverged_at
    for prefix in tf.train.get_checkpoint_state(str(run / "ckpt")).all_model_checkpoint_paths:
        checkpoint_values_are_finite(prefix)


STEPS = ["--num_steps=60", "--eval_interval=20"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted short L2RW run, to compare interrupted and resumed ones with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    result = cli(*STEPS, f"--logdir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def assert_same_run(run, straight):
    for name in ("metrics.csv", "example_weights.csv"):
        assert (run / name).read_text() == (straight / name).read_text(), name
    a, b = strict_json(run / "result.json"), strict_json(straight / "result.json")
    for key in ("loss", "test_accuracy", "train_accuracy", "zero_weight_fraction"):
        assert a[key] == b[key], key


def test_a_truncated_checkpoint_falls_back_to_the_one_before(tmp_path, straight_run):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        main.run(["l2rw", f"--flagfile={FLAGFILE}", *STEPS, "--checkpoint_interval=10",
                  f"--logdir={run}"], stop_at_step=35)
    data = run / "ckpt" / "ckpt-30.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])  # as a full disk or a crash mid-write leaves it
    result = cli(*STEPS, "--checkpoint_interval=10", f"--logdir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ckpt-30 is unreadable" in result.stdout and "resumed from" in result.stdout
    assert f"{run}/ckpt/ckpt-20 at step 20" in result.stdout
    assert_same_run(run, straight_run)

    # None readable: one line naming the directory.
    run2 = tmp_path / "run2"
    with pytest.raises(KeyboardInterrupt):
        main.run(["l2rw", f"--flagfile={FLAGFILE}", *STEPS, "--checkpoint_interval=10",
                  f"--logdir={run2}"], stop_at_step=25)
    for data in (run2 / "ckpt").glob("*.data-*"):
        data.write_bytes(b"")
    result = cli(*STEPS, "--checkpoint_interval=10", f"--logdir={run2}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no checkpoint in {run2}/ckpt can be read; move that directory away to train "
        f"the run from the start")


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                    signal.SIGTERM])
def test_a_signal_saves_the_current_step_and_the_resumed_run_is_unchanged(
        tmp_path, straight_run, signum):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "l2rw_tf.main", f"--flagfile={FLAGFILE}", *STEPS,
         "--checkpoint_interval=1000", f"--logdir={run}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # until the first evaluation (step 20) is printed
            if line.startswith("step 20/"):
                break
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"l2rw_tf: stopped by {signal.Signals(signum).name} after step ")
    assert "Traceback" not in err
    stopped_at = int(lines[-1].split("after step ")[1].split()[0])
    assert 20 <= stopped_at < 60 and not (run / rundir.LOCK_NAME).exists()
    assert (run / "ckpt" / f"ckpt-{stopped_at}.index").exists()
    resumed = cli(*STEPS, "--checkpoint_interval=1000", f"--logdir={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at}" in resumed.stdout
    assert_same_run(run, straight_run)


def test_train_seed_redraws_the_weights_and_batches_but_not_the_data():
    """--train_seed seeds what the original MNIST code leaves unseeded (initial weights, batch
    order); the split stays --seed's. Unset, it is --seed: the same run as before the flag."""
    import numpy as np

    def build(*extra):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["l2rw", f"--flagfile={FLAGFILE}", "--seed=56789", *extra])
        run_config = config.from_flags(flags.FLAGS)
        inputs = experiment.build_data(run_config)
        model, _, train_ds, clean_ds, _ = experiment.build_training(run_config, inputs)
        batch = next(iter(train_ds))
        return (inputs.data, [w.numpy() for w in model.weights], batch["index"].numpy(),
                config.record(run_config))

    default, same, other = build(), build("--train_seed=56789"), build("--train_seed=1")
    for run in (same, other):  # the data: image for image
        np.testing.assert_array_equal(run[0].train_images, default[0].train_images)
        np.testing.assert_array_equal(run[0].clean_images, default[0].clean_images)
        np.testing.assert_array_equal(run[0].train_labels, default[0].train_labels)
    for a, b in zip(same[1], default[1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(same[2], default[2])
    assert not np.array_equal(other[1][0], default[1][0])  # first kernel redrawn
    assert not np.array_equal(other[2], default[2])        # another batch order
    assert default[3]["train_seed"] is None and other[3]["train_seed"] == 1
    flags.FLAGS.unparse_flags()


def test_train_seconds_add_up_over_the_sessions_of_a_resumed_run(tmp_path):
    """result.json's times are the run's, not its last session's: each checkpoint records the
    time so far beside it (only for the checkpoints kept), and a resumed run adds to it."""
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        main.run(["l2rw", f"--flagfile={FLAGFILE}", *STEPS, "--checkpoint_interval=10",
                  f"--logdir={run}"], stop_at_step=35)
    assert sorted(p.name for p in (run / "ckpt").glob("*.seconds.json")) == \
        ["ckpt-20.seconds.json", "ckpt-30.seconds.json"]
    before = json.loads((run / "ckpt" / "ckpt-30.seconds.json").read_text())
    assert before["train"] > before["step"] > 0
    time.sleep(1.0)  # not counted: between the sessions
    result = cli(*STEPS, "--checkpoint_interval=10", f"--logdir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    final = strict_json(run / "result.json")
    assert final["train_seconds"] > before["train"] and final["step_seconds"] > before["step"]
