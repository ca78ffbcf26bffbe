"""The comparison the examples share: plain Keras training against L2RW on the same noisy data.

Each example script builds its data (real data, no download) and a Keras model, and hands them
to `main`. For every seed it then

1. draws a clean set of `--clean_per_class` examples per class from the training split, and
   corrupts `--ratio` of the remaining (noisy) training labels with `--noise` (UniformFlip: each
   corrupted label becomes another class, uniformly; BackgroundFlip: all become one class), with
   `l2rw_tf.noise.corrupt_labels`, then shuffles them so the corrupted examples are no block;
2. builds the model once and copies its initial weights into every method, so they all start
   from the same parameters (BatchNorm statistics included);
3. trains with the same optimizer (SGD with momentum 0.9; by default the learning rate drops
   tenfold after half the steps and again after three quarters), batch size and number of steps:
   - `plain`: `model.fit` on the noisy set, in the very batches `L2RWModel.fit` draws
     (`l2rw_tf.fit.noisy_batches`),
   - `l2rw`: `l2rw_tf.L2RWModel(model, clean_data=clean set).fit` on the noisy set, each step's
     meta-gradient on the whole clean set (`--clean_batch_size`, as the paper's 100 of 100),
   - `clean only` (unless `--no-clean_only`): `model.fit` on the clean set alone, as many steps
     (what the clean set is worth without the noisy data);
4. measures every model's accuracy on the test split (never used for any choice), how many
   corrupted training examples each model predicts with their wrong given label (how much of the
   noise it memorised), L2RW's mean weight on corrupted vs clean examples
   (`trainer.example_weights()`, 1 = uniform), and the mislabel ranking of `l2rw_tf.label_issues`:
   its precision at k = the number of corrupted examples, beside chance (the corrupted fraction)
   and beside ranking by the plain model's probability of the given label.

Writes into `--out` (default runs/examples/<name>/; a directory already holding files is refused
unless `--overwrite`): results.json (every number, flags, timings, package versions), results.md (the
table printed), and per seed seed_<s>/label_issues.csv (the full L2RW ranking with the true
labels), seed_<s>/history.csv (per epoch, per method) and, for images, seed_<s>/suspects.png.
"""
import argparse
import csv
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import l2rw_tf  # noqa: E402  (sets TensorFlow's CPU options before TensorFlow loads)
from l2rw_tf.train import finite_or_null  # noqa: E402  (strict JSON: NaN as null)

def parser(name, description, *, epochs, batch_size, lr, clean_per_class=10, seeds="0",
           noise="uniform", ratio=0.4):
    """The flags every example takes, with the example's own defaults."""
    p = argparse.ArgumentParser(prog=f"python examples/{name}.py", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=epochs,
                   help="passes over the noisy training set (every method takes the same steps)")
    p.add_argument("--batch_size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--lr_schedule", choices=("step", "constant"), default="step",
                   help="step: the learning rate / 10 after half the steps and / 100 after "
                        "three quarters (as the paper's schedules); constant: --lr throughout")
    p.add_argument("--noise", choices=("uniform", "background", "none"), default=noise,
                   help="UniformFlip (another class, uniformly), BackgroundFlip (one class) or "
                        "none (every label as given: what L2RW costs on clean data)")
    p.add_argument("--ratio", type=float, default=ratio,
                   help="fraction of the noisy training labels corrupted (ignored with "
                        "--noise=none)")
    p.add_argument("--clean_per_class", type=int, default=clean_per_class,
                   help="trusted examples per class, taken out of the training split")
    p.add_argument("--clean_batch_size", type=int, default=0,
                   help="clean examples in each step's meta-gradient (0: the whole clean set, "
                        "as the paper's 100 of 100; see examples/README.md)")
    p.add_argument("--seeds", default=seeds,
                   help="comma-separated seeds: each draws its own split, noise and initial "
                        "weights; the table gives each seed and the mean")
    p.add_argument("--clean_only", action=argparse.BooleanOptionalAction, default=True,
                   help="also train on the clean set alone, for as many steps")
    p.add_argument("--out", default=None, help=f"output directory (default runs/examples/{name})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in --out")
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2),
                   help="Keras' progress output while training")
    return p


def parse(p, argv):
    """Parses and checks the common flags (before TensorFlow is imported); exits 2 on error."""
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds={args.seeds!r}: give comma-separated integers")
    if not args.seeds:
        p.error("--seeds: give at least one seed")
    for flag in ("epochs", "batch_size", "clean_per_class"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1")
    if args.clean_batch_size < 0:
        p.error("--clean_batch_size must be 0 (the whole clean set) or more")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error("--lr must be a positive number")
    if args.noise != "none" and not 0 < args.ratio < 1:
        p.error("--ratio must be in (0, 1)")
    return args


def prepare_out(p, args, name):
    """The output directory, created; refuses (exit 2) to replace an earlier run's results."""
    out = pathlib.Path(args.out or os.path.join("runs", "examples", name))
    if out.exists() and not out.is_dir():
        p.error(f"--out={out} is a file")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        p.error(f"--out={out} already holds results; pass --overwrite to replace them or "
                f"choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def stratified_split(labels, test_fraction, seed=0):
    """(train, test) index arrays: `test_fraction` of each class, at random (seeded), for data
    that comes without a test split (the scikit-learn bundled datasets)."""
    import numpy as np
    rng = np.random.RandomState(seed)
    test = []
    for c in np.unique(labels):
        of_class = rng.permutation(np.flatnonzero(labels == c))
        test += of_class[:int(round(test_fraction * len(of_class)))].tolist()
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def need_sklearn():
    """scikit-learn, or exit 2 saying how to install it (pip install -e ".[examples]")."""
    try:
        import sklearn.datasets
    except ImportError:
        raise SystemExit("error: this example reads a dataset bundled with scikit-learn: "
                         "pip install scikit-learn (or pip install -e \".[examples]\")") from None
    return sklearn.datasets


def split_and_corrupt(train_y, num_classes, args, seed):
    """Indices into the training split: (clean, noisy) and the noisy labels with their corrupted
    mask, all a function of the seed."""
    import numpy as np
    from l2rw_tf import noise

    rng = np.random.RandomState(seed)
    order = rng.permutation(len(train_y))
    is_clean = np.zeros(len(order), bool)
    for c in range(num_classes):
        of_class = np.flatnonzero(train_y[order] == c)
        if len(of_class) < args.clean_per_class:
            raise SystemExit(f"error: class {c} has {len(of_class)} training examples, fewer "
                             f"than --clean_per_class={args.clean_per_class}")
        is_clean[of_class[:args.clean_per_class]] = True
    clean, noisy = order[is_clean], order[~is_clean]
    # corrupt_labels corrupts the first `ratio` of an already shuffled array ...
    noisy_labels, is_corrupted, background = noise.corrupt_labels(
        train_y[noisy], num_classes, args.ratio, noise=args.noise, seed=seed)
    # ... then one more shuffle, so that the corrupted examples are not one block of positions.
    mix = rng.permutation(len(noisy))
    return clean, noisy[mix], noisy_labels[mix], is_corrupted[mix], background


def _softmax(z):
    import numpy as np
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _history_rows(history, method):
    keys = sorted(history.history)
    for epoch in range(len(history.history[keys[0]]) if keys else 0):
        yield {"method": method, "epoch": epoch + 1,
               **{k: float(history.history[k][epoch]) for k in keys}}


def run_seed(seed, args, data, build_model, out_dir):
    """Trains every method on one seed's split and noise; returns its numbers."""
    import keras
    import numpy as np
    import tensorflow as tf
    from l2rw_tf import ranking
    from l2rw_tf.fit import EpochKey, noisy_batches

    train_x, train_y, test_x, test_y = data["train_x"], data["train_y"], data["test_x"], \
        data["test_y"]
    num_classes = data["num_classes"]
    clean, noisy, noisy_y, is_corrupted, background = split_and_corrupt(
        train_y, num_classes, args, seed)
    x, true_y = train_x[noisy], train_y[noisy]
    clean_x, clean_y = train_x[clean], train_y[clean]
    n, k = len(noisy), int(is_corrupted.sum())
    steps_per_epoch = math.ceil(n / args.batch_size)
    steps = steps_per_epoch * args.epochs
    noise = "clean labels" if args.noise == "none" else f"{args.noise} {args.ratio:.0%}"
    print(f"seed {seed}: {n} noisy training examples ({k} corrupted, {noise}"
          f"{'' if background is None else f', background class {background}'}), "
          f"{len(clean)} clean ({args.clean_per_class} per class), {len(test_y)} test; "
          f"{steps} steps of batch {args.batch_size}", flush=True)

    keras.utils.set_random_seed(seed)
    initial = build_model().get_weights()

    def fresh_model():
        model = build_model()
        model.set_weights(initial)
        return model

    def compile_(m):
        lr = args.lr
        if args.lr_schedule == "step":  # the paper's: / 10 at half the steps, / 100 at 3/4
            lr = keras.optimizers.schedules.PiecewiseConstantDecay(
                [steps // 2, (3 * steps) // 4], [args.lr, args.lr / 10, args.lr / 100])
        m.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])

    def test_accuracy(model):
        logits = model.predict(test_x, batch_size=500, verbose=0)
        return float(np.mean(np.argmax(logits, 1) == test_y))

    def memorised(model):
        """Fraction of the corrupted training examples predicted as their (wrong) given label."""
        if not k:  # clean labels (--noise=none): nothing to memorise
            return float("nan")
        predicted = np.argmax(model.predict(x[is_corrupted], batch_size=500, verbose=0), 1)
        return float(np.mean(predicted == noisy_y[is_corrupted]))

    results, histories, models = {}, [], {}

    # Plain Keras training on the noisy set, in the batches L2RWModel(seed=seed).fit draws
    # (l2rw_tf.fit.noisy_batches, keyed on the plain optimizer's step count as the trainer's).
    keras.utils.set_random_seed(seed)
    plain = fresh_model()
    compile_(plain)
    epoch_key = EpochKey()
    batches = noisy_batches(x, noisy_y, args.batch_size, seed=seed, epoch_key=epoch_key)
    start = time.perf_counter()
    history = plain.fit(batches, epochs=args.epochs, shuffle=False, verbose=args.verbose,
                        callbacks=[epoch_key])
    results["plain"] = {"train_seconds": time.perf_counter() - start}
    histories += _history_rows(history, "plain")
    models["plain"] = plain
    print(f"  plain       {results['plain']['train_seconds']:6.1f} s", flush=True)

    # L2RW, from the same initial weights, same optimizer, batch size and epochs.
    keras.utils.set_random_seed(seed)
    model = fresh_model()
    clean_batch = min(args.clean_batch_size or len(clean), len(clean))
    trainer = l2rw_tf.L2RWModel(model, clean_data=(clean_x, clean_y),
                                clean_batch_size=clean_batch,
                                weight_on={"corrupted": is_corrupted}, seed=seed)
    compile_(trainer)
    start = time.perf_counter()
    history = trainer.fit(x, noisy_y, batch_size=args.batch_size, epochs=args.epochs,
                          verbose=args.verbose)
    results["l2rw"] = {"train_seconds": time.perf_counter() - start,
                       "algorithm": trainer.algorithm, "meta_grad": trainer.meta_grad,
                       "clean_batch_size": clean_batch}
    histories += _history_rows(history, "l2rw")
    weight_mass = history.history["weight_on_corrupted"][-1]
    models["l2rw"] = model
    print(f"  l2rw        {results['l2rw']['train_seconds']:6.1f} s "
          f"(meta_grad={trainer.meta_grad})", flush=True)

    if args.clean_only:
        keras.utils.set_random_seed(seed)
        alone = fresh_model()
        compile_(alone)
        batch = min(args.batch_size, len(clean))  # batches of the size plain training takes
        clean_batches = tf.data.Dataset.from_tensor_slices((clean_x, clean_y)).shuffle(
            len(clean), seed=seed, reshuffle_each_iteration=True).repeat().batch(
            batch, drop_remainder=True)
        start = time.perf_counter()
        history = alone.fit(clean_batches, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
                            shuffle=False, verbose=args.verbose)
        results["clean_only"] = {"train_seconds": time.perf_counter() - start}
        histories += _history_rows(history, "clean_only")
        models["clean_only"] = alone
        print(f"  clean only  {results['clean_only']['train_seconds']:6.1f} s", flush=True)

    for method, m in models.items():
        results[method].update(test_accuracy=test_accuracy(m), memorised=memorised(m))

    # L2RW's weights: mean over each group, relative to uniform (1 = 1/batch size).
    stats = trainer.example_weights()
    mean_weight = stats["mean_weight"]
    results["l2rw"].update(
        mean_weight_corrupted=float(np.nanmean(mean_weight[is_corrupted])),
        mean_weight_clean=float(np.nanmean(mean_weight[~is_corrupted])),
        weight_mass_on_corrupted_last_epoch=float(weight_mass))

    # The mislabel ranking: L2RW's (label_issues), the plain model's label probability, chance.
    ranked = l2rw_tf.label_issues(trainer, x, noisy_y, batch_size=500, seed=seed)
    order = ranked["position"]
    # With clean labels (--noise=none) nothing is to be found: no precision (None).
    l2rw_precision = ranking.precision_at(is_corrupted[order], k, ranked["tie_group"]) if k \
        else None
    p_plain = _softmax(plain.predict(x, batch_size=500, verbose=0).astype(np.float64))[
        np.arange(n), noisy_y]
    plain_order = np.lexsort([np.random.default_rng(seed).permutation(n), p_plain])
    plain_precision = ranking.precision_at(is_corrupted[plain_order], k) if k else None
    small_k = min(100, k)
    ranking_numbers = {
        "k": k, "chance": k / n,
        "l2rw_precision_at_k": l2rw_precision,
        "plain_probability_precision_at_k": plain_precision,
        "small_k": small_k,
        "l2rw_precision_at_small_k": ranking.precision_at(
            is_corrupted[order], small_k, ranked["tie_group"]) if k else None,
        "plain_probability_precision_at_small_k": ranking.precision_at(
            is_corrupted[plain_order], small_k) if k else None,
        "examples_at_mean_weight_zero": int(np.sum(ranked["mean_weight"] == 0)),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_ranking(out_dir / "label_issues.csv", ranked, true_y, is_corrupted, noisy,
                   data.get("class_names"))
    _write_csv(out_dir / "history.csv", histories)
    if data.get("images") is not None:
        images = data["images"][noisy]
        l2rw_tf.contact_sheet(images, ranked, str(out_dir / "suspects.png"), k=64,
                              class_names=data.get("class_names"))
        ranking_numbers["contact_sheet"] = str(out_dir / "suspects.png")
    top = [{"rank": int(ranked["rank"][i]), "position": int(order[i]),
            "given": int(ranked["label"][i]), "true": int(true_y[order[i]]),
            "predicted": int(ranked["predicted_label"][i]),
            "mean_weight": float(ranked["mean_weight"][i]),
            "label_probability": float(ranked["label_probability"][i])}
           for i in range(min(10, n))]
    return {"seed": seed, "num_noisy": n, "num_corrupted": k, "num_clean": len(clean),
            "num_test": len(test_y), "background_class": background, "steps": steps,
            "methods": results, "ranking": ranking_numbers, "top_suspects": top}


def _write_csv(path, rows):
    rows = list(rows)
    if not rows:
        return
    fields = []
    for row in rows:
        fields += [f for f in row if f not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _write_ranking(path, ranked, true_y, is_corrupted, noisy, class_names):
    order = ranked["position"]
    columns = ["rank", "position", "label", "predicted_label", "label_probability",
               "mean_weight", "zero_fraction", "times_seen", "tie_first_rank", "tie_last_rank"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + ["source_index", "true_label", "corrupted"])
        for i in range(len(order)):
            writer.writerow([_plain(ranked[c][i]) for c in columns]
                            + [int(noisy[order[i]]), int(true_y[order[i]]),
                               int(is_corrupted[order[i]])])


def _plain(value):
    value = value.item() if hasattr(value, "item") else value
    return f"{value:.6g}" if isinstance(value, float) else value


def _mean_std(values):
    import numpy as np
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if not len(values):
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _pct(value):
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def table(runs, clean_only):
    """The results as a Markdown table (the one printed): per method, the test accuracy of each
    seed and their mean ± sample std; then L2RW's weights and the ranking."""
    methods = ["plain", "l2rw"] + (["clean_only"] if clean_only else [])
    names = {"plain": "plain `model.fit` (noisy set)", "l2rw": "L2RW `L2RWModel.fit`",
             "clean_only": "plain `model.fit` (clean set only)"}
    seeds = [r["seed"] for r in runs]
    many = len(runs) > 1
    head = ["method", "test accuracy %" + (" (mean ± std)" if many else "")]
    head += [f"seed {s}" for s in seeds] if many else []
    head += ["corrupted examples memorised %", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        acc = [r["methods"][method]["test_accuracy"] for r in runs]
        mean, std = _mean_std(acc)
        row = [names[method], f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if many else "")]
        row += [f"{100 * a:.2f}" for a in acc] if many else []
        row += [_pct(_mean_std([r["methods"][method]["memorised"] for r in runs])[0]),
                f"{_mean_std([r['methods'][method]['train_seconds'] for r in runs])[0]:.0f}"]
        lines.append("| " + " | ".join(row) + " |")

    def mean_of(get):
        return _mean_std([get(r) for r in runs])[0]

    k = mean_of(lambda r: r["ranking"]["k"])
    small_k = mean_of(lambda r: r["ranking"]["small_k"])
    lines += [
        "",
        "| L2RW's weights and mislabel ranking" + (" (mean over seeds)" if many else "")
        + " | |",
        "|---|---|",
        f"| mean weight on corrupted / clean examples (1 = uniform) | "
        f"{mean_of(lambda r: r['methods']['l2rw']['mean_weight_corrupted']):.3f} / "
        f"{mean_of(lambda r: r['methods']['l2rw']['mean_weight_clean']):.3f} |",
        f"| weight mass on corrupted examples, last epoch (uniform: "
        f"{mean_of(lambda r: r['ranking']['chance']):.2f}) | "
        f"{mean_of(lambda r: r['methods']['l2rw']['weight_mass_on_corrupted_last_epoch']):.3f} |",
        f"| examples at mean weight 0 | "
        f"{mean_of(lambda r: r['ranking']['examples_at_mean_weight_zero']):.0f} of "
        f"{mean_of(lambda r: r['num_noisy']):.0f} |",
        f"| precision at k = {k:.0f} (the number corrupted): `label_issues` / plain model's "
        f"label probability / chance | "
        f"{mean_of(lambda r: r['ranking']['l2rw_precision_at_k']):.3f} / "
        f"{mean_of(lambda r: r['ranking']['plain_probability_precision_at_k']):.3f} / "
        f"{mean_of(lambda r: r['ranking']['chance']):.3f} |",
        f"| precision at k = {small_k:.0f}: `label_issues` / plain model's label probability | "
        f"{mean_of(lambda r: r['ranking']['l2rw_precision_at_small_k']):.3f} / "
        f"{mean_of(lambda r: r['ranking']['plain_probability_precision_at_small_k']):.3f} |",
    ]
    first = runs[0]
    lines += ["", f"Top of `label_issues` (seed {first['seed']}): rank, position, given label, "
              f"true label, predicted, mean weight, probability of the given label",
              "", "| rank | position | given | true | predicted | mean weight | p(given) |",
              "|---|---|---|---|---|---|---|"]
    for s in first["top_suspects"]:
        lines.append(f"| {s['rank']} | {s['position']} | {s['given']} | {s['true']}"
                     f"{'' if s['true'] == s['given'] else ' (corrupted)'} | {s['predicted']} | "
                     f"{s['mean_weight']:.3g} | {s['label_probability']:.2f} |")
    return "\n".join(lines)


def main(name, description, load_data, build_model, argv=None, **defaults):
    """Parses the flags (`parser`'s, with `defaults`), loads the data (`load_data(args)`: a dict
    with train_x, train_y, test_x, test_y, num_classes, optionally class_names, images (for the
    contact sheet) and description) and runs every seed; prints and writes the table."""
    p = defaults.pop("parser", None) or parser(name, description, **defaults)
    args = parse(p, sys.argv[1:] if argv is None else argv)
    out = prepare_out(p, args, name)
    start = time.perf_counter()
    data = load_data(args)
    print(f"{name}: {data.get('description', '')}", flush=True)
    runs = [run_seed(seed, args, data, lambda: build_model(args, data),
                     out / f"seed_{seed}") for seed in args.seeds]
    text = table(runs, args.clean_only)
    seconds = time.perf_counter() - start
    command = "python examples/" + name + ".py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print("\n" + text + f"\n\nwall time {seconds:.0f} s; outputs in {out}/", flush=True)
    (out / "results.md").write_text(f"`{command.strip()}`\n\n{text}\n\nwall time "
                                    f"{seconds:.0f} s\n")
    flags = {k: v for k, v in vars(args).items()}
    (out / "results.json").write_text(json.dumps(finite_or_null(
        {"example": name, "data": data.get("description", ""), "flags": flags,
         "wall_seconds": seconds, "runtime": l2rw_tf.runtime(), "runs": runs}),
        indent=1, allow_nan=False) + "\n")
    return runs
