"""Speed and memory of the L2RW step against the baseline step, in one process.

    python -m l2rw_tf.bench                                  # every model, n = 100, m in {10, 100}
    python -m l2rw_tf.bench --models=lenet --nomemory        # LeNet timings only
    python -m l2rw_tf.bench --quick                          # a smoke test
    python -m l2rw_tf.bench --output=results/bench/bench.json
    python -m l2rw_tf.bench --models=lenet,mlp --fit --nomemory   # also Keras fit's steps
    python -m l2rw_tf.bench --models=lenet,mlp --backends=tensorflow,jax --nomemory

Time: every step variant trains its own copy of the model on fixed random batches (no input
pipeline), and the variants are timed interleaved, round after round, so that machine load affects
them alike; the figure is the median over rounds of the mean ms/step within a round.

Memory, two ways, each variant alone in a fresh subprocess; the step is traced first (no
execution), then a few steps run:
* RSS (the process as the OS sees it, default allocator): the peak-RSS mark is reset (Linux
  /proc/self/clear_refs) after tracing; the step's memory is the peak RSS during the steps minus
  the RSS before them (model, optimizer state and the TF runtime are in both). Peak RSS itself is
  reported too. It includes what glibc's malloc keeps mapped after tensors are freed.
* Tensors: the same steps in a process run with TensorFlow's own CPU allocator
  (TF_CPU_ALLOCATOR_USE_BFC=true), whose `tf.config.experimental.get_memory_info` counts the bytes
  of live tensors: the step's memory is their peak during the steps minus the bytes live before.
  With oneDNN kernels on (the package's default, see l2rw_tf/__init__.py) TensorFlow uses that
  allocator by default too, so then both probes run under it.

Agreement: the weights of every meta-gradient method on one batch, relative error against the
first (float32).

The fit path (`--fit`): `fit_l2rw` is a step of `fit.L2RWModel` (its `train_step`, meta-gradient
"auto", under the `tf.function` Keras' `Model.fit` runs, with its weight metrics and per-example
statistics), `fit_baseline` a step of the same model compiled and fitted as a plain Keras model
(`Model.fit`'s default `train_step`), both with the CLI steps' optimizer, timed interleaved with
the other variants: each is the model's `train_function` called on an iterator over the fixed
batches, as `fit` calls it every step (the Python loop around it, callbacks, is not timed). The
row's `fit` entry compares fit_l2rw / fit_baseline with the CLI step's ratio of the same method
(`l2rw_<method>` / `baseline`): the fit path's overhead is their difference.

Backends (`--backends`): a process has one Keras backend, so each backend other than TensorFlow
runs in a subprocess of its own (KERAS_BACKEND=jax), its variants timed interleaved there, and
its rows carry its name. An absolute time is not comparable across backends, a ratio to the
plain step of the same backend is (`backend_ratios`, printed as a table of its own). On JAX
every variant is a step of Keras' `fit`, the compiled model's `train_function` on its own state
(jax_step.py): `baseline` the plain model's, `l2rw_<method>` L2RWModel's with that meta-gradient
and algorithm="paper" (dropout in the meta passes, proportional weights: the CLI steps' config;
layerwise is the jvp step there), and the floor the plain step on n + m examples. Memory and the
weights' agreement are TensorFlow's only.

Floor: `baseline_n+m` is the baseline step on the noisy and clean images together (n + m of them),
timed with the others. Every exact L2RW step runs a forward and a backward pass over those n + m
images (the clean gradient needs the m, the weights and the step the n), so its ratio is what no
exact method can beat on the machine: at m = n, 2× wherever the step's cost grows with the batch.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags; defined only when run as a program, so that importing this module
    (tests) does not clash with l2rw_tf.main's flags of the same names."""
    flags.DEFINE_list("models", ["lenet", "mlp", "resnet32", "wrn28_2"],
                      "Models to benchmark (see BENCH_MODELS).")
    flags.DEFINE_integer("batch_size", 100, "Noisy batch size n.")
    flags.DEFINE_list("clean_batch_sizes", ["10", "100"], "Clean batch sizes m.")
    flags.DEFINE_list("meta_grads", ["lookahead", "jvp", "layerwise"], "Meta-gradient methods to "
                      "time (jvp and lookahead also add l2rw_*_unfused: the meta-gradient in a "
                      "pass of its own; layerwise is skipped on models it does not apply to).")
    flags.DEFINE_integer("rounds", 15, "Timing rounds (the median is reported).")
    flags.DEFINE_integer("steps", 10, "Steps per variant per round.")
    flags.DEFINE_bool("memory", True, "Measure peak memory of every variant (one subprocess each).")
    flags.DEFINE_bool("quick", False, "LeNet only, few rounds and steps: checks that everything "
                      "runs.")
    flags.DEFINE_bool("fit", False, "Also time the Keras fit path: fit_l2rw (L2RWModel's "
                      "train_step under Model.fit's tf.function) and fit_baseline (the same "
                      "model's plain Model.fit step).")
    flags.DEFINE_list("backends", ["tensorflow"], "Keras backends to time (tensorflow, jax): "
                      "each other than TensorFlow in a subprocess of its own (see the module "
                      "docstring).")
    flags.DEFINE_string("output", None, "Write the results as JSON here.")
    flags.DEFINE_string("probe", None, "Internal: MODEL,M,VARIANT: print the memory of one "
                        "variant.")
    flags.DEFINE_bool("backend_probe", False, "Internal: time this process' Keras backend "
                      "(KERAS_BACKEND) and print its rows as JSON.")


# name -> (builder name, builder kwargs, input shape, classes). wrn28_2 is WRN-28 at width 2
# (the WRN-28-10 structure with 32/64/128 filters): WRN-28-10 itself takes seconds per step here.
BENCH_MODELS = {
    "lenet": ("lenet", {}, (28, 28, 1), 2),
    "mlp": ("mlp", {}, (28, 28, 1), 10),
    "resnet32": ("resnet32", {}, (32, 32, 3), 10),
    "wrn28_2": ("resnet", {"units": 4, "width": 2.0, "dropout": 0.3}, (32, 32, 3), 10),
    "wrn28_10": ("wrn28_10", {}, (32, 32, 3), 10),
    "resnet8_half": ("resnet", {"units": 1, "width": 0.5}, (32, 32, 3), 10),  # CIFAR CPU configs
}


def random_batch(n, shape, classes, seed):
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    return {"image": tf.constant(rng.random((n, *shape), dtype=np.float32)),
            "label": tf.constant(rng.integers(0, classes, n)),
            "is_noisy": tf.zeros([n], tf.bool), "index": tf.range(n)}


def step_configs(meta_grads):
    """The step variants: the baseline and L2RW with each meta-gradient method."""
    from l2rw_tf.step import StepConfig
    variants = {"baseline": StepConfig(method="baseline")}
    for g in meta_grads:
        variants[f"l2rw_{g}"] = StepConfig(method="l2rw", meta_grad=g)
    for g in meta_grads:  # the meta-gradient in a pass of its own, before the weighted step
        if g != "layerwise":  # layerwise has no separate pass: its weights come from the step's
            variants[f"l2rw_{g}_unfused"] = StepConfig(method="l2rw", meta_grad=g, fused=False)
    return variants


def build(model_name, n, m):
    """(fresh model factory, noisy batch, clean batch) of a benchmark model."""
    from l2rw_tf import models
    builder, kwargs, shape, classes = BENCH_MODELS[model_name]
    make = lambda: models.build_model(builder, classes, shape, seed=0, **kwargs)  # noqa: E731
    return make, random_batch(n, shape, classes, 1), random_batch(m, shape, classes, 2)


def make_step(make_model, config):
    import tensorflow as tf
    from l2rw_tf import train
    model = make_model()
    return model, train.make_train_step(model, train.TF1Momentum(1e-3), config,
                                        tf.random.Generator.from_seed(0))[0]


def make_fit_steps(make_model, noisy, clean):
    """The fit path's steps: ({"fit_baseline": step, "fit_l2rw": step}, L2RW's meta-gradient).
    Each step is one call of a compiled model's `train_function` (what `Model.fit` calls every
    step) on an endless iterator of the fixed batches; a one-step `fit` first builds the model,
    the optimizer, the metrics and the function, as `fit` does."""
    import tensorflow as tf
    from l2rw_tf import reweight, train
    from l2rw_tf.fit import L2RWModel
    loss = reweight.per_example_loss  # the CLI steps' loss (sigmoid for LeNet's single logit)
    x, y, cx, cy = noisy["image"], noisy["label"], clean["image"], clean["label"]
    n, m = int(x.shape[0]), int(cx.shape[0])
    baseline = make_model()
    baseline.compile(optimizer=train.TF1Momentum(1e-3), loss=loss)
    baseline.fit(x, y, batch_size=n, epochs=1, shuffle=False, verbose=0)
    # The CLI steps' algorithm (dropout in the meta passes, proportional weights), which the
    # row's fit entry compares with.
    trainer = L2RWModel(make_model(), clean_data=(cx, cy), clean_batch_size=m,
                        algorithm="paper")
    trainer.compile(optimizer=train.TF1Momentum(1e-3), loss=loss)
    trainer.fit(x.numpy(), y.numpy(), batch_size=n, epochs=1, shuffle=False, verbose=0)
    # The elements fit's datasets give: (x, y) for Keras; for L2RWModel the noisy batch with its
    # sample weights and positions (per-example statistics), zipped with a clean batch.
    plain = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    zipped = iter(tf.data.Dataset.from_tensors(
        ((x, y, tf.ones([n], tf.float32), tf.range(n, dtype=tf.int64)), (cx, cy))).repeat())
    steps = {"fit_baseline": lambda noisy, clean: baseline.train_function(plain),
             "fit_l2rw": lambda noisy, clean: trainer.train_function(zipped)}
    return steps, trainer.meta_grad


def make_jax_fit_steps(make_model, noisy, clean, meta_grads):
    """On the JAX backend: {"baseline": the plain model's fit step, "l2rw_<method>": L2RWModel's
    (algorithm="paper") with that meta-gradient, FLOOR: the plain step on the n + m examples},
    each one call of the compiled model's `train_function` on the fixed batch, carrying its own
    state (trainable, non-trainable, optimizer and metric values) from call to call as `fit`
    does, and waiting for the result. A one-step `fit` first builds everything."""
    import itertools

    import jax
    import keras
    import numpy as np
    from l2rw_tf.fit import L2RWModel
    x, y, cx, cy = (np.asarray(t) for t in (noisy["image"], noisy["label"], clean["image"],
                                            clean["label"]))
    n, m = len(y), len(cy)

    binary = make_model().output_shape[-1] == 1  # LeNet's binary task: one logit

    def labels(y):
        return y.reshape(-1, 1).astype(np.float32) if binary else y

    def compiled(model):
        loss = (keras.losses.BinaryCrossentropy(from_logits=True) if binary
                else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss=loss)
        return model

    def step(model, data):
        state = [model._get_jax_state(  # noqa: SLF001
            trainable_variables=True, non_trainable_variables=True, optimizer_variables=True,
            metrics_variables=True)]
        batches = itertools.repeat(jax.device_put(data))

        def one_step(noisy, clean):
            logs, state[0] = model.train_function(state[0], batches)
            jax.block_until_ready(state[0])

        return one_step

    steps = {}
    for name, (xs, ys) in {"baseline": (x, y),
                           FLOOR: (np.concatenate([x, cx]), np.concatenate([y, cy]))}.items():
        plain = compiled(make_model())
        plain.fit(xs, labels(ys), batch_size=len(ys), epochs=1, shuffle=False, verbose=0)
        steps[name] = step(plain, (xs, labels(ys)))
    for meta_grad in meta_grads:
        if meta_grad == "layerwise":  # the jvp step on JAX
            continue
        trainer = compiled(L2RWModel(make_model(), clean_data=(cx, labels(cy)),
                                     clean_batch_size=m, meta_grad=meta_grad,
                                     algorithm="paper"))
        trainer.fit(x, labels(y), batch_size=n, epochs=1, shuffle=False, verbose=0)
        steps[f"l2rw_{meta_grad}"] = step(trainer, (
            (x, labels(y), np.ones(n, np.float32), np.arange(n, dtype=np.int64)),
            (cx, labels(cy))))
    return steps


def bench_model_jax(model_name, n, clean_sizes, meta_grads, rounds, steps):
    """The rows of `bench_model` on the JAX backend (this process' must be JAX): the fit steps
    of `make_jax_fit_steps`, timed interleaved."""
    rows = []
    for m in clean_sizes:
        make_model, noisy, clean = build(model_name, n, m)
        ms = time_variants(make_jax_fit_steps(make_model, noisy, clean, meta_grads), noisy,
                           clean, rounds, steps)
        rows.append({"backend": "jax", "model": model_name, "n": n, "m": m, "ms_per_step": ms,
                     "ratio_to_baseline": {k: v / ms["baseline"] for k, v in ms.items()},
                     "weights_relative_error": {}})
    return rows


def other_backend_rows(backend, model_names, n, clean_sizes, meta_grads, rounds, steps):
    """`bench_model_jax`'s rows from a subprocess under KERAS_BACKEND=`backend`."""
    if backend != "jax":
        raise ValueError(f"unknown backend {backend!r}: choose tensorflow or jax")
    command = [sys.executable, "-m", "l2rw_tf.bench", "--backend_probe",
               f"--models={','.join(model_names)}", f"--batch_size={n}",
               f"--clean_batch_sizes={','.join(map(str, clean_sizes))}",
               f"--meta_grads={','.join(meta_grads)}", f"--rounds={rounds}", f"--steps={steps}"]
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"the {backend} benchmark failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def backend_ratios(rows):
    """Per model, n, m and backend: the L2RW step with the model's `auto` meta-gradient (on JAX:
    jvp, which `auto` gives there for every model but recurrent ones) over the plain step, and
    the floor's ratio."""
    from l2rw_tf import fit
    table = []
    for r in rows:
        backend = r.get("backend", "tensorflow")
        meta_grad = (fit.choose_meta_grad(build(r["model"], 1, 1)[0]())
                     if backend == "tensorflow" else "jvp")
        variant = f"l2rw_{meta_grad}"
        ratio = r["ratio_to_baseline"].get(variant)
        # fit's L2RW step over fit's plain step: JAX's steps are fit's; TensorFlow's with --fit.
        fit_ratio = ratio if backend != "tensorflow" else r.get("fit", {}).get("fit_ratio")
        table.append({"model": r["model"], "n": r["n"], "m": r["m"], "backend": backend,
                      "variant": variant, "ratio": ratio, "fit_ratio": fit_ratio,
                      "floor": r["ratio_to_baseline"].get(FLOOR)})
    return table


def format_backend_ratios(table):
    def cell(value):
        return "-" if value is None else f"{value:.2f}x"

    lines = ["L2RW step / plain step, each backend's own (TensorFlow: the CLI steps, and fit's "
             "with --fit; JAX: fit's train_function)",
             f"{'model':<10}{'n':>5}{'m':>5}  {'backend':<12}{'variant':<18}{'ratio':>8}"
             f"{'fit':>8}{'floor':>8}"]
    for t in table:
        lines.append(f"{t['model']:<10}{t['n']:>5}{t['m']:>5}  {t['backend']:<12}"
                     f"{t['variant']:<18}{cell(t['ratio']):>8}{cell(t['fit_ratio']):>8}"
                     f"{cell(t['floor']):>8}")
    return "\n".join(lines)


def fit_overhead(ms, meta_grad):
    """fit_l2rw / fit_baseline against the CLI step's ratio of the same method."""
    cli = f"l2rw_{meta_grad}"
    fit_ratio = ms["fit_l2rw"] / ms["fit_baseline"]
    cli_ratio = ms[cli] / ms["baseline"] if cli in ms else None
    return {"meta_grad": meta_grad, "cli_variant": cli, "fit_ratio": fit_ratio,
            "cli_ratio": cli_ratio,
            "overhead": None if cli_ratio is None else fit_ratio - cli_ratio}


def time_variants(steps_by_name, noisy, clean, rounds, steps):
    """Median over rounds of ms/step for each variant, timed interleaved."""
    samples = {name: [] for name in steps_by_name}
    for step in steps_by_name.values():  # warm-up: trace and run a few steps
        for _ in range(3):
            step(noisy, clean)
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            for _ in range(steps):
                step(noisy, clean)
            samples[name].append((time.perf_counter() - start) / steps * 1000.0)
    return {name: statistics.median(s) for name, s in samples.items()}


def weight_agreement(make_model, noisy, clean, meta_grads):
    """Max relative difference of each method's weights from the first method's."""
    import numpy as np
    from l2rw_tf import reweight
    model = make_model()
    weights = {g: reweight.example_weights(model, (noisy["image"], noisy["label"]),
                                           (clean["image"], clean["label"]), g).numpy()
               for g in meta_grads}
    reference = weights[meta_grads[0]]
    scale = max(float(np.max(np.abs(reference))), 1e-30)
    return {g: float(np.max(np.abs(w - reference))) / scale for g, w in weights.items()}


def _rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def memory_probe(model_name, n, m, variant, steps=5):
    """Memory of `steps` steps of one variant, in this (fresh) process (see `memory_during`)."""
    make_model, noisy, clean = build(model_name, n, m)
    _, step = make_step(make_model, step_configs(["lookahead", "jvp", "layerwise"])[variant])
    step.get_concrete_function(noisy, clean)  # trace only
    return memory_during(lambda: step(noisy, clean), steps)


def memory_during(run, calls):
    """Memory of `calls` calls of `run` (already traced) in this process, in MB: peak RSS and its
    rise over the RSS before them, and, under TF's counting allocator, the rise of live tensors
    (`tensor_step_mb`)."""
    try:  # reset the peak-RSS mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    rest = _rss_mb("VmRSS")
    tensors_before = _live_tensor_mb(reset_peak=True)
    for _ in range(calls):
        run()
    peak = _rss_mb("VmHWM")
    result = {"rest_mb": rest, "peak_mb": peak, "step_mb": peak - rest, "peak_reset": reset}
    if tensors_before is not None:
        result["tensor_step_mb"] = _live_tensor_mb(peak=True) - tensors_before
    return result


def _live_tensor_mb(reset_peak=False, peak=False):
    """MB of live tensors on the CPU (their peak since the last reset if `peak`), or None when
    the allocator keeps no statistics (TF's default CPU allocator; TF_CPU_ALLOCATOR_USE_BFC=true
    turns them on)."""
    import tensorflow as tf
    try:
        if reset_peak:
            tf.config.experimental.reset_memory_stats("CPU:0")
        info = tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:
        return None
    return info["peak" if peak else "current"] / 2**20


def probe_env(counting):
    """Environment of a memory-probe subprocess: TF's default CPU allocator, or its counting one
    (TF_CPU_ALLOCATOR_USE_BFC=true, which keeps the live-tensor statistics)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    return {**env, "TF_CPU_ALLOCATOR_USE_BFC": "true"} if counting else env


def measure_memory(model_name, n, m, variants):
    """memory_probe of every variant, each in a subprocess of its own: once with the default
    allocator (RSS), once with TF's counting allocator (live tensors)."""
    result = {}
    for variant in variants:
        rss, counted = (json.loads(subprocess.run(
            [sys.executable, "-m", "l2rw_tf.bench", f"--probe={model_name},{m},{variant}",
             f"--batch_size={n}"], capture_output=True, text=True, check=True,
            env=probe_env(counting)).stdout.strip().splitlines()[-1]) for counting in (False, True))
        result[variant] = {**rss, "tensor_step_mb": counted.get("tensor_step_mb", float("nan"))}
    return result


def applicable(make_model, meta_grads):
    """The methods of `meta_grads` that apply to the model (layerwise: BN/dropout-free chains)."""
    from l2rw_tf import reweight
    if "layerwise" not in meta_grads:
        return list(meta_grads)
    try:
        reweight.layerwise_layers(make_model())
        return list(meta_grads)
    except ValueError:
        return [g for g in meta_grads if g != "layerwise"]


FLOOR = "baseline_n+m"


def bench_model(model_name, n, clean_sizes, meta_grads, rounds, steps, memory=False,
                fit=False):
    import tensorflow as tf
    rows = []
    for m in clean_sizes:
        make_model, noisy, clean = build(model_name, n, m)
        meta_grads = applicable(make_model, meta_grads)
        variants = step_configs(meta_grads)
        step_fns = {name: make_step(make_model, config)[1] for name, config in variants.items()}
        # A floor, not a method: the baseline step on all n + m images at once. An exact L2RW step
        # runs a forward and a backward pass over the noisy and the clean images, so it cannot
        # cost less than this on a machine where the batch size sets the cost.
        joined = {k: tf.concat([noisy[k], clean[k]], axis=0) for k in noisy}
        floor_step = make_step(make_model, variants["baseline"])[1]
        step_fns[FLOOR] = lambda noisy, clean: floor_step(joined, clean)
        if fit:
            fit_steps, fit_meta_grad = make_fit_steps(make_model, noisy, clean)
            step_fns.update(fit_steps)
        ms = time_variants(step_fns, noisy, clean, rounds, steps)
        row = {"backend": "tensorflow", "model": model_name, "n": n, "m": m, "ms_per_step": ms,
               "ratio_to_baseline": {k: v / ms["baseline"] for k, v in ms.items()},
               "weights_relative_error": weight_agreement(make_model, noisy, clean, meta_grads)}
        if fit:
            row["fit"] = fit_overhead(ms, fit_meta_grad)
        if memory:
            mem = measure_memory(model_name, n, m, variants)
            row["memory"] = mem
            row["step_memory_ratio"] = {k: v["step_mb"] / mem["baseline"]["step_mb"]
                                        for k, v in mem.items()}
            row["tensor_memory_ratio"] = {
                k: v["tensor_step_mb"] / mem["baseline"]["tensor_step_mb"] for k, v in mem.items()}
        rows.append(row)
    return rows


def machine():
    import l2rw_tf
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu_count": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
            **l2rw_tf.runtime()}


def format_table(rows):
    variants = list(dict.fromkeys(v for r in rows for v in r["ms_per_step"]))
    width = max(22, *(len(v) + 2 for v in variants))
    header = (f"{'model':<10}{'n':>5}{'m':>5}  {'backend':<12}"
              + "".join(v.rjust(width) for v in variants) + "   weights rel. err")
    rule = "-" * len(header)

    def table_rows(cell, table, tail=lambda r: ""):
        """A line per benchmark row that has `table`: `cell(row, variant)` per variant ("-"
        where it is missing)."""
        return [f"{r['model']:<10}{r['n']:>5}{r['m']:>5}  {r.get('backend', 'tensorflow'):<12}"
                + "".join((cell(r, v) if v in r[table] else "-").rjust(width) for v in variants)
                + tail(r) for r in rows if table in r]

    lines = [header, rule] + table_rows(
        lambda r, v: f"{r['ms_per_step'][v]:.2f} ms ({r['ratio_to_baseline'][v]:4.2f}x)",
        "ms_per_step", tail=lambda r: f"   {max(r['weights_relative_error'].values()):.1e}"
        if r["weights_relative_error"] else "   -")
    fit_rows = [r for r in rows if "fit" in r]
    if fit_rows:
        lines += ["", "fit path: fit_l2rw / fit_baseline (Keras Model.fit's train_function) "
                  "against the CLI step's l2rw_<method> / baseline", rule]
        for r in fit_rows:
            f = r["fit"]
            cli = "-" if f["cli_ratio"] is None else f"{f['cli_ratio']:.2f}x"
            overhead = "-" if f["overhead"] is None else f"{f['overhead']:+.2f}"
            lines.append(f"{r['model']:<10}{r['n']:>5}{r['m']:>5}  fit {f['fit_ratio']:.2f}x   "
                         f"CLI {cli} ({f['cli_variant']})   fit - CLI {overhead}")
    if len({r.get("backend", "tensorflow") for r in rows}) > 1:
        lines += ["", format_backend_ratios(backend_ratios(rows))]
    if any("memory" in r for r in rows):  # TensorFlow's rows
        lines += ["", "step memory: peak RSS during steps minus RSS before them, MB "
                  "(ratio to baseline); [peak RSS MB]", rule] + table_rows(
            lambda r, v: f"{r['memory'][v]['step_mb']:.0f} ({r['step_memory_ratio'][v]:4.2f}x) "
                         f"[{r['memory'][v]['peak_mb']:5.0f}]", "memory")
    if any("tensor_memory_ratio" in r for r in rows):
        lines += ["", "step memory: peak bytes of live tensors during steps minus those before "
                  "them, MB (ratio to baseline)", rule] + table_rows(
            lambda r, v: f"{r['memory'][v]['tensor_step_mb']:.0f} "
                         f"({r['tensor_memory_ratio'][v]:4.2f}x)", "tensor_memory_ratio")
    return "\n".join(lines)


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if FLAGS.probe:
        model_name, m, variant = FLAGS.probe.split(",")
        print(json.dumps(memory_probe(model_name, FLAGS.batch_size, int(m), variant)))
        return
    unknown = [name for name in FLAGS.models if name not in BENCH_MODELS]
    if unknown:
        raise app.UsageError(f"unknown model {unknown[0]}: choose from {', '.join(BENCH_MODELS)}")
    model_names = ["lenet"] if FLAGS.quick else FLAGS.models
    rounds, steps = (2, 2) if FLAGS.quick else (FLAGS.rounds, FLAGS.steps)
    clean_sizes = [int(m) for m in FLAGS.clean_batch_sizes]
    if FLAGS.backend_probe:  # in a subprocess of `other_backend_rows`
        print(json.dumps([row for model_name in model_names for row in bench_model_jax(
            model_name, FLAGS.batch_size, clean_sizes, FLAGS.meta_grads, rounds, steps)]))
        return
    unknown = [b for b in FLAGS.backends if b not in ("tensorflow", "jax")]
    if unknown:
        raise app.UsageError(f"unknown backend {unknown[0]}: choose tensorflow or jax")
    rows = []
    for model_name in model_names if "tensorflow" in FLAGS.backends else []:
        rows += bench_model(model_name, FLAGS.batch_size, clean_sizes, FLAGS.meta_grads,
                            rounds, steps, memory=FLAGS.memory, fit=FLAGS.fit)
        print(format_table(rows[-len(clean_sizes):]), flush=True)  # progress
    for backend in FLAGS.backends:
        if backend != "tensorflow":
            rows += other_backend_rows(backend, model_names, FLAGS.batch_size, clean_sizes,
                                       FLAGS.meta_grads, rounds, steps)
    result = {"machine": machine(), "rounds": rounds, "steps_per_round": steps, "rows": rows}
    if any(b != "tensorflow" for b in FLAGS.backends):
        from importlib import metadata
        result["machine"]["jax"] = metadata.version("jax")
    print()
    print(format_table(rows))
    print(f"(median of {rounds} interleaved rounds of {steps} steps; {result['machine']})")
    if FLAGS.output:
        os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
        with open(FLAGS.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
