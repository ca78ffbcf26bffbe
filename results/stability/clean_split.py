"""Does the clean set's own sampling noise make L2RW drop good examples? (issue 23, a probe)

On clean labels L2RW ("select") drops ~40% of every batch although every label is right: with a
clean set of 20 examples, the sign of ⟨∇C_i, ∇l_g⟩ is partly the clean sample's noise. This
probe splits each step's clean batch into K parts, computes the alignment against each part, and
drops an example only when every part says its gradient opposes the clean one ("any": kept when
any part's alignment is positive; K = 1 is "select"). Equal weights on the kept examples.

Data: examples/tabular_mlp.py's (breast cancer, the same split, 10 clean per class), with 20% of
the noisy training examples held out as a validation split with their true labels (the test set
is not used). Each row: mean ± sample std of the final validation accuracy over --seeds.

    python results/stability/clean_split.py --noise=none --seeds=0,1,2,3,4
"""
import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "examples"))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--noise", default="none", choices=("none", "uniform", "background"))
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--parts", default="1,2,4", help="values of K")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import l2rw_tf  # noqa: F401
    import harness
    import keras
    import numpy as np
    import tensorflow as tf
    import tabular_mlp
    from l2rw_tf import reweight, step

    data = tabular_mlp.load_data(argparse.Namespace(dataset="breast_cancer", split_seed=0))
    split = argparse.Namespace(clean_per_class=10, ratio=args.ratio, noise=args.noise)
    loss_fn = reweight.per_example_loss
    results = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        clean, noisy, noisy_y, is_corrupted, _ = harness.split_and_corrupt(
            data["train_y"], 2, split, seed)
        held = len(noisy) // 5  # the validation split, true labels
        val_x, val_y = data["train_x"][noisy[:held]], data["train_y"][noisy[:held]]
        x, y = data["train_x"][noisy[held:]], noisy_y[held:]
        cx, cy = tf.constant(data["train_x"][clean]), tf.constant(data["train_y"][clean])
        keras.utils.set_random_seed(seed)
        initial = tabular_mlp.build_model(None, data).get_weights()
        methods = {"plain": 0, **{f"K={k}": int(k) for k in args.parts.split(",")}}
        for name, parts in methods.items():
            model = tabular_mlp.build_model(None, data)
            model.set_weights(initial)
            optimizer = keras.optimizers.SGD(0.01, momentum=0.9)

            @tf.function
            def train_step(bx, by, parts=parts, model=model, optimizer=optimizer):
                if parts == 0:
                    weights = step.uniform_weights(by)
                else:
                    size = cx.shape[0] // parts
                    order = tf.random.shuffle(tf.range(cx.shape[0]))
                    kept = tf.zeros_like(by, tf.float32)
                    for k in range(parts):
                        index = order[k * size:(k + 1) * size]
                        alignment = reweight.jvp_alignment(
                            model, (bx, by), (tf.gather(cx, index), tf.gather(cy, index)))
                        kept = tf.maximum(kept, tf.cast(alignment > 0, tf.float32))
                    weights = reweight.equal_weights(kept)  # 1 / #kept on the kept
                result = step.weighted_step(model, weights, (bx, by), loss_fn)
                optimizer.apply(result.gradients, model.trainable_variables)
                return tf.reduce_mean(tf.cast(weights > 0, tf.float32))

            rng = np.random.RandomState(seed)
            kept_fraction = []
            for s in range(args.steps):
                index = rng.choice(len(y), 32, replace=False)
                kept_fraction.append(float(train_step(tf.constant(x[index]),
                                                      tf.constant(y[index]))))
            accuracy = float(np.mean(np.argmax(model.predict(val_x, verbose=0), 1) == val_y))
            results.setdefault(name, []).append(
                {"seed": seed, "val_accuracy": accuracy,
                 "kept": float(np.mean(kept_fraction[-200:]))})
            print(name, seed, f"{accuracy:.4f}", f"kept {np.mean(kept_fraction[-200:]):.2f}",
                  flush=True)
    print(f"\n{args.noise} {args.ratio if args.noise != 'none' else ''}")
    for name, rows in results.items():
        acc = [100 * r["val_accuracy"] for r in rows]
        print(f"| {name} | {np.mean(acc):.2f} ± {np.std(acc, ddof=1):.2f} | "
              f"{np.mean([r['kept'] for r in rows]):.2f} |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps({"args": vars(args), "results": results},
                                                     indent=1))


if __name__ == "__main__":
    main()
