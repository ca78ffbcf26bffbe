"""The meta-gradient on the models issue 15 (items 3-5) found broken: sparse (Embedding) gradients,
float64 models, and dropout in the clean meta pass (its masks must not be the noisy pass's)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from l2rw_tf import reweight, train
from l2rw_tf.step import StepConfig
from test_reweight import batches, relative_error, small_bn_model

GLOROT = keras.initializers.GlorotNormal


# ---- sparse gradients: an Embedding model ---------------------------------------------------

VOCAB, LENGTH = 40, 6


def embedding_model(weight_decay=0.0):
    """Token ids → Embedding → average pooling → Dense: the embedding's gradient is an
    IndexedSlices (only the rows of the batch's tokens), the other gradients are dense."""
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    tokens = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(
        VOCAB, 5, embeddings_regularizer=reg,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=1))(tokens)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(8, activation="tanh", kernel_initializer=GLOROT(seed=2))(x)
    outputs = keras.layers.Dense(3, kernel_regularizer=reg, kernel_initializer=GLOROT(seed=3))(x)
    return keras.Model(tokens, outputs)


def token_batches(n=12, m=5, seed=0):
    rng = np.random.default_rng(seed)
    return ((tf.constant(rng.integers(0, VOCAB, (n, LENGTH)), tf.int32),
             tf.constant(rng.integers(0, 3, n))),
            (tf.constant(rng.integers(0, VOCAB, (m, LENGTH)), tf.int32),
             tf.constant(rng.integers(0, 3, m))))


def dense(gradients):
    return [tf.convert_to_tensor(g) for g in gradients]


@pytest.mark.parametrize("include_regularization", [False, True])
def test_lookahead_equals_jvp_on_an_embedding_model(include_regularization):
    model = embedding_model(weight_decay=1e-2 if include_regularization else 0.0)
    noisy, clean = token_batches()
    params = reweight.current_params(model)
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = tf.reduce_sum(reweight.per_example_loss(noisy[1], reweight.forward(
            model, params, noisy[0])))
    assert isinstance(tape.gradient(loss, params)[0], tf.IndexedSlices)  # the case under test

    a = reweight.jvp_alignment(model, noisy, clean, include_regularization)
    b = reweight.lookahead_alignment(model, noisy, clean, include_regularization)
    assert np.max(np.abs(b)) > 0
    assert relative_error(a, b) <= 1e-4
    wa = reweight.example_weights(model, noisy, clean, "jvp", include_regularization)
    wb = reweight.example_weights(model, noisy, clean, "lookahead", include_regularization)
    assert relative_error(wa, wb) <= 1e-4


@pytest.mark.parametrize("include_regularization", [False, True])
def test_fused_lookahead_step_equals_fused_jvp_step_on_an_embedding_model(include_regularization):
    model = embedding_model(weight_decay=1e-2 if include_regularization else 0.0)
    noisy, clean = token_batches(seed=1)
    want = reweight.fused_l2rw_gradients(model, noisy, clean, include_regularization)
    got = reweight.fused_lookahead_gradients(model, noisy, clean, include_regularization)
    for name, a, b in zip(("weights", "losses", "loss"), got[1:4], want[1:4]):
        assert relative_error(a, b) <= 1e-4, name
    assert 0 < int(tf.reduce_sum(tf.cast(got[1] > 0, tf.int32))) < 12
    for a, b, v in zip(dense(got[0]), dense(want[0]), model.trainable_variables):
        assert a.shape == v.shape
        assert relative_error(a, b) <= 1e-4, v.path


def test_train_steps_on_an_embedding_model():
    """The optimizer accepts every L2RW step's gradients (sparse ones included), and the fused
    and unfused, jvp and lookahead steps land on the same parameters."""
    results = {}
    for meta_grad in ("jvp", "lookahead"):
        for fused in (True, False):
            model = embedding_model(weight_decay=1e-3)
            step, stats, _, _ = train.make_train_step(
                model, train.TF1Momentum(0.5),
                StepConfig(method="l2rw", meta_grad=meta_grad, fused=fused),
                tf.random.Generator.from_seed(0))
            for seed in range(3):
                (x, y), (xc, yc) = token_batches(seed=seed)
                step({"image": x, "label": y, "is_noisy": tf.zeros([12], tf.bool)},
                     {"image": xc, "label": yc})
            results[meta_grad, fused] = [v.numpy() for v in model.trainable_variables]
    initial = [v.numpy() for v in embedding_model(weight_decay=1e-3).trainable_variables]
    want = results["jvp", True]
    assert np.max(np.abs(want[0] - initial[0])) > 1e-3  # the embedding did move
    for key, got in results.items():
        for a, b in zip(got, want):
            assert np.max(np.abs(a - b)) <= 1e-5, key


def test_layerwise_refuses_an_embedding_model():
    model = embedding_model()
    noisy, clean = token_batches()
    with pytest.raises(ValueError, match="outside Dense / Conv2D"):
        reweight.example_weights(model, noisy, clean, "layerwise")
    with pytest.raises(ValueError, match="outside Dense / Conv2D"):
        reweight.layerwise_l2rw_gradients(model, noisy, clean, include_regularization=True)


# ---- float64 models ----------------------------------------------------------------------------

def mlp64(weight_decay=0.0, flatten=True):
    """A float64 Dense chain (layers with dtype="float64", so no global Keras state is touched);
    without `flatten` its first layer is the Dense one, on inputs of shape (36,)."""
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input((6, 6, 1) if flatten else (36,), dtype="float64")
    x = keras.layers.Flatten(dtype="float64")(inputs) if flatten else inputs
    x = keras.layers.Dense(7, activation="tanh", kernel_regularizer=reg, dtype="float64",
                           kernel_initializer=GLOROT(seed=4),
                           bias_initializer=keras.initializers.RandomNormal(seed=5))(x)
    outputs = keras.layers.Dense(3, kernel_regularizer=reg, dtype="float64",
                                 kernel_initializer=GLOROT(seed=6))(x)
    return keras.Model(inputs, outputs)


def unfused_step(model, noisy, clean, meta_grad, include_regularization):
    """`example_weights`, then the weighted step from the current state (as train.py's unfused
    path: the same pass as `model(images, training=True)`, without updating any variable)."""
    weights = reweight.example_weights(model, noisy, clean, meta_grad, include_regularization)
    params = reweight.current_params(model)
    with tf.GradientTape() as tape:
        tape.watch(params)
        logits, reg_losses = reweight.forward(model, params, noisy[0], return_losses=True)
        losses = reweight.per_example_loss(noisy[1], logits)
        loss = tf.reduce_sum(weights * losses)
        if reg_losses:
            loss += tf.add_n(reg_losses)
    return tape.gradient(loss, params), weights, losses, loss


def every_step(model, noisy, clean, include_regularization, methods):
    """{name: (gradients, weights, losses, loss)} of every method, fused and unfused."""
    fused = {"jvp": reweight.fused_l2rw_gradients,
             "lookahead": reweight.fused_lookahead_gradients,
             "layerwise": reweight.layerwise_l2rw_gradients}
    steps = {}
    for method in methods:
        steps[method + " fused"] = fused[method](model, noisy, clean, include_regularization)[:4]
        steps[method] = unfused_step(model, noisy, clean, method, include_regularization)
    return steps


def flat(gradients):
    return tf.concat([tf.reshape(g, [-1]) for g in dense(gradients)], axis=0)


def check_float64_agreement(steps, variables):
    (first, want), *others = steps.items()
    grads, weights, losses, loss = want
    assert 0 < int(tf.reduce_sum(tf.cast(weights > 0, tf.int32))) < len(weights)
    for name, (g, w, c, total) in steps.items():
        for t in (*g, w, c, total):
            assert t.dtype == tf.float64, name
        assert relative_error(w, weights) <= 1e-12, (name, "weights", first)
        assert relative_error(c, losses) <= 1e-12, (name, "losses", first)
        assert relative_error(total, loss) <= 1e-12, (name, "loss", first)
        # All gradients as one vector: a conv bias before BN has a zero gradient (up to roundoff).
        assert [a.shape for a in g] == [v.shape for v in variables]
        assert relative_error(flat(g), flat(grads)) <= 1e-12, (name, "gradients", first)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("image_dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("flatten", [True, False])
def test_float64_mlp_every_method_agrees(flatten, weight_decay, image_dtype, compiled):
    """Every method, fused and unfused, with and without regularisation (and with it in the
    clean meta loss or not), on a float64 model fed float32 or float64 images."""
    model = mlp64(weight_decay, flatten)
    assert all(v.dtype == "float64" for v in model.trainable_variables)
    noisy, clean = batches(n=14, m=5, shape=(6, 6, 1) if flatten else (36,), classes=3, seed=2)
    noisy, clean = [(tf.cast(x, image_dtype), y) for x, y in (noisy, clean)]
    for include_regularization in ([False, True] if weight_decay else [False]):
        run = (lambda: every_step(model, noisy, clean, include_regularization,
                                  reweight.META_GRADIENTS))
        steps = tf.function(run)() if compiled else run()
        check_float64_agreement(steps, model.trainable_variables)


def unfused(meta_grad):
    return lambda model, noisy, clean, include_regularization: unfused_step(
        model, noisy, clean, meta_grad, include_regularization)


STEP_FUNCTIONS = {"jvp fused": reweight.fused_l2rw_gradients,
                  "lookahead fused": reweight.fused_lookahead_gradients,
                  "layerwise fused": reweight.layerwise_l2rw_gradients,
                  **{meta_grad: unfused(meta_grad) for meta_grad in reweight.META_GRADIENTS}}


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("name", STEP_FUNCTIONS)
def test_float64_each_step_runs_in_float64(name, weight_decay):
    """Each step function on its own (the agreement test stops at the first that fails)."""
    model = mlp64(weight_decay)
    noisy, clean = batches(n=14, m=5, shape=(6, 6, 1), classes=3, seed=2)
    grads, weights, losses, loss = STEP_FUNCTIONS[name](model, noisy, clean, bool(weight_decay))[:4]
    assert {t.dtype for t in (*grads, weights, losses, loss)} == {tf.float64}


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_float64_batchnorm_dropout_model_jvp_and_lookahead_agree(weight_decay):
    model = small_bn_model(dropout=0.5, weight_decay=weight_decay, dtype="float64")
    assert all(v.dtype == "float64" for v in model.trainable_variables)
    noisy, clean = batches(n=16, m=6, shape=(8, 8, 2), classes=3)
    for include_regularization in ([False, True] if weight_decay else [False]):
        steps = every_step(model, noisy, clean, include_regularization, ("jvp", "lookahead"))
        check_float64_agreement(steps, model.trainable_variables)


def test_float64_normalize_weights():
    w = reweight.normalize_weights(tf.constant([3.0, -1.0, 1.0, 0.0], tf.float64))
    assert w.dtype == tf.float64
    np.testing.assert_array_equal(w, [0.75, 0.0, 0.25, 0.0])
    zero = reweight.normalize_weights(tf.constant([-2.0, 0.0], tf.float64))
    np.testing.assert_array_equal(zero, [0.0, 0.0])


def test_float64_alignment_matches_finite_differences_with_regularization():
    """−∂l_g/∂ε_i by central differences of the look-ahead, clean regularisation included
    (l_g(θ̂) + R(θ̂)), against every method, to a float64 tolerance."""
    model = mlp64(weight_decay=1e-2)
    noisy, clean = batches(n=6, m=4, shape=(6, 6, 1), classes=3, seed=5)
    params = reweight.current_params(model)
    non_trainable = [v.value for v in model.non_trainable_variables]

    def clean_loss_after_lookahead(eps):
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits, _ = model.stateless_call(params, non_trainable, noisy[0], training=True)
            loss = tf.reduce_sum(eps * reweight.per_example_loss(noisy[1], logits))
        new_params = [p - g for p, g in zip(params, tape.gradient(loss, params))]
        logits, _, reg = model.stateless_call(new_params, non_trainable, clean[0], training=True,
                                              return_losses=True)
        assert len(reg) == 2
        return float(tf.reduce_mean(reweight.per_example_loss(clean[1], logits)) + tf.add_n(reg))

    h = 1e-5
    finite_diff = [-(clean_loss_after_lookahead(tf.constant(h * e))
                     - clean_loss_after_lookahead(tf.constant(-h * e))) / (2 * h)
                   for e in np.eye(6)]
    for method in (reweight.jvp_alignment, reweight.lookahead_alignment,
                   reweight.layerwise_alignment):
        assert relative_error(method(model, noisy, clean, True), finite_diff) <= 1e-8, method


# ---- dropout: the clean pass draws its own masks ----------------------------------------------

def dropout_mlp():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(16, activation="tanh", kernel_initializer=GLOROT(seed=7))(inputs)
    x = keras.layers.Dropout(0.5, seed=3)(x)
    outputs = keras.layers.Dense(3, kernel_initializer=GLOROT(seed=8))(x)
    return keras.Model(inputs, outputs)


def vector_batches(n=16, m=6, seed=0):
    """A noisy batch, and a clean batch made of its first m examples: with shared dropout masks
    the clean pass would repeat the noisy pass's first m rows exactly."""
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(n, 6)), tf.float32)
    y = tf.constant(rng.integers(0, 3, n))
    return (x, y), (x[:m], y[:m])


def alignment_by_hand(model, noisy, clean, clean_pass_masks):
    """⟨∇θ C_i, ∇θ l_g⟩ example by example (a Jacobian), the clean gradient from a pass that draws
    its masks as the noisy pass (`clean_pass_masks=False`) or as the clean pass does."""
    params = reweight.current_params(model)
    with tf.GradientTape() as tape:
        tape.watch(params)
        logits = (reweight.forward(model, params, clean[0], clean=True) if clean_pass_masks
                  else reweight.forward(model, params, clean[0]))
        loss = tf.reduce_mean(reweight.per_example_loss(clean[1], logits))
    direction = tape.gradient(loss, params)
    with tf.GradientTape() as tape:
        tape.watch(params)
        losses = reweight.per_example_loss(noisy[1], reweight.forward(model, params, noisy[0]))
    jacobians = tape.jacobian(losses, params)
    return sum(tf.reduce_sum(tf.reshape(j * d, [len(losses), -1]), axis=1)
               for j, d in zip(jacobians, direction))


def method_alignments(model, noisy, clean):
    """What each method computes: the alignments, or the (normalised) weights of the fused steps,
    which are the normalised positive alignments."""
    return {"jvp": reweight.jvp_alignment(model, noisy, clean),
            "lookahead": reweight.lookahead_alignment(model, noisy, clean),
            "fused jvp": reweight.fused_l2rw_gradients(model, noisy, clean)[1],
            "fused lookahead": reweight.fused_lookahead_gradients(model, noisy, clean)[1]}


def test_clean_meta_loss_does_not_repeat_the_noisy_pass_masks():
    """The clean batch is the noisy batch's first m examples; with the noisy pass's masks its
    meta loss would be exactly the mean of the noisy pass's first m losses."""
    model = dropout_mlp()
    noisy, clean = vector_batches()
    params = reweight.current_params(model)
    noisy_losses = reweight.per_example_loss(noisy[1], reweight.forward(model, params, noisy[0]))
    shared_masks = float(tf.reduce_mean(noisy_losses[:6]))
    own_masks = float(reweight.clean_loss(model, params, clean, include_regularization=False))
    assert abs(own_masks - shared_masks) > 1e-3, (own_masks, shared_masks)


def test_every_method_uses_independent_clean_masks():
    model = dropout_mlp()
    noisy, clean = vector_batches(seed=1)
    shared = alignment_by_hand(model, noisy, clean, clean_pass_masks=False)
    got = method_alignments(model, noisy, clean)
    for name, value in got.items():
        if name.startswith("fused"):  # weights: compare with the normalised positive part
            expected = reweight.normalize_weights(shared)
        else:
            expected = shared
        assert relative_error(value, expected) > 1e-2, name  # not the noisy pass's masks
    own = alignment_by_hand(model, noisy, clean, clean_pass_masks=True)
    assert np.max(own) > 0
    for name, value in got.items():
        expected = reweight.normalize_weights(own) if name.startswith("fused") else own
        assert relative_error(value, expected) <= 1e-4, name


def test_clean_pass_masks_are_independent_of_the_noisy_pass_masks():
    """A model that is one Dropout layer shows its masks: the clean pass's first m rows agree
    with the noisy pass's at the rate of chance (1/2), not always; the noisy meta pass's masks are
    the real step's (`model(x, training=True)` from the same state)."""
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5, seed=11)(inputs))
    ones = tf.ones([16, 64])
    noisy_masks = reweight.forward(model, [], ones).numpy() != 0
    clean_masks = reweight.forward(model, [], ones[:6], clean=True).numpy() != 0
    agreement = np.mean(noisy_masks[:6] == clean_masks)
    assert 0.35 < agreement < 0.65, agreement  # 384 fair coins: ±6σ
    assert 0.35 < np.mean(clean_masks) < 0.65  # rate 1/2 (not, e.g., all kept)
    real_masks = model(ones, training=True).numpy() != 0  # advances the seed state
    np.testing.assert_array_equal(real_masks, noisy_masks)
    # The next step's clean pass draws new masks as well.
    next_clean = reweight.forward(model, [], ones[:6], clean=True).numpy() != 0
    assert 0.35 < np.mean(next_clean == clean_masks) < 0.65


def test_weights_are_a_deterministic_function_of_the_state():
    """Two models with the same variables (a resumed run: train.py checkpoints the seed-generator
    states with the model) give bit-identical weights and steps by every method; the meta passes
    change no variable; the seed state does decide the masks."""
    keras.utils.set_random_seed(0)
    trained, fresh = (small_bn_model(dropout=0.5, weight_decay=1e-2) for _ in range(2))
    step, _, _, _ = train.make_train_step(
        trained, train.TF1Momentum(0.1), StepConfig(method="l2rw"),
        tf.random.Generator.from_seed(0))
    for seed in range(2):
        (x, y), (xc, yc) = batches(n=16, m=6, shape=(8, 8, 2), classes=3, seed=seed)
        step({"image": x, "label": y, "is_noisy": tf.zeros([16], tf.bool)},
             {"image": xc, "label": yc})
    for a, b in zip(trained.variables, fresh.variables):
        b.assign(a)  # what a checkpoint restore does
    noisy, clean = batches(n=16, m=6, shape=(8, 8, 2), classes=3, seed=7)

    def everything(model):
        return [*(reweight.example_weights(model, noisy, clean, meta_grad, True)
                  for meta_grad in ("jvp", "lookahead")),
                *reweight.fused_l2rw_gradients(model, noisy, clean, True)[:4],
                *reweight.fused_lookahead_gradients(model, noisy, clean, True)[:4]]

    before = [v.numpy().copy() for v in trained.variables]
    first = everything(trained)
    for got in (everything(trained), everything(fresh)):
        for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(first)):
            np.testing.assert_array_equal(tf.convert_to_tensor(a), tf.convert_to_tensor(b))
    for a, b in zip(trained.variables, before):
        np.testing.assert_array_equal(a.numpy(), b)

    seed_states = [v for v in fresh.non_trainable_variables if "seed_generator" in v.path]
    assert len(seed_states) == 1
    seed_states[0].assign_add([0, 1])
    moved = reweight.example_weights(fresh, noisy, clean, "jvp", True)
    assert np.max(np.abs(moved.numpy() - first[0].numpy())) > 1e-4


# ---- recurrent models (issue 24): the step runs traced, with the exact weights ---------------

def recurrent_model(kind):
    """Token ids → Embedding → a recurrent layer → Dense, the embedding's gradient sparse."""
    keras.utils.set_random_seed(4)
    tokens = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 5)(tokens)
    if kind == "Bidirectional":
        x = keras.layers.Bidirectional(keras.layers.LSTM(4))(x)
    else:
        x = getattr(keras.layers, kind)(6)(x)
    return keras.Model(tokens, keras.layers.Dense(3)(x))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN", "Bidirectional"])
def test_recurrent_models_traced_step_has_the_weights_of_eager_jvp(kind):
    """`auto` takes lookahead on a recurrent model (forward mode fails on a traced loop's
    TensorArrays, fit.has_recurrent_layer); its traced fused step gives the weights of jvp run
    eagerly (where the loop is Python), the other exact method."""
    from l2rw_tf.fit import choose_meta_grad
    model = recurrent_model(kind)
    assert choose_meta_grad(model) == "lookahead"
    noisy, clean = token_batches(seed=2)
    want = reweight.example_weights(model, noisy, clean, "jvp")
    got = tf.function(lambda: reweight.fused_lookahead_gradients(model, noisy, clean))()
    assert 0 < int(tf.reduce_sum(tf.cast(want > 0, tf.int32))) < 12  # a real weighting
    assert relative_error(got.example_weights, want) <= 1e-4
    assert all(g is not None for g in got.gradients)
