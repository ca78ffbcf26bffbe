"""ms per training step under each --mixed_precision policy, timed interleaved in one process
(l2rw_tf.bench's timing: the median over rounds of the mean within a round; fixed random batches
of 100 noisy + 100 clean images; the CLI's step, optimizer TF1Momentum).

    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 python results/mixed_precision/speed.py
"""
import json
import sys

from l2rw_tf import bench, precision
from l2rw_tf.step import StepConfig

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
CASES = {"lenet": ("baseline", "layerwise", "jvp"), "resnet8_half": ("baseline", "jvp")}


def main(rounds=7, steps=5):
    results = {}
    for model_name, methods in CASES.items():
        make, noisy, clean = bench.build(model_name, 100, 100)
        variants = {}
        for policy in POLICIES:
            with precision.global_policy(policy):  # the models are built under the policy
                for method in methods:
                    config = (StepConfig(method="baseline") if method == "baseline"
                              else StepConfig(method="l2rw", meta_grad=method))
                    model, step = bench.make_step(make, config)
                    variants[f"{policy}/{method}"] = step
        results[model_name] = bench.time_variants(variants, noisy, clean, rounds, steps)
        print(model_name, json.dumps(results[model_name], indent=1), flush=True)
    json.dump({"ms_per_step": results, "machine": bench.machine()}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
