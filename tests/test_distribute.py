"""The distributed L2RW step (distribute.py) equals the one-device step; --distribute on the CLI.

Logical CPU devices must be configured before TensorFlow initialises its devices, so everything
that runs on several replicas runs in a subprocess: this file run as a script (`python
tests/test_distribute.py <case>`), which prints one JSON line of measured differences.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
MNIST = ["--task=noisy", "--dataset=mnist", "--noise=background", "--ratio=0.4",
         "--num_train_subset=2000", "--num_hyper_val=500", "--model=lenet",
         "--meta_grad=layerwise", "--batch_size=32", "--clean_batch_size=16",
         "--eval_interval=5", "--checkpoint_interval=2"]


def run_case(case, timeout=300):
    out = subprocess.run([sys.executable, __file__, case], capture_output=True, text=True,
                         env=ENV, cwd=REPO, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lenet_layerwise_and_jvp_equal_one_device():
    result = run_case("lenet")
    print(result)
    for meta_grad in ("layerwise", "jvp"):
        assert result[meta_grad]["weights"] < 1e-5, result
        assert result[meta_grad]["params"] < 1e-5, result
        assert 0.1 < result[meta_grad]["zero_fraction"] < 0.9  # weights that can differ
    assert result["baseline"]["params"] < 1e-5, result


@pytest.mark.slow  # ~60 s on 2 loaded cores (traces the look-ahead with synchronized BN)
def test_resnet_sync_batch_norm_exact_and_per_replica_batch_norm_differs():
    result = run_case("resnet")
    print(result)
    # float64: the algorithm, free of float32 rounding (which the clipped weights amplify).
    assert result["sync_lookahead_float64"]["weights"] < 1e-5, result
    assert result["sync_lookahead_float64"]["params"] < 1e-5, result
    # Keras' default BatchNorm normalises each replica's half with its own statistics: the
    # documented difference, large.
    assert result["per_replica_jvp_float64"]["weights"] > 1e-2, result
    assert result["per_replica_jvp_float64"]["params"] > 1e-2, result


@pytest.mark.slow  # ~35 s on 2 loaded cores: 5 float32 runs of 5 look-ahead steps
def test_resnet_sync_batch_norm_float32_differs_by_rounding_only():
    result = run_case("resnet_float32")
    print(result)
    # On the batches above (8x8 inputs, 16 + 8) float32 keeps mirrored within 1e-5 of one
    # device (measured 4.2e-6 weights, 2.3e-6 parameters); both sides run synchronized BN's
    # one-pass variance E[x^2] - E[x]^2 (on one device Keras takes that path too).
    assert result["mirrored_sync_vs_one_sync"]["weights"] < 1e-5, result
    assert result["mirrored_sync_vs_one_sync"]["params"] < 1e-5, result
    # On 16x16 inputs, 32 + 16, the clipped weights amplify float32 rounding: mirrored differs
    # from one device by ~5e-2 after 5 steps, and so does ONE device with plain BN (two-pass
    # variance) against one device with synchronized BN, no distribution involved: the same
    # order, so rounding, not the distributed step (float64: both ~1e-15).
    control = result["one_sync_vs_one_plain_16"]
    mirrored = result["mirrored_sync_vs_one_sync_16"]
    assert control["weights"] > 1e-2, result
    for key in ("weights", "params"):
        assert mirrored[key] < 10 * control[key], result


def test_fit_under_mirrored_gives_the_cli_step_weights_and_communication():
    result = run_case("fit")
    print(result)
    assert result["fit_vs_cli"] < 1e-5, result
    assert result["cli_vs_one_device"] < 1e-5, result
    theta = result["parameters"]
    # Floats all-reduced per step: 2|θ| + 1 for L2RW (clean gradient, Σ of the clipped
    # alignments, weighted gradient) against |θ| for a uniform-weight step.
    assert result["l2rw_floats"] == 2 * theta + 1, result
    assert result["baseline_floats"] == theta, result


def cli(*args, env=None, timeout=300, check=True):
    out = subprocess.run([sys.executable, "-m", "l2rw_tf.main", *args], capture_output=True,
                         text=True, env=env or ENV, cwd=REPO, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def read_run(run_dir):
    """(mean weights per example, final parameters) of a finished CLI run."""
    import csv

    import tensorflow as tf
    with open(run_dir / "example_weights.csv") as f:
        weights = np.array([float(r["mean_weight"]) for r in csv.DictReader(f)])
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "ckpt")))
    names = sorted(n for n in reader.get_variable_to_shape_map()
                   if n.startswith("optimizer/_trainable_variables/"))
    return np.nan_to_num(weights), np.concatenate([reader.get_tensor(n).ravel() for n in names])


def relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.slow  # two CLI runs on MNIST: ~55 s on 2 loaded cores
def test_cli_mirrored_equals_one_device(tmp_path):
    cli(*MNIST, "--num_steps=5", f"--logdir={tmp_path / 'one'}")
    cli(*MNIST, "--num_steps=5", "--distribute=mirrored", "--cpu_devices=2",
        f"--logdir={tmp_path / 'two'}")
    (w1, p1), (w2, p2) = read_run(tmp_path / "one"), read_run(tmp_path / "two")
    assert (w1 > 0).sum() > 50  # every seen example of the 5 batches has a weight in the table
    assert relative(w2, w1) < 1e-5 and relative(p2, p1) < 1e-5
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["replicas"] == 2


@pytest.mark.parametrize("args, message", [
    (["--distribute=ring"], "--distribute=ring is unknown"),
    (["--cpu_devices=2"], "--cpu_devices applies to --distribute=mirrored"),
    (["--sync_batch_norm"], "--sync_batch_norm applies to the ResNet models"),
    (["--distribute=multi_worker"], "reads the cluster from TF_CONFIG"),
    (["--model=resnet", "--units=1", "--width=0.25", "--sync_batch_norm", "--meta_grad=jvp",
      "--distribute=mirrored"], "--meta_grad=jvp does not differentiate through synchronized"),
    (["--distribute=mirrored", "--cpu_devices=2", "--batch_size=33"],
     "--batch_size=33 does not split evenly over the 2 replicas"),
])
def test_distribute_flags_refused_in_one_line(tmp_path, args, message):
    base = [a for a in MNIST if not a.startswith(("--model", "--meta_grad", "--batch_size"))]
    if "--model=resnet" not in args:
        base.append("--model=lenet")
    env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
    out = cli(*base, *args, "--num_steps=2", f"--logdir={tmp_path / 'run'}", env=env,
              check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch_workers(run_dir, num_steps, ports, logs):
    """One CLI process per port, on loopback, as the workers of one TF_CONFIG cluster; their
    output in the files `logs` (one per worker)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(len(ports)):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                               "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "l2rw_tf.main", *MNIST, f"--num_steps={num_steps}",
             "--distribute=multi_worker", f"--logdir={run_dir}"], env=env, cwd=REPO,
            stdout=open(logs[index], "w"), stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def stop(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)


@pytest.mark.slow
def test_multi_worker_equals_one_process_and_resumes_after_a_kill(tmp_path):
    steps = 12
    cli(*MNIST, f"--num_steps={steps}", f"--logdir={tmp_path / 'one'}")
    run_dir = tmp_path / "cluster"
    first = [tmp_path / f"first_{i}.log" for i in range(2)]
    procs = launch_workers(run_dir, steps, free_ports(2), first)
    try:
        # Kill worker 1 once the chief has checkpointed step 2 (or later).
        deadline = time.time() + 240
        while time.time() < deadline and not (run_dir / "ckpt" / "checkpoint").exists():
            assert all(p.poll() is None for p in procs), first[0].read_text()[-3000:]
            time.sleep(0.2)
        assert (run_dir / "ckpt" / "checkpoint").exists()
        os.killpg(procs[1].pid, signal.SIGKILL)
        try:  # the chief may fail (its peer is gone) or block in a collective: bounded
            procs[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    finally:
        stop(procs)
    assert not (run_dir / "result.json").exists()
    second = [tmp_path / f"second_{i}.log" for i in range(2)]
    procs = launch_workers(run_dir, steps, free_ports(2), second)
    try:
        for p, log in zip(procs, second):
            assert p.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        stop(procs)
    for log in second:  # both workers resumed from the chief's checkpoint
        assert "resumed from" in log.read_text(), log.read_text()[-3000:]
    assert json.loads((run_dir / "result.json").read_text())["replicas"] == 2
    (w1, p1), (w2, p2) = read_run(tmp_path / "one"), read_run(run_dir)
    assert relative(p2, p1) < 1e-5
    assert relative(w2, w1) < 1e-5


# ---------------------------------------------------------------------------------------------
# The subprocess side: `python tests/test_distribute.py <case>`.

def _batches(model, steps, n, m, seed=1):
    import tensorflow as tf
    rs = np.random.RandomState(seed)
    shape = model.input_shape[1:]
    dtype = model.trainable_variables[0].dtype
    return [({"image": tf.constant(rs.rand(n, *shape), dtype),
              "label": tf.constant(rs.randint(0, 10, n)),
              "index": tf.constant(np.arange(n) + k * n),
              "is_noisy": tf.constant(rs.rand(n) < 0.3)},
             {"image": tf.constant(rs.rand(m, *shape), dtype),
              "label": tf.constant(rs.randint(0, 10, m))})
            for k in range(steps)]


def _build(name, strategy, sync=False, floatx="float32", side=8):
    import keras

    from l2rw_tf import models, train
    keras.config.set_floatx(floatx)
    with strategy.scope():
        if name == "lenet":
            model = models.build_model("lenet", 10, (28, 28, 1), seed=0)
        else:
            model = models.build_model("resnet", 10, (side, side, 3), seed=0, units=1, width=0.25,
                                       weight_decay=1e-4, bn_momentum=0.9, sync_batch_norm=sync)
        optimizer = train.TF1Momentum(0.1, momentum=0.9)
    return model, optimizer


_STRATEGIES = {}


def _strategy(name):
    """One strategy of each kind per process: two MirroredStrategy objects would number their
    collective ops alike and TensorFlow's runtime would mix them up."""
    from l2rw_tf import distribute
    if name not in _STRATEGIES:
        _STRATEGIES[name] = distribute.make_strategy(name)
    return _STRATEGIES[name]


def _train(strategy_name, model_name, meta_grad="jvp", method="l2rw", sync=False,
           floatx="float32", steps=5, n=16, m=8, side=8):
    """Example weights (relative to uniform, per example) and parameters after `steps` CLI
    steps (train.make_train_step) on the same global batches."""
    import tensorflow as tf

    from l2rw_tf import step, train
    strategy = _strategy(strategy_name)
    model, optimizer = _build(model_name, strategy, sync, floatx, side)
    config = step.StepConfig(method=method, meta_grad=meta_grad)
    train_step, _, example_stats, _ = train.make_train_step(
        model, optimizer, config, tf.random.Generator.from_seed(0), num_examples=n * steps,
        strategy=strategy)
    for noisy, clean in _batches(model, steps, n, m):
        assert bool(train_step(noisy, clean))
    params = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    return example_stats.numpy()[:, 1] / n, params


def _differences(first, second):
    (w1, p1), (w2, p2) = first, second
    return {"weights": relative(w2, w1), "params": relative(p2, p1),
            "zero_fraction": float(np.mean(w1 == 0))}


def _compare(**kw):
    return _differences(_train("none", **kw), _train("mirrored", **kw))


def _case_lenet():
    return {"layerwise": _compare(model_name="lenet", meta_grad="layerwise"),
            "jvp": _compare(model_name="lenet", meta_grad="jvp"),
            "baseline": _compare(model_name="lenet", method="baseline")}


def _case_resnet():
    return {"sync_lookahead_float64": _compare(model_name="resnet", meta_grad="lookahead",
                                               sync=True, floatx="float64"),
            "per_replica_jvp_float64": _compare(model_name="resnet", meta_grad="jvp",
                                                floatx="float64")}


def _case_resnet_float32():
    """Float32, synchronized BN, `lookahead`: mirrored against one device, on the batches of
    `_case_resnet` and on larger ones; and the control on one device (no distribution) of plain
    BatchNorm (tf.nn.moments, two-pass variance) against synchronized BatchNorm (one-pass
    E[x^2] - E[x]^2, which Keras uses whenever there is a replica context, one device too)."""
    larger = dict(model_name="resnet", meta_grad="lookahead", side=16, n=32, m=16)
    one_sync = _train("none", sync=True, **larger)
    return {"mirrored_sync_vs_one_sync": _compare(model_name="resnet", meta_grad="lookahead",
                                                  sync=True),
            "one_sync_vs_one_plain_16": _differences(_train("none", sync=False, **larger),
                                                     one_sync),
            "mirrored_sync_vs_one_sync_16": _differences(one_sync,
                                                         _train("mirrored", sync=True, **larger))}


def _case_fit():
    """One L2RW step through Keras fit under MirroredStrategy against the CLI step, on the same
    batch (the whole arrays in one batch), and the floats one step all-reduces."""
    import keras
    import tensorflow as tf

    import l2rw_tf
    from l2rw_tf import distribute, step, train
    n, m = 32, 16
    strategy = _strategy("mirrored")
    noisy, clean = _batches(_build("lenet", tf.distribute.get_strategy())[0], 1, n, m)[0]
    results = {name: _train(kind, "lenet", meta_grad="layerwise", steps=1, n=n, m=m)[0]
               for name, kind in (("one_device", "none"), ("cli", "mirrored"))}
    with strategy.scope():
        model, _ = _build("lenet", strategy)
        trainer = l2rw_tf.L2RWModel(model, clean_data=(clean["image"], clean["label"]),
                                    clean_batch_size=m, meta_grad="layerwise",
                                    algorithm="paper")  # the command line's step
        trainer.compile(optimizer=train.TF1Momentum(0.1, momentum=0.9),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(noisy["image"], noisy["label"], batch_size=n, epochs=1, shuffle=False,
                verbose=0)
    fit_weights = trainer.example_weights()["mean_weight"] / n  # w·n there, w here

    # Communication: the collective all-reduce ops of one traced step, L2RW vs baseline.
    floats = {}
    for method in ("l2rw", "baseline"):
        model, optimizer = _build("lenet", strategy)
        with strategy.scope():
            optimizer.build(model.trainable_variables)
        config = step.StepConfig(method=method, meta_grad="layerwise")

        @tf.function
        def one_step(noisy, clean, model=model, optimizer=optimizer, config=config):
            def replica(noisy, clean):
                noisy, clean = distribute.local_part((noisy, clean))
                result = step.step_gradients(model, config, (noisy["image"], noisy["label"]),
                                             (clean["image"], clean["label"]))
                optimizer.apply_gradients(zip(result.gradients, model.trainable_variables))
            strategy.run(replica, args=(noisy, clean))

        graph = one_step.get_concrete_function(noisy, clean).graph
        floats[method] = distribute.all_reduced_floats(graph, strategy.num_replicas_in_sync)
    return {"fit_vs_cli": relative(fit_weights, results["cli"]),
            "cli_vs_one_device": relative(results["cli"], results["one_device"]),
            "parameters": int(sum(int(np.prod(v.shape)) for v in model.trainable_variables)),
            "l2rw_floats": floats["l2rw"], "baseline_floats": floats["baseline"]}


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from l2rw_tf import distribute as _distribute
    _distribute.use_cpu_devices(2)
    print(json.dumps({"lenet": _case_lenet, "resnet": _case_resnet,
                      "resnet_float32": _case_resnet_float32,
                      "fit": _case_fit}[sys.argv[1]]()))
