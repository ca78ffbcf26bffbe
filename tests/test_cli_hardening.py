"""The command line's bad inputs and faults of issue 24 (items 8-19): each refused in one line
(exit status 2, nothing created, before TensorFlow loads where the value alone decides), or
survived (a full disk during a checkpoint, garbage beside the checkpoints, a stale lock)."""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl import flags

from conftest import REPO
from l2rw_tf import config, main, rundir

FLAGFILE = str(REPO / "configs" / "mnist_imbalance.flags")

# Refused before TensorFlow loads: main.entry in a fresh interpreter, which prints its exit code
# and whether TensorFlow was imported.
ENTRY = textwrap.dedent("""
    import json, sys
    from l2rw_tf import main
    try:
        main.entry(["l2rw"] + json.loads(sys.argv[1]))
    except SystemExit as e:
        print(e.code, "tensorflow" in sys.modules)
""")


def refused_early(args, cwd=REPO, env=None):
    """(stderr lines) of a run of `args` that must exit 2 before TensorFlow is imported."""
    result = subprocess.run([sys.executable, "-c", ENTRY, json.dumps(list(map(str, args)))],
                            capture_output=True, text=True, cwd=cwd, timeout=120,
                            env={**os.environ, **(env or {})})
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


# Lines TensorFlow itself prints on stderr when it loads (whatever the run): not the run's own.
TF_NOISE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|To enable the following|"
                      r"rebuild TensorFlow)")


def own_stderr_lines(stderr):
    return [line for line in stderr.strip().splitlines() if not TF_NOISE.match(line)]


# --- 8. flagfiles ------------------------------------------------------------------------------

def test_a_flagfile_that_is_not_text_is_one_line(tmp_path):
    path = tmp_path / "latin1.flags"
    path.write_bytes("--num_steps=3\n--logdir=caf\xe9\n".encode("latin-1"))
    line = refused_early([f"--flagfile={path}", f"--logdir={tmp_path / 'run'}"])
    assert f"flagfile {path} is not" in line and "0xe9" in line and "save it as" in line
    # Included from another flagfile: the same.
    outer = tmp_path / "outer.flags"
    outer.write_text(f"--flagfile={path}\n")
    assert f"flagfile {path} is not" in refused_early([f"--flagfile={outer}"])
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux' /proc")
def test_a_flagfile_that_cannot_be_read_is_one_line(tmp_path):
    # /proc/self/mem opens but its first read fails (EIO): an I/O error, not a missing file.
    line = refused_early(["--flagfile=/proc/self/mem", f"--logdir={tmp_path / 'run'}"])
    assert line == "error: cannot read flagfile /proc/self/mem (Input/output error)"
    assert "cannot read flagfile" in refused_early([f"--flagfile={tmp_path}"])  # a directory
    assert not (tmp_path / "run").exists()


def test_a_flagfile_that_includes_itself_is_refused(tmp_path):
    own = tmp_path / "self.flags"
    own.write_text(f"--flagfile={FLAGFILE}\n--flagfile={own}\n--num_steps=3\n")
    line = refused_early([f"--flagfile={own}", f"--logdir={tmp_path / 'run'}"])
    assert line == (f"error: flagfile {own} includes itself ({own} -> {own}); remove that "
                    f"--flagfile line")
    a, b = tmp_path / "a.flags", tmp_path / "b.flags"
    a.write_text(f"--flagfile={b}\n")
    b.write_text(f"--num_steps=3\n--flagfile={a}\n")
    assert f"({a} -> {b} -> {a})" in refused_early(["--flagfile", str(a)])
    assert not (tmp_path / "run").exists()
    # A flagfile included twice, but not from itself, is fine (absl reads it twice).
    c = tmp_path / "c.flags"
    c.write_text(f"--flagfile={FLAGFILE}\n--flagfile={FLAGFILE}\n")
    main.check_flagfiles([f"--flagfile={c}"])


# --- 9, 10, 15: values -------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--seed=-1"], "--seed=-1 must be in [0, 4294967294]"),
    (["--seed=4294967295"], "--seed=4294967295 must be in [0, 4294967294]"),
    (["--train_seed=-3"], "--train_seed=-3 must be in [0, 4294967295]"),
    (["--train_seed=4294967296"], "--train_seed=4294967296 must be in [0, 4294967295]"),
    (["--hard_mining_pool=0"], "--hard_mining_pool=0 must be positive"),
    (["--hard_mining_pool=-5", "--method=hard_mining"], "--hard_mining_pool=-5 must be positive"),
    (["--method=hard_mining", "--hard_mining_pool=50"],
     "--hard_mining_pool=50 must be at least --batch_size=100"),
    (["--momentum=-1"], "--momentum=-1.0 must be in [0, 1)"),
    (["--momentum=1.5"], "--momentum=1.5 must be in [0, 1)"),
])
def test_out_of_range_values_are_refused_before_tensorflow(tmp_path, args, message):
    line = refused_early([f"--flagfile={FLAGFILE}", *args, f"--logdir={tmp_path / 'run'}"])
    assert message in line
    assert not (tmp_path / "run").exists()


def test_the_largest_seeds_are_accepted():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["l2rw", f"--flagfile={FLAGFILE}", "--seed=4294967294",
                 "--train_seed=4294967295", "--method=hard_mining", "--hard_mining_pool=100"])
    config.from_flags(flags.FLAGS)
    flags.FLAGS.unparse_flags()


def test_an_over_long_logdir_is_refused_and_leaves_nothing(tmp_path):
    deep = tmp_path.joinpath(*["d" * 200] * 21)  # > 4,096 bytes in all
    line = refused_early([f"--flagfile={FLAGFILE}", f"--logdir={deep}"])
    assert "--logdir is" in line and "choose a shorter --logdir" in line
    wide = tmp_path / ("e" * 300)  # one name longer than 255 bytes
    assert "path component of 300 bytes" in refused_early(
        [f"--flagfile={FLAGFILE}", f"--logdir={wide}"])
    assert list(tmp_path.iterdir()) == []


# --- 16, 17: the data directory ----------------------------------------------------------------

def test_a_data_dir_that_is_a_file_says_so_before_tensorflow(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    line = refused_early([f"--flagfile={FLAGFILE}", f"--data_dir={afile}",
                          f"--logdir={tmp_path / 'run'}"])
    assert line.startswith(f"error: tfds data directory {afile} is a file, not a directory")
    line = refused_early([f"--flagfile={FLAGFILE}", f"--logdir={tmp_path / 'run'}"],
                         env={"TFDS_DATA_DIR": str(afile)})
    assert f"{afile} is a file" in line and "TFDS_DATA_DIR" in line
    assert "does not exist" in refused_early([f"--flagfile={FLAGFILE}",
                                              f"--data_dir={tmp_path / 'none'}"])
    assert afile.read_text() == "mine" and not (tmp_path / "run").exists()


# A machine without network: every name lookup fails (what urllib3, and so tfds, meets offline).
OFFLINE = textwrap.dedent("""
    import socket, sys
    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    socket.getaddrinfo = offline
    from l2rw_tf import main
    main.entry(["l2rw"] + sys.argv[1:])
""")


def run_offline(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-c", OFFLINE, f"--flagfile={FLAGFILE}", *args,
         f"--logdir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=REPO, timeout=90,
        env={**os.environ, "L2RW_CACHE_DIR": str(tmp_path / "cache")})


def test_offline_an_unprepared_dataset_is_refused_in_seconds(tmp_path):
    empty = tmp_path / "tfds"
    empty.mkdir()
    result = run_offline(tmp_path, f"--data_dir={empty}")  # tfds alone retries for minutes
    assert result.returncode == 2, result.stderr[-3000:]
    lines = own_stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: tfds dataset 'mnist' is not prepared in {empty} and "
                               f"cannot be downloaded: storage.googleapis.com cannot be reached")
    assert "TFDS_DATA_DIR" in lines[0] and "--data_dir" in lines[0]
    assert list(empty.iterdir()) == [] and not (tmp_path / "run").exists()


def test_a_half_prepared_data_dir_adds_no_absl_line(tmp_path):
    """The folders a failed download leaves make tfds (absl) warn "Variant folder ... has no
    dataset_info.json" before the refusal."""
    partial = tmp_path / "tfds"
    (partial / "mnist" / "3.0.1").mkdir(parents=True)
    result = run_offline(tmp_path, f"--data_dir={partial}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = own_stderr_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: tfds dataset 'mnist' is not prepared")
    assert "Variant folder" not in result.stderr


def test_the_reachability_check_passes_a_host_that_answers(monkeypatch):
    from l2rw_tf import data

    class Builder:
        url_infos = {"https://example.org/a.tar.gz": None, "http://example.org/b": None}

    connected = []

    class Connection:
        def close(self):
            pass

    def create_connection(address, timeout):
        connected.append(address)
        return Connection()

    monkeypatch.setattr(data.socket, "create_connection", create_connection)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert data._unreachable_hosts(Builder()) == ""
    assert sorted(connected) == [("example.org", 80), ("example.org", 443)]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # behind a proxy: tfds decides
    monkeypatch.setattr(data.socket, "create_connection", None)
    assert data._unreachable_hosts(Builder()) == ""


# --- 11, 16: image folders ---------------------------------------------------------------------

def write_folder(root, images_of, classes_of=lambda split: ("ant", "bee"), suffix="png"):
    import tensorflow as tf
    for split in ("train", "test"):
        for name in classes_of(split):
            (root / split / name).mkdir(parents=True)
            for i, image in enumerate(images_of(split, name)):
                encode = tf.io.encode_png if suffix == "png" else tf.io.encode_jpeg
                (root / split / name / f"{i}.{suffix}").write_bytes(encode(image).numpy())


def random_images(count, channels, seed, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, np.iinfo(dtype).max + 1, (5, 4, channels), dtype=dtype)
            for _ in range(count)]


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("L2RW_CACHE_DIR", str(tmp_path / "cache"))


def test_rgb_train_and_grayscale_test_share_three_channels(tmp_path, tmp_cache):
    from l2rw_tf import data
    gray = {name: random_images(2, 1, seed) for seed, name in enumerate(("ant", "bee"))}
    write_folder(tmp_path / "imgs", lambda split, name: random_images(3, 3, 5) if split == "train"
                 else gray[name])
    (train_x, _), (test_x, test_y), num_classes = data.load_dataset(f"folder:{tmp_path / 'imgs'}")
    assert train_x.shape == (6, 5, 4, 3) and test_x.shape == (4, 5, 4, 3) and num_classes == 2
    for image, label in zip(test_x, test_y):  # the gray values, in every channel
        name = ("ant", "bee")[label]
        assert any(np.array_equal(image, np.repeat(g, 3, axis=-1)) for g in gray[name])
    # And the other way round.
    write_folder(tmp_path / "imgs2", lambda split, name: random_images(2, 1 if split == "train"
                                                                       else 3, 6))
    (train_x, _), (test_x, _), _ = data.load_dataset(f"folder:{tmp_path / 'imgs2'}")
    assert train_x.shape[-1] == test_x.shape[-1] == 3


def test_a_class_without_training_images_is_refused(tmp_path, tmp_cache):
    from l2rw_tf import data
    write_folder(tmp_path / "imgs", lambda split, name: random_images(2, 3, 0),
                 classes_of=lambda split: ("ant", "bee") + (("cat",) if split == "test" else ()))
    with pytest.raises(data.DataError) as error:
        data.load_dataset(f"folder:{tmp_path / 'imgs'}")
    message = str(error.value)
    assert "class 'cat' has no training images" in message and "\n" not in message
    assert f"{(tmp_path / 'imgs').resolve()}/train/<class>/" in message


def test_train_and_test_images_of_other_sizes_are_refused(tmp_path, tmp_cache):
    from l2rw_tf import data
    rng = np.random.default_rng(0)
    write_folder(tmp_path / "imgs", lambda split, name: [
        rng.integers(0, 256, (5, 4, 3) if split == "train" else (6, 4, 3), dtype=np.uint8)])
    with pytest.raises(data.DataError, match="train images are 5x4, test images 6x4"):
        data.load_dataset(f"folder:{tmp_path / 'imgs'}")


def test_16_bit_pngs_are_scaled_by_their_high_byte_and_the_log_says_so(tmp_path, tmp_cache,
                                                                        capsys):
    from l2rw_tf import data
    deep = {name: random_images(2, 1, seed, np.uint16) for seed, name in enumerate(("ant", "bee"))}
    write_folder(tmp_path / "imgs", lambda split, name: deep[name])
    for _ in range(2):  # decoded, then from the cache: the note both times
        images, labels, classes = data.load_folder(str(tmp_path / "imgs"), "train")
        out = capsys.readouterr().out
        assert "note: 4 of the 4 images of" in out and "are 16-bit PNGs" in out
        assert "value // 256" in out
    for image, label in zip(images, labels):
        assert any(np.array_equal(image, (d >> 8).astype(np.uint8)) for d in deep[classes[label]])


def test_a_corrupt_jpeg_adds_no_stray_line(tmp_path, tmp_cache, capfd):
    from l2rw_tf import data
    write_folder(tmp_path / "imgs", lambda split, name: random_images(2, 3, 1), suffix="jpg")
    bad = tmp_path / "imgs" / "train" / "ant" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])
    capfd.readouterr()
    with pytest.raises(data.DataError, match=f"cannot decode image file {bad}"):
        data.load_folder(str(tmp_path / "imgs"), "train")
    assert capfd.readouterr().err == ""  # libjpeg's own line held back
    print("still here", file=sys.stderr)  # and stderr works after
    assert capfd.readouterr().err == "still here\n"


# --- 14: a stale lock --------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/proc/1/stat"), reason="needs Linux' /proc")
def test_a_lock_naming_a_live_unrelated_process_says_how_to_clear_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK_NAME).write_text("1")  # a lock of an earlier version; process 1 lives
    line = refused_early([f"--flagfile={FLAGFILE}", f"--logdir={run}"])
    assert line.startswith(f"error: {run} is in use by process 1 (training it now)")
    assert line.endswith(f"if process 1 is not training it (the lock outlived its run), "
                         f"remove {run / rundir.LOCK_NAME}")
    assert os.listdir(run) == [rundir.LOCK_NAME]


@pytest.mark.skipif(not os.path.exists("/proc/1/stat"), reason="needs Linux' /proc")
def test_a_lock_names_its_process_start_so_a_reused_pid_is_not_a_holder(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        lock = run / rundir.LOCK_NAME
        lock.write_text(f"{other.pid} {rundir.process_start_time(other.pid)}")
        with pytest.raises(main.UsageError, match=f"in use by process {other.pid}"):
            rundir.check_lock(str(run))
        # The same pid, but the lock's writer started at another time: a later process has the
        # pid, the writer is gone.
        lock.write_text(f"{other.pid} 1")
        rundir.check_lock(str(run))
        with rundir.run_dir_lock(str(run)):
            pid, start = lock.read_text().split()
            assert int(pid) == os.getpid() and start == rundir.process_start_time(os.getpid())
        assert not lock.exists()
    finally:
        other.kill()
        other.wait()


# --- 12, 13, 18: a short real run, a full disk, garbage beside the checkpoints ----------------

STEPS = ["--num_steps=40", "--eval_interval=10", "--checkpoint_interval=10"]


def run_args(run, *extra):
    return ["l2rw", f"--flagfile={FLAGFILE}", *STEPS, f"--logdir={run}", *extra]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run, to compare the others with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    main.run(run_args(run))
    return run


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped after step 35: checkpoints 20 and 30 (two are kept)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(KeyboardInterrupt):
        main.run(run_args(run), stop_at_step=35)
    return run


def same_as(run, straight_run, names=("metrics.csv", "example_weights.csv")):
    for name in names:
        assert (run / name).read_text() == (straight_run / name).read_text(), name
    a = json.loads((run / "result.json").read_text())
    b = json.loads((straight_run / "result.json").read_text())
    for key in ("step", "loss", "test_accuracy", "zero_weight_fraction"):
        assert a[key] == b[key], key


def test_flags_json_records_the_data_directory(straight):
    recorded = json.loads((straight / "flags.json").read_text())
    assert recorded["data_dir"] == os.path.abspath(os.environ["TFDS_DATA_DIR"])
    # Not compared on resume: the data may move.
    flags.FLAGS.unparse_flags()
    flags.FLAGS(run_args(straight, "--data_dir=/elsewhere"))
    rundir.check_run_dir(str(straight), config.from_flags(flags.FLAGS))
    flags.FLAGS.unparse_flags()


def test_the_data_directory_is_no_part_of_a_setting_in_tables_and_figures():
    from l2rw_tf import plots, report
    runs = [{"run_dir": f"r{seed}", "method": "l2rw", "seed": seed, "data_dir": data_dir,
             "test_accuracy": 0.9} for seed, data_dir in ((0, None), (1, "/a"), (2, "/b"))]
    (row,) = report.summarize(runs)
    assert row["seeds"] == "0 1 2"
    plots.check_one_setting([{"flags": {"method": "l2rw", "data_dir": d}} for d in ("/a", "/b")],
                            varying=())


def test_cleanlab_eval_reads_the_data_directory_the_run_recorded(tmp_path):
    from l2rw_tf import cleanlab_eval, ranking
    run = tmp_path / "l2rw"
    run.mkdir()
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    (run / "flags.json").write_text(json.dumps({
        "task": "noisy", "dataset": "mnist", "method": "l2rw", "model": "lenet", "seed": 0,
        "noise": "background", "ratio": 0.4, "clean_per_class": 10, "num_steps": 12,
        "input_shape": [28, 28, 1], "pixel_range": [0.0, 1.0], "data_dir": str(data_dir)}))
    (run / "result.json").write_text("{}")
    (run / "example_weights.csv").write_text(
        f"index,label,is_noisy,mean_weight,{ranking.SECONDARY_SCORE}\n0,1,0,1.0,0.5\n")
    try:
        cleanlab_eval.FLAGS.unparse_flags()
        cleanlab_eval.FLAGS(["cleanlab_eval", f"--l2rw_run={run}", f"--out={tmp_path / 'out'}"])
        folds = cleanlab_eval.load_runs().config
        assert folds.data_dir == str(data_dir) and folds.method == "baseline"
        # Given on cleanlab_eval's own command line, it wins.
        other = tmp_path / "other"
        other.mkdir()
        cleanlab_eval.FLAGS.unparse_flags()
        cleanlab_eval.FLAGS(["cleanlab_eval", f"--l2rw_run={run}", f"--out={tmp_path / 'out'}",
                             f"--data_dir={other}"])
        assert cleanlab_eval.load_runs().config.data_dir == str(other)
    finally:
        cleanlab_eval.FLAGS.unparse_flags()


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_run_resumes(tmp_path, straight,
                                                                         monkeypatch):
    """The write fails after TensorFlow has filled ckpt-20_temp/, as a full disk makes it fail
    (ResourceExhaustedError, injected): one line, the partial files removed, ckpt-10 intact, and
    the same command resumes to the uninterrupted run's result."""
    import tensorflow as tf
    from tensorflow.python.ops import gen_io_ops
    real_merge, calls, seen = gen_io_ops.merge_v2_checkpoints, [], []

    def merge(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # checkpoint 20
            seen.extend(os.listdir(run / "ckpt"))
            raise tf.errors.ResourceExhaustedError(
                None, None, f"{run}/ckpt/ckpt-20_temp/part-00000-of-00001.data-00000-of-00001"
                "; No space left on device")
        return real_merge(*args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(gen_io_ops, "merge_v2_checkpoints", merge)
    with pytest.raises(main.UsageError) as error:
        main.run(run_args(run))
    monkeypatch.undo()
    message = str(error.value)
    assert "\n" not in message and "ckpt-20_temp" in seen  # the failure came mid-write
    assert message.startswith(f"cannot write checkpoint {run}/ckpt/ckpt-20 "
                              f"(ResourceExhaustedError: ")
    assert message.endswith(f"nothing of it was kept, {run}/ckpt/ckpt-10 is intact: free space "
                            f"there and rerun the same command to resume")
    assert sorted(os.listdir(run / "ckpt")) == [
        "checkpoint", "ckpt-10.data-00000-of-00001", "ckpt-10.index", "ckpt-10.seconds.json"]
    assert not (run / rundir.LOCK_NAME).exists() and not (run / "result.json").exists()
    main.run(run_args(run))
    same_as(run, straight)


def can_mount_tmpfs(path):
    """Whether this machine lets a process mount a tmpfs in a mount namespace of its own."""
    if not shutil.which("unshare"):
        return False
    path.mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs "
                            f"{path}"], capture_output=True, timeout=30)
    return probe.returncode == 0


# In a mount namespace of its own: a 4 MB tmpfs, where the run's first checkpoint (about 2.7 MB)
# fits and its second does not; then the disk grown (space freed) and the same command rerun.
ON_A_SMALL_DISK = """
set -u
mount -t tmpfs -o size=4m tmpfs "$DISK"
"$PYTHON" -m l2rw_tf.main "$@" --logdir="$DISK/run" > "$OUT/first.out" 2> "$OUT/first.err"
echo $? > "$OUT/first.code"
ls -a "$DISK/run/ckpt" > "$OUT/ckpt.ls"
mount -o remount,size=64m "$DISK"
"$PYTHON" -m l2rw_tf.main "$@" --logdir="$DISK/run" > "$OUT/second.out" 2> "$OUT/second.err"
echo $? > "$OUT/second.code"
cp "$DISK/run/metrics.csv" "$DISK/run/example_weights.csv" "$OUT/"
"""


def test_a_real_full_disk_during_a_checkpoint(tmp_path, straight):
    """The same as above on a real full disk (a small tmpfs), where the machine allows it."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    if not can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs in a mount namespace here (unshare -rm)")
    out.mkdir()
    subprocess.run(["unshare", "-rm", "sh", "-c", ON_A_SMALL_DISK, "sh", f"--flagfile={FLAGFILE}",
                    *STEPS], cwd=REPO, timeout=600, check=True,
                   env={**os.environ, "DISK": str(disk), "OUT": str(out),
                        "PYTHON": sys.executable})
    first_err = (out / "first.err").read_text()
    assert (out / "first.code").read_text().strip() == "2", first_err[-3000:]
    lines = own_stderr_lines(first_err)
    assert len(lines) == 1 and lines[0].startswith(
        f"error: cannot write checkpoint {disk}/run/ckpt/ckpt-20 ("), first_err[-3000:]
    assert "No space left on device" in lines[0]
    assert lines[0].endswith(f"{disk}/run/ckpt/ckpt-10 is intact: free space there and rerun "
                             f"the same command to resume")
    assert sorted((out / "ckpt.ls").read_text().split()) == [
        ".", "..", "checkpoint", "ckpt-10.data-00000-of-00001", "ckpt-10.index",
        "ckpt-10.seconds.json"]
    second = (out / "second.out").read_text()
    assert (out / "second.code").read_text().strip() == "0", (out / "second.err").read_text()
    assert f"resumed from {disk}/run/ckpt/ckpt-10 at step 10" in second
    for name in ("metrics.csv", "example_weights.csv"):
        assert (out / name).read_text() == (straight / name).read_text(), name


def resume_copy(stopped_run, tmp_path, damage, capsys):
    """A copy of the stopped run, damaged by `damage(run)`, resumed; returns (run, its log)."""
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    damage(run)
    capsys.readouterr()
    main.run(run_args(run))
    return run, capsys.readouterr().out


def test_a_garbage_time_record_falls_back_to_the_checkpoint_before(tmp_path, stopped, straight,
                                                                   capsys):
    run, log = resume_copy(stopped, tmp_path, lambda run: (
        run / "ckpt" / "ckpt-30.seconds.json").write_text("{garbage"), capsys)
    assert (f"the time record {run}/ckpt/ckpt-30.seconds.json of checkpoint {run}/ckpt/ckpt-30 "
            f"is unreadable (JSONDecodeError); trying the checkpoint before") in log
    assert f"resumed from {run}/ckpt/ckpt-20 at step 20" in log
    same_as(run, straight)


@pytest.mark.parametrize("garbage", [None, "\x00\x01garbage {{"])
def test_a_missing_or_garbage_checkpoint_index_is_rebuilt(tmp_path, stopped, straight, capsys,
                                                          garbage):
    def damage(run):
        index = run / "ckpt" / "checkpoint"
        if garbage is None:
            index.unlink()
        else:
            index.write_text(garbage)

    run, log = resume_copy(stopped, tmp_path, damage, capsys)
    problem = "is missing" if garbage is None else (
        f"cannot be read (kept as {run}/ckpt/checkpoint.unreadable)")
    assert (f"the checkpoint index {run}/ckpt/checkpoint {problem}; rebuilt from the checkpoints "
            f"in {run}/ckpt (ckpt-20, ckpt-30)") in log
    assert f"resumed from {run}/ckpt/ckpt-30 at step 30" in log  # not started over
    same_as(run, straight)
    if garbage is not None:
        assert (run / "ckpt" / "checkpoint.unreadable").read_text() == garbage


def test_a_garbage_metrics_csv_is_set_aside_and_the_run_goes_on(tmp_path, stopped, straight,
                                                                capsys):
    run, log = resume_copy(stopped, tmp_path, lambda run: (run / "metrics.csv").write_text(
        "garbage\n\x00\x01\n"), capsys)
    assert (f"{run}/metrics.csv is unreadable (KeyError); kept as {run}/metrics.csv.unreadable, "
            f"and the rows of the steps up to 30 are missing from the new one") in log
    assert f"resumed from {run}/ckpt/ckpt-30 at step 30" in log
    assert (run / "metrics.csv.unreadable").read_text() == "garbage\n\x00\x01\n"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[1:] == (straight / "metrics.csv").read_text().splitlines()[-1:]  # step 40
    same_as(run, straight, names=("example_weights.csv",))


# --- 19 ----------------------------------------------------------------------------------------

def test_the_readme_says_any_tfds_image_dataset_works():
    readme = (REPO / "README.md").read_text()
    assert "`--dataset=mnist|cifar10|cifar100|folder:PATH`" not in readme
    assert "`--dataset=NAME|folder:PATH`: any tfds image-classification dataset by name" in readme
