"""Several devices or machines (`--distribute`): TensorFlow's own strategies, and the few
cross-replica reductions that make the distributed L2RW step the one-device step.

A global noisy batch of N examples and a global clean batch of M are split evenly over R replicas
(`local_part`). The step of step.py runs on every replica, on its part, and differs from the
one-device step only where it calls the reductions below, each the identity on one replica:

* the clean gradient v = ∇θ (1/M Σ_j C_j + regularisation) is the mean over replicas of each
  replica's ∇θ (1/m Σ_{j local} C_j + regularisation) (`replica_mean`: |θ| floats). The parameters
  are the same on every replica, so the regularisation's gradient is the same too: its mean is the
  term once. With synchronized BatchNorm a replica's gradient is only its share of the global one
  (the all-reduce inside BN routes the other replicas' terms), and the mean of the shares is still
  v. Algorithm 1's look-ahead gets the same mean on the gradient its clean pass sends back
  (`with_replica_mean_gradient`);
* each replica's examples are aligned with v, and the normalisation divides by the global sum of
  the clipped alignments (`replica_sum` of one float); all-zero stays zero;
* the weighted gradient: the optimizer (Keras, under a strategy) sums the replicas' gradients, so
  each replica gives Σ_{i local} w_i ∇C_i (the weights are already global) plus 1/R of the
  regularisation's gradient (`replica_share`), and the sum is the one-device gradient (|θ| floats).

So an L2RW step all-reduces 2|θ| + 1 floats where a uniform-weight step all-reduces |θ|.

BatchNorm: Keras' layer normalises each replica's part with that part's statistics, which changes
the step (and the weights) with R; `--sync_batch_norm` builds the ResNets with
`BatchNormalization(synchronized=True)`, which all-reduces the statistics and is exact. TensorFlow's
forward mode does not differentiate through that all-reduce (measured: the JVP of the synchronized
layer's output differs from one device's by ~9 on a toy model, the reverse-mode gradient by 7e-7),
so `jvp` is refused there; `lookahead` (reverse mode throughout) is exact.
"""
import tensorflow as tf

from l2rw_tf.choices import DISTRIBUTE  # noqa: F401 -- none, mirrored, multi_worker


def use_cpu_devices(count):
    """Splits the (first) CPU into `count` logical devices, so that a machine without
    accelerators runs `mirrored` on several replicas. Must come before TensorFlow initialises its
    devices (before the first op); a RuntimeError after."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(int(count))])


def make_strategy(name):
    """The strategy of `--distribute`: "none" is TensorFlow's default (one device); "mirrored" is
    `MirroredStrategy` on every local GPU, or every logical CPU device when there is no GPU
    (`--cpu_devices`); "multi_worker" is `MultiWorkerMirroredStrategy`, which reads the cluster
    and this process' task from TF_CONFIG."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(DISTRIBUTE)}")


def num_replicas():
    """Replicas in sync in the current replica context (1 on one device or outside `run`)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def replica_sum(value):
    """Σ over the replicas of `value` (a tensor or a nest), on every replica; `value` on one."""
    if num_replicas() == 1:
        return value
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)


def replica_mean(value):
    """The mean over the replicas of `value` (a tensor or a nest); `value` on one replica."""
    replicas = num_replicas()
    if replicas == 1:
        return value
    return tf.nest.map_structure(lambda t: t / tf.cast(replicas, t.dtype), replica_sum(value))


def replica_share(value):
    """1/R of `value`: a replica's part of a term every replica computes alike (the
    regularisation), whose gradient the optimizer's all-reduce then sums to the term once."""
    replicas = num_replicas()
    return value if replicas == 1 else value / tf.cast(replicas, value.dtype)


def replica_gather(value):
    """The replicas' `value`s concatenated along the first axis (in replica order: the order of
    the global batch, see `local_part`), on every replica; `value` on one."""
    if num_replicas() == 1:
        return value
    return tf.distribute.get_replica_context().all_gather(value, axis=0)


def with_replica_mean_gradient(tensors):
    """`tensors` (a list) unchanged, except that the gradient sent back through them is averaged
    over the replicas: a clean loss computed from them then has the global clean gradient."""
    if num_replicas() == 1:
        return tensors

    @tf.custom_gradient
    def identity(*xs):
        def mean_gradient(*upstream):
            return replica_mean([tf.zeros_like(x) if g is None else tf.convert_to_tensor(g)
                                 for x, g in zip(xs, upstream)])
        return [tf.identity(x) for x in xs], mean_gradient

    return list(identity(*tensors))


def local_part(batch):
    """This replica's part of a global batch (a nest of tensors of equal first dimension N):
    rows [k·N/R, (k+1)·N/R) of replica k. The whole batch on one replica."""
    replicas = num_replicas()
    if replicas == 1:
        return batch
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group

    def part(tensor):
        size = tf.shape(tensor)[0] // replicas
        return tensor[replica * size:(replica + 1) * size]

    return tf.nest.map_structure(part, batch)


def is_chief(strategy):
    """Whether this process writes the run's files: always on one machine; the chief in a
    multi-worker cluster (TensorFlow's `should_checkpoint`)."""
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def all_reduced_floats(graph, replicas):
    """Floats all-reduced per replica by the collective ops of a traced step's `graph` (the
    FuncGraph of a `tf.function` calling `strategy.run`, which inlines the replicas' ops): the sum
    of their inputs' sizes over the replicas. Counts what TensorFlow emits, whatever asked for
    it (the step's reductions, the optimizer's, a synchronized BatchNorm's)."""
    total = 0
    for op in graph.get_operations():
        if op.type.startswith("CollectiveReduce") or op.type == "NcclAllReduce":
            total += op.inputs[0].shape.num_elements()
    return total / replicas
