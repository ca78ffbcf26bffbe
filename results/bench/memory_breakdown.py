"""Where the fused jvp step's memory goes on ResNet-32 (batch 100, clean batch 10).

    python results/bench/memory_breakdown.py > results/bench/memory_breakdown.txt

Each pass runs in fresh processes (like `l2rw_tf.bench`'s memory probes): traced first, then
three calls, measured two ways, in MB:
- RSS: peak RSS during the calls minus RSS before them (default allocator; includes what glibc's
  malloc keeps mapped after tensors are freed);
- tensors: with TensorFlow's counting CPU allocator (TF_CPU_ALLOCATOR_USE_BFC=true), the peak bytes
  of live tensors during the calls minus those live before.
- forward: the training-mode forward pass alone;
- forward+backward: the forward under a GradientTape and the gradient (the baseline step's work);
- forward-mode: the forward under a ForwardAccumulator and the JVP of the losses (the weights);
- fused jvp: `reweight.fused_l2rw_gradients`, the default L2RW step on BN models.
"""
import subprocess
import sys

PASSES = ("forward", "forward+backward", "forward-mode", "fused jvp")


def probe(name):
    import tensorflow as tf
    from l2rw_tf import bench, reweight
    make_model, noisy, clean = bench.build("resnet32", 100, 10)
    model = make_model()
    x, y = noisy["image"], noisy["label"]

    @tf.function
    def run():
        params = reweight.current_params(model)
        state = [v.value for v in model.non_trainable_variables]
        if name == "forward":
            return tf.reduce_sum(model.stateless_call(params, state, x, training=True)[0])
        if name == "forward+backward":
            with tf.GradientTape() as tape:
                tape.watch(params)
                logits, _ = model.stateless_call(params, state, x, training=True)
                loss = tf.reduce_sum(reweight.per_example_loss(y, logits))
            return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(loss, params)])
        if name == "forward-mode":
            direction = [1e-3 * tf.ones_like(p) for p in params]
            with tf.autodiff.ForwardAccumulator(params, direction) as acc:
                logits, _ = model.stateless_call(params, state, x, training=True)
                losses = reweight.per_example_loss(y, logits)
            return tf.reduce_sum(acc.jvp(losses))
        grads = reweight.fused_l2rw_gradients(model, (x, y), (clean["image"], clean["label"]))[0]
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    run.get_concrete_function()
    memory = bench.memory_during(run, 3)
    return memory.get("tensor_step_mb", memory["step_mb"])  # tensors under the counting allocator


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(f"{probe(sys.argv[1]):.0f}")
    else:
        from l2rw_tf import bench
        print("ResNet-32, batch 100 (clean batch 10), MB during 3 calls:")
        print(f"{'':>18}  {'RSS':>5}  {'tensors':>7}")
        for name in PASSES:
            rss, tensors = (subprocess.run(
                [sys.executable, __file__, name], capture_output=True, text=True, check=True,
                env=bench.probe_env(counting)).stdout.split()[-1] for counting in (False, True))
            print(f"{name:>18}  {rss:>5}  {tensors:>7}")
