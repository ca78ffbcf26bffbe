"""L2RWModel's algorithms against plain training on clean and noisy labels, on a validation
split carved from the training pool (the example's test split is never read).

    python results/clean_labels/probe.py --example=mnist_cnn --noises=none,uniform40,background40 \
        --seeds=0,1 --out=results/clean_labels/probe_mnist.jsonl
    python results/clean_labels/probe.py --example=tabular_mlp --seeds=0,1,2,3,4

For each seed: the example's data and model (examples/<example>.py); a stratified part of the
training pool held out for validation (a quarter of the tabular pool; a third of 15,000 MNIST
training images, leaving the example's 10,000); the rest split and corrupted as the example does
(10 clean per class). Every variant trains from the same initial weights, in the same batches,
with the example's optimizer and schedule. Appends one JSON line per (noise, seed, variant) to
--out: validation accuracy, the fraction of the corrupted examples predicted as their wrong
label, and for L2RW the fraction of zero weights per epoch and the weight on corrupted examples.
"""
import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples"))
import harness  # noqa: E402

# (example module, its flags, the fraction of its training pool held out for validation)
EXAMPLES = {"tabular_mlp": ([], 0.25), "mnist_cnn": (["--num_train", "15000"], 1 / 3)}

NOISE_ARGS = {"none": ("none", 0.0), "uniform20": ("uniform", 0.2), "uniform40": ("uniform", 0.4),
              "background40": ("background", 0.4)}


def run(noise, seed, variants, args, out):
    import importlib
    import keras
    import numpy as np
    import l2rw_tf
    from l2rw_tf.fit import EpochKey, noisy_batches

    kind, ratio = NOISE_ARGS[noise]
    example = importlib.import_module(args.example)
    flags, val_fraction = EXAMPLES[args.example]
    ex_args = example.make_parser().parse_args(
        flags + ["--noise", kind, "--ratio", str(ratio if ratio else 0.4)]
        + (["--epochs", str(args.epochs)] if args.epochs else []))
    data = example.load_data(ex_args)
    pool_x, pool_y = data["train_x"], data["train_y"]
    fit_idx, val_idx = harness.stratified_split(pool_y, val_fraction, seed=1000 + seed)
    val_x, val_y = pool_x[val_idx], pool_y[val_idx]
    tx, ty = pool_x[fit_idx], pool_y[fit_idx]
    clean, noisy, noisy_y, is_corrupted, _ = harness.split_and_corrupt(
        ty, data["num_classes"], ex_args, seed)
    x, clean_x, clean_y = tx[noisy], tx[clean], ty[clean]
    steps = math.ceil(len(x) / ex_args.batch_size) * ex_args.epochs
    keras.utils.set_random_seed(seed)
    initial = example.build_model(ex_args, data).get_weights()

    def compiled(m):
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            [steps // 2, (3 * steps) // 4], [ex_args.lr, ex_args.lr / 10, ex_args.lr / 100])
        m.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
        return m

    for variant in variants:
        keras.utils.set_random_seed(seed)
        model = example.build_model(ex_args, data)
        model.set_weights(initial)
        start = time.perf_counter()
        record = {"example": args.example, "noise": noise, "seed": seed, "variant": variant}
        if variant == "plain":
            compiled(model)
            key = EpochKey()
            model.fit(noisy_batches(x, noisy_y, ex_args.batch_size, seed=seed, epoch_key=key),
                      epochs=ex_args.epochs, shuffle=False, verbose=0, callbacks=[key])
        else:
            trainer = compiled(l2rw_tf.L2RWModel(model, clean_data=(clean_x, clean_y),
                                                 clean_batch_size=len(clean_y),
                                                 weight_on={"corrupted": is_corrupted},
                                                 seed=seed, algorithm=variant))
            h = trainer.fit(x, noisy_y, batch_size=ex_args.batch_size, epochs=ex_args.epochs,
                            verbose=0).history
            record["zero_fraction_by_epoch"] = [round(v, 4) for v in h["zero_weight_fraction"]]
            record["mass_on_corrupted_by_epoch"] = [round(v, 4) for v in h["weight_on_corrupted"]]
            w = trainer.example_weights()["mean_weight"]
            record["kept_fraction_last_epoch"] = 1 - h["zero_weight_fraction"][-1]
        pred = np.argmax(model.predict(val_x, verbose=0), 1)
        record["val_accuracy"] = float(np.mean(pred == val_y))
        if is_corrupted.any():
            p = np.argmax(model.predict(x[is_corrupted], verbose=0), 1)
            record["memorised"] = float(np.mean(p == noisy_y[is_corrupted]))
        record["seconds"] = time.perf_counter() - start
        print(args.example, noise, seed, variant, f"{record['val_accuracy']:.4f}",
              f"kept={record.get('kept_fraction_last_epoch', 1):.3f}", flush=True)
        out.write(json.dumps(record) + "\n")
        out.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--noises", default="none,uniform40,background40")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="plain,select,calibrated",
                   help="plain (model.fit) and L2RWModel algorithms (l2rw_tf.fit.ALGORITHMS)")
    p.add_argument("--example", choices=sorted(EXAMPLES), default="tabular_mlp")
    p.add_argument("--epochs", type=int, default=0, help="0: the example's default")
    p.add_argument("--out", default=os.path.join(HERE, "probe.jsonl"))
    args = p.parse_args()
    with open(args.out, "a") as out:
        for noise in args.noises.split(","):
            for seed in map(int, args.seeds.split(",")):
                run(noise, seed, args.variants.split(","), args, out)


if __name__ == "__main__":
    main()
