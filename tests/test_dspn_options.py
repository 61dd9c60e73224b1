"""iDSPN's inner-loop options of the DSPN decoder: implicit gradients, momentum, clipping,
the MSE objective, random starting sets, the start regulariser and early stopping."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder
from dspn_tf.losses import huber

SET_SIZE, CHANNELS, LATENT = 6, 2, 8


def make_dspn(iters=4, lr=25.0, **options):
    encoder = FSEncoder(dim=16, latent=LATENT, n_pieces=5)
    dspn = DSPN(encoder, SET_SIZE, CHANNELS, iters=iters, lr=lr, **options)
    dspn.build((None, LATENT))
    return dspn


def copy_weights(source, target):
    for s, t in zip(source.weights, target.weights):
        t.assign(s)


def target_embedding(dspn, rng, batch=4):
    x = rng.random((batch, SET_SIZE, CHANNELS)).astype(np.float32)
    mask = np.ones((batch, SET_SIZE), np.float32)
    mask[:, -2:] = 0.0
    return dspn.encoder(x, mask)


def plain_gradients(dspn, z, set_, mask):
    """Per-sample gradients of the paper's inner loss, computed here with a tape of our own."""
    set_, mask = tf.convert_to_tensor(set_), tf.convert_to_tensor(mask)
    with tf.GradientTape() as tape:
        tape.watch([set_, mask])
        loss = tf.reduce_sum(tf.reduce_mean(huber(dspn.encoder(set_, mask) - z), axis=-1))
    return [g.numpy() for g in tape.gradient(loss, [set_, mask])]


def starting_point(dspn, batch):
    set_ = np.broadcast_to(dspn.starting_set.numpy(), (batch, SET_SIZE, CHANNELS)).copy()
    mask = np.clip(np.broadcast_to(dspn.starting_mask.numpy(), (batch, SET_SIZE)), 0, 1).copy()
    return set_, mask


# --- Implicit differentiation ------------------------------------------------------------------


def test_implicit_forward_equals_unrolled(rng):
    unrolled = make_dspn(iters=5)
    implicit = make_dspn(iters=5, gradient="implicit")
    copy_weights(unrolled, implicit)
    z = target_embedding(unrolled, rng)
    a, b = unrolled(z, training=True), implicit(z, training=True)
    for key in ("sets", "masks", "inner_losses", "grad_norms", "steps"):
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9, "clip": 0.05}], ids=["plain", "momentum_clip"])
def test_implicit_gradient_is_the_last_plain_step_from_the_detached_set(rng, options):
    iters, lr = 4, 25.0
    dspn = make_dspn(iters=iters, lr=lr, gradient="implicit", **options)
    z = tf.Variable(target_embedding(dspn, rng))
    weights = rng.normal(size=(SET_SIZE, CHANNELS)).astype(np.float32)
    mask_weights = rng.normal(size=(SET_SIZE,)).astype(np.float32)

    def outer(set_, mask):
        return tf.reduce_sum(set_ * weights) + tf.reduce_sum(mask * mask_weights)

    sources = [*dspn.encoder.trainable_variables, z]
    with tf.GradientTape() as tape:
        out = dspn(z, training=True)
        loss = outer(out["sets"][-1], out["masks"][-1])
    got = tape.gradient(loss, sources)

    # Independently: the forward set before the last step (no graph), then one
    # plain step from it with tapes of our own.
    before = dspn(z, iters=iters - 1)
    previous_set = tf.constant(before["sets"][-1].numpy())
    previous_mask = tf.constant(before["masks"][-1].numpy())
    with tf.GradientTape() as outer_tape:
        with tf.GradientTape() as inner_tape:
            inner_tape.watch([previous_set, previous_mask])
            inner = tf.reduce_sum(tf.reduce_mean(huber(dspn.encoder(previous_set, previous_mask) - z), axis=-1))
        set_grad, mask_grad = inner_tape.gradient(inner, [previous_set, previous_mask])
        last_set = previous_set - lr * set_grad
        last_mask = tf.clip_by_value(previous_mask - lr * mask_grad, 0.0, 1.0)
        expected_loss = outer(last_set, last_mask)
    expected = outer_tape.gradient(expected_loss, sources)
    for g, e, v in zip(got, expected, sources):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-4, atol=1e-5, err_msg=v.name)
    if options:
        # The forward value is the momentum / clipped step, not the plain one.
        assert not np.allclose(out["sets"][-1].numpy(), last_set.numpy(), atol=1e-4)


def _traced_op_count(dspn, z, iters):
    @tf.function
    def step(z):
        with tf.GradientTape() as tape:
            out = dspn(z, iters=iters, training=True)
            loss = tf.reduce_sum(out["sets"][-1]) + tf.reduce_sum(out["masks"][-1])
        return tape.gradient(loss, dspn.encoder.trainable_variables)

    graph = step.get_concrete_function(tf.TensorSpec(z.shape, z.dtype)).graph
    types = [op.type for op in graph.get_operations()]
    for function in graph._functions.values():  # While-loop bodies and other nested graphs.
        types += [op.type for op in function.graph.get_operations()] if hasattr(function, "graph") else []
    return types


def test_implicit_training_graph_does_not_grow_with_iters(rng):
    implicit = make_dspn(gradient="implicit", momentum=0.9, clip=1.0)
    z = target_embedding(implicit, rng)
    ten, forty = _traced_op_count(implicit, z, 10), _traced_op_count(implicit, z, 40)
    assert len(forty) == len(ten)
    # One forward graph loop and no backward loop through it: its cost would grow with iters.
    assert sum(t in ("While", "StatelessWhile") for t in forty) == 1
    # The same count grows for the unrolled loop: the check can see growth.
    unrolled = make_dspn()
    assert len(_traced_op_count(unrolled, z, 40)) > 2 * len(_traced_op_count(unrolled, z, 10))


def test_implicit_takes_a_tensor_iters_in_training(rng):
    dspn = make_dspn(gradient="implicit", momentum=0.5)
    z = target_embedding(dspn, rng)
    a = dspn(z, iters=6, training=True)
    b = dspn(z, iters=tf.constant(6), training=True)
    np.testing.assert_allclose(a["sets"].numpy(), b["sets"].numpy(), rtol=1e-5, atol=1e-6)


def test_unrolled_training_refuses_a_tensor_iters(rng):
    dspn = make_dspn()
    z = target_embedding(dspn, rng)
    with pytest.raises(ValueError, match="Python int `iters`"):
        dspn(z, iters=tf.constant(3), training=True)


def test_implicit_with_learned_start_and_no_regulariser_freezes_the_start():
    assert not make_dspn(gradient="implicit").starting_set.trainable
    assert make_dspn().starting_set.trainable
    regularized = make_dspn(gradient="implicit", start_regularizer=0.1)
    assert regularized.starting_set.trainable and regularized.starting_mask.trainable


def test_start_regulariser_gives_the_learned_start_an_implicit_gradient(rng):
    dspn = make_dspn(gradient="implicit", start_regularizer=0.1)
    z = target_embedding(dspn, rng)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(dspn(z, training=True)["sets"][-1])
    grad = tape.gradient(loss, dspn.starting_set)
    # d/dY0 of Y_T = Y - lr * (dL/dY + w (Y - Y0)) is lr * w per sample and entry.
    np.testing.assert_allclose(grad.numpy(), np.full((1, SET_SIZE, CHANNELS), 4 * 25.0 * 0.1), rtol=1e-5)


# --- Momentum, clipping, objective -------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [True, False])
def test_momentum_against_hand_computed_steps(rng, nesterov):
    mu, lr, iters = 0.9, 2.0, 3
    dspn = make_dspn(iters=iters, lr=lr, momentum=mu, nesterov=nesterov)
    z = target_embedding(dspn, rng, batch=3)
    out = dspn(z)
    set_, mask = starting_point(dspn, 3)
    v_set, v_mask = np.zeros_like(set_), np.zeros_like(mask)
    for t in range(iters):
        g_set, g_mask = plain_gradients(dspn, z, set_, mask)
        v_set, v_mask = mu * v_set + g_set, mu * v_mask + g_mask
        u_set, u_mask = (g_set + mu * v_set, g_mask + mu * v_mask) if nesterov else (v_set, v_mask)
        set_, mask = set_ - lr * u_set, np.clip(mask - lr * u_mask, 0, 1)
        np.testing.assert_allclose(out["sets"][t + 1].numpy(), set_, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out["masks"][t + 1].numpy(), mask, rtol=1e-4, atol=1e-6)


def test_clipping_against_hand_computed_steps_and_bounds_each_sample(rng):
    clip, lr = 0.002, 25.0
    dspn = make_dspn(iters=2, lr=lr, clip=clip)
    z = target_embedding(dspn, rng, batch=3)  # Gradient norms of about 0.0015-0.003: some are clipped.
    out = dspn(z)
    set_, mask = starting_point(dspn, 3)
    clipped = []
    for t in range(2):
        g_set, g_mask = plain_gradients(dspn, z, set_, mask)
        norm = np.sqrt((g_set**2).sum(axis=(1, 2)) + (g_mask**2).sum(axis=1))
        scale = np.minimum(1.0, clip / (norm + 1e-6))
        clipped.append(scale < 1)
        step_set, step_mask = g_set * scale[:, None, None], g_mask * scale[:, None]
        # Each sample's step is at most lr * clip long.
        assert np.all(np.sqrt((step_set**2).sum(axis=(1, 2)) + (step_mask**2).sum(axis=1)) <= clip * (1 + 1e-5))
        set_, mask = set_ - lr * step_set, np.clip(mask - lr * step_mask, 0, 1)
        np.testing.assert_allclose(out["sets"][t + 1].numpy(), set_, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out["masks"][t + 1].numpy(), mask, rtol=1e-4, atol=1e-6)
    assert np.any(clipped) and not np.all(clipped), "the test's clip value should clip some steps, not all"


def test_mse_objective_first_step(rng):
    dspn = make_dspn(iters=1, lr=3.0, inner_loss="mse")
    z = target_embedding(dspn, rng, batch=2)
    out = dspn(z)
    set_, mask = (tf.constant(a) for a in starting_point(dspn, 2))
    with tf.GradientTape() as tape:
        tape.watch([set_, mask])
        per_sample = tf.reduce_mean(0.5 * tf.square(dspn.encoder(set_, mask) - z), axis=-1)
        loss = tf.reduce_sum(per_sample)
    g_set, g_mask = tape.gradient(loss, [set_, mask])
    np.testing.assert_allclose(out["inner_losses"][0].numpy(), per_sample.numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["sets"][1].numpy(), (set_ - 3.0 * g_set).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out["masks"][1].numpy(), tf.clip_by_value(mask - 3.0 * g_mask, 0, 1).numpy(), rtol=1e-5, atol=1e-6
    )


def test_start_regulariser_term(rng):
    dspn = make_dspn(iters=2, start_regularizer=0.3)
    z = target_embedding(dspn, rng, batch=2)
    out = dspn(z)
    start_set, start_mask = starting_point(dspn, 2)
    set_, mask = out["sets"][1], out["masks"][1]
    expected = tf.reduce_mean(huber(dspn.encoder(set_, mask) - z), axis=-1).numpy() + 0.3 * 0.5 * (
        ((set_.numpy() - start_set) ** 2).sum(axis=(1, 2)) + ((mask.numpy() - start_mask) ** 2).sum(axis=1)
    )
    np.testing.assert_allclose(out["inner_losses"][1].numpy(), expected, rtol=1e-5)


OPTIONS = {
    "mse": {"inner_loss": "mse"},
    "momentum": {"momentum": 0.9, "lr": 5.0},
    "heavy_ball": {"momentum": 0.5, "nesterov": False},
    "clip": {"clip": 0.002},
    "regularizer": {"start_regularizer": 0.5},
    "tolerance": {"tolerance": 3e-4},
    "idspn": {"gradient": "implicit", "momentum": 0.9, "lr": 1.0, "clip": 10.0, "inner_loss": "mse"},
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_option_is_batch_size_independent(rng, name):
    dspn = make_dspn(iters=5, **{"lr": 25.0, **OPTIONS[name]})
    z = target_embedding(dspn, rng, batch=7)  # A ragged batch.
    batch = dspn(z, training=True)
    for b in (0, 3, 6):
        alone = dspn(z[b : b + 1], training=True)
        for key in ("sets", "masks", "inner_losses"):
            np.testing.assert_allclose(alone[key].numpy()[:, 0], batch[key].numpy()[:, b], rtol=1e-4, atol=1e-5)
        assert int(alone["steps"][0]) == int(batch["steps"][b])


# --- Early stopping -----------------------------------------------------------------------------


def _mixed_targets(dspn, rng):
    """z for 3 samples: the first is the starting set's own embedding (objective 0 at the start)."""
    set_, mask = starting_point(dspn, 1)
    own = dspn.encoder(set_, mask)
    return tf.concat([own, target_embedding(dspn, rng, batch=2)], axis=0)


def test_tolerance_stops_converged_samples_and_lets_others_go_on(rng):
    iters, tolerance = 8, 2e-4  # Objectives start at about 3e-4 to 6e-4.
    dspn = make_dspn(iters=iters, tolerance=tolerance)
    z = _mixed_targets(dspn, rng)
    out = dspn(z)
    steps = out["steps"].numpy()
    assert steps[0] == 0
    np.testing.assert_array_equal(out["sets"][-1, 0].numpy(), out["sets"][0, 0].numpy())
    losses = out["inner_losses"].numpy()
    for b in (1, 2):
        below = np.flatnonzero(losses[:, b] < tolerance)
        expected = below[0] if below.size else iters
        assert steps[b] == expected
        assert steps[b] > 0
        # A sample that stopped keeps its set for every later step.
        for t in range(steps[b] + 1, iters + 1):
            np.testing.assert_array_equal(out["sets"][t, b].numpy(), out["sets"][steps[b], b].numpy())
    free = make_dspn(iters=iters)
    copy_weights(dspn, free)
    np.testing.assert_allclose(
        free(z)["sets"][:, 1:].numpy()[: steps[1] + 1, 0],
        out["sets"][:, 1:].numpy()[: steps[1] + 1, 0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_tolerance_graph_loop_ends_early_and_equals_the_unrolled_loop(rng):
    dspn = make_dspn(iters=30, lr=25.0, tolerance=2e-4)
    z = target_embedding(dspn, rng, batch=3)
    unrolled = dspn(z)
    looped = dspn(z, iters=tf.constant(30))
    assert int(tf.reduce_max(unrolled["steps"])) < 30, "no sample stopped: the tolerance is too small for the test"
    for key in ("sets", "masks", "inner_losses", "grad_norms", "steps"):
        np.testing.assert_allclose(unrolled[key].numpy(), looped[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def _three_modes(dspn):
    """The decoder called eagerly, in a tf.function and compiled with XLA, with `iters` a tensor argument."""
    graph = tf.function(lambda z, iters: dspn(z, iters=iters))
    xla = tf.function(lambda z, iters: dspn(z, iters=iters), jit_compile=True)
    return {"eager": lambda z, iters: dspn(z, iters=iters), "graph": graph, "xla": xla}


@pytest.mark.parametrize("case", ["some_stop", "all_stop", "zero_iters"])
def test_tolerance_with_a_tensor_iters_compiles_with_xla_and_equals_eager(rng, case):
    dspn = make_dspn(iters=30, tolerance=2e-4)
    if case == "all_stop":
        # Every target is the starting set's own embedding: all samples stop at the first step.
        set_, mask = starting_point(dspn, 1)
        z = tf.repeat(dspn.encoder(set_, mask), 3, axis=0)
    else:
        z = target_embedding(dspn, rng, batch=3)
    iters = tf.constant(0 if case == "zero_iters" else 30)
    out = {name: call(z, iters) for name, call in _three_modes(dspn).items()}
    steps = out["eager"]["steps"].numpy()
    if case == "some_stop":
        assert 0 < steps.min() and steps.max() < 30, steps
    elif case == "all_stop":
        np.testing.assert_array_equal(steps, [0, 0, 0])
    assert out["eager"]["sets"].shape[0] == int(iters) + 1
    for name in ("graph", "xla"):
        for key in ("sets", "masks", "inner_losses", "grad_norms", "steps"):
            assert out[name][key].shape == out["eager"][key].shape, (name, key)
            np.testing.assert_allclose(
                out[name][key].numpy(), out["eager"][key].numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}"
            )


def test_implicit_training_with_tolerance_and_a_tensor_iters_compiles_with_xla(rng):
    dspn = make_dspn(iters=30, tolerance=2e-4, gradient="implicit")
    z = target_embedding(dspn, rng, batch=3)

    def train_step(z, iters):
        with tf.GradientTape() as tape:
            out = dspn(z, iters=iters, training=True)
            loss = tf.reduce_sum(tf.square(out["sets"][-1]))
        return out, tape.gradient(loss, dspn.trainable_variables)

    eager = train_step(z, tf.constant(30))
    xla = tf.function(train_step, jit_compile=True)(z, tf.constant(30))
    assert int(tf.reduce_max(eager[0]["steps"])) < 30, "no sample stopped: the tolerance is too small for the test"
    for key in ("sets", "masks", "inner_losses", "grad_norms", "steps"):
        np.testing.assert_allclose(xla[0][key].numpy(), eager[0][key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    for variable, a, b in zip(dspn.trainable_variables, xla[1], eager[1]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=variable.path)


def test_steps_default_to_iters(rng):
    dspn = make_dspn(iters=3)
    z = target_embedding(dspn, rng)
    np.testing.assert_array_equal(dspn(z)["steps"].numpy(), [3] * 4)
    np.testing.assert_array_equal(dspn(z, iters=tf.constant(2))["steps"].numpy(), [2] * 4)


# --- Random starting sets -----------------------------------------------------------------------


def test_random_start_reproducible_at_inference_and_fresh_in_training(rng):
    dspn = make_dspn(starting_set="random", seed=7)
    assert not hasattr(dspn, "starting_set") or "starting_set" not in [w.name for w in dspn.weights]
    z = target_embedding(dspn, rng, batch=64)
    first, second = dspn(z)["sets"][0].numpy(), dspn(z)["sets"][0].numpy()
    np.testing.assert_array_equal(first, second)
    assert abs(first.std() - 0.1) < 0.01 and abs(first.mean()) < 0.01
    # Every sample has its own start.
    assert not np.allclose(first[0], first[1])
    other = make_dspn(starting_set="random", seed=8)
    copy_weights(dspn, other)
    assert not np.allclose(other(z)["sets"][0].numpy(), first)
    a, b = dspn(z, training=True)["sets"][0].numpy(), dspn(z, training=True)["sets"][0].numpy()
    assert not np.allclose(a, b)
    # The graph loop uses the same start as the unrolled one.
    np.testing.assert_allclose(
        dspn(z, iters=tf.constant(4))["sets"].numpy(), dspn(z)["sets"].numpy(), rtol=1e-5, atol=1e-6
    )


def test_bad_option_values():
    encoder = FSEncoder(dim=4, latent=LATENT)
    for kwargs, name in [
        ({"gradient": "exact"}, "gradient"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"clip": 0}, "clip"),
        ({"inner_loss": "l1"}, "inner_loss"),
        ({"starting_set": "zeros"}, "starting_set"),
        ({"start_regularizer": -1.0}, "start_regularizer"),
        ({"tolerance": -1e-3}, "tolerance"),
        ({"seed": 1.5}, "seed"),
        ({"lr": 0.0}, "lr"),
    ]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            DSPN(encoder, SET_SIZE, CHANNELS, **kwargs)


def test_every_option_survives_get_config():
    options = {
        "gradient": "implicit",
        "momentum": 0.9,
        "nesterov": False,
        "clip": 10.0,
        "inner_loss": "mse",
        "starting_set": "random",
        "start_regularizer": 0.1,
        "tolerance": 1e-4,
        "seed": 3,
    }
    dspn = make_dspn(**options)
    clone = DSPN.from_config(dspn.get_config())
    for key, value in options.items():
        assert clone.get_config()[key] == value, key


# --- Precision ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_inner_gradient_is_float32_under_mixed_precision(rng, policy):
    # Low-precision compute gave this gradient a 13.5 % (bfloat16) error and
    # flushed 29 % of its entries to zero (float16) at set-MNIST size.
    x = rng.random((4, SET_SIZE, CHANNELS)).astype(np.float32)
    mask = np.ones((4, SET_SIZE), np.float32)
    reference = make_dspn(iters=3)
    z = reference.encoder(x, mask)
    expected = reference(z, training=True)
    try:
        keras.mixed_precision.set_global_policy(policy)
        dspn = make_dspn(iters=3)
        copy_weights(reference, dspn)
        assert dspn.encoder(x, mask).dtype != tf.float32  # Outside the inner loop the policy holds.
        out = dspn(z, training=True)
        assert dspn.encoder.dtype_policy.name == policy  # And it is restored after the loop.
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for key in ("sets", "masks", "grad_norms"):
        np.testing.assert_allclose(out[key].numpy(), expected[key].numpy(), rtol=1e-5, atol=1e-7, err_msg=key)
