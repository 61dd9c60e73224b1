"""The DSPN decoder (docs/algorithm.md §3): inner optimisation, equivariance, batch independence, second order."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder, RNFSEncoder
from dspn_tf.losses import huber

SET_SIZE, CHANNELS, LATENT = 6, 2, 8


def make_dspn(encoder="fs", iters=5, lr=25.0, dtype="float32", set_size=SET_SIZE, dim=16, latent=LATENT):
    cls = FSEncoder if encoder == "fs" else RNFSEncoder
    enc = cls(dim=dim, latent=latent, n_pieces=5, dtype=dtype)
    dspn = DSPN(enc, set_size, CHANNELS, iters=iters, lr=lr, dtype=dtype)
    dspn.build((None, latent))
    return dspn


def target_embedding(dspn, rng, batch=4, dtype=np.float32):
    x = rng.random((batch, dspn.set_size, CHANNELS)).astype(dtype)
    mask = np.ones((batch, dspn.set_size), dtype)
    mask[:, -2:] = 0.0
    x[:, -2:] = 0.0
    return dspn.encoder(x, mask)


def per_sample_inner_loss(dspn, z, set_, mask):
    return tf.reduce_mean(huber(dspn.encoder(set_, mask) - z), axis=-1).numpy()


@pytest.mark.parametrize("encoder", ["fs", "rn"])
def test_inner_loss_falls_over_the_steps(rng, encoder):
    dspn = make_dspn(encoder, iters=10, set_size=6 if encoder == "fs" else 4)
    z = target_embedding(dspn, rng)
    out = dspn(z)
    losses = out["inner_losses"].numpy()  # Shape: [10, batch].
    assert losses.shape == (10, 4)
    # inner_losses[t] is the loss of step t's set (before its update).
    for t in (0, 4, 9):
        np.testing.assert_allclose(
            losses[t], per_sample_inner_loss(dspn, z, out["sets"][t], out["masks"][t]), rtol=1e-5, atol=1e-9
        )
    final = per_sample_inner_loss(dspn, z, out["sets"][-1], out["masks"][-1])
    assert np.all(np.diff(losses, axis=0) < 0), losses
    assert np.all(final < 0.5 * losses[0])


def test_first_step_is_lr_times_per_sample_gradient(rng):
    # docs/algorithm.md §3: Y_1 = Y_0 - 25 * dL_b/dY with L_b the sample's own latent-mean Huber loss.
    dspn = make_dspn(iters=1)
    z = target_embedding(dspn, rng, batch=3)
    out = dspn(z)
    start = tf.broadcast_to(dspn.starting_set, [1, SET_SIZE, CHANNELS])
    start_mask = tf.broadcast_to(dspn.starting_mask, [1, SET_SIZE])
    for b in range(3):
        with tf.GradientTape() as tape:
            tape.watch([start, start_mask])
            loss = tf.reduce_mean(huber(dspn.encoder(start, start_mask) - z[b : b + 1]))
        g_set, g_mask = tape.gradient(loss, [start, start_mask])
        np.testing.assert_allclose(out["sets"][1, b], (start - 25.0 * g_set)[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            out["masks"][1, b], tf.clip_by_value(start_mask - 25.0 * g_mask, 0.0, 1.0)[0], rtol=1e-5, atol=1e-6
        )
        # grad_norms is the norm of that set gradient.
        np.testing.assert_allclose(out["grad_norms"][0, b], tf.norm(g_set), rtol=1e-5)


def test_equivariant_to_permuting_the_starting_set(rng):
    dspn = make_dspn(iters=4)
    z = target_embedding(dspn, rng)
    # A non-constant starting mask, so that permuting it is not a no-op.
    dspn.starting_mask.assign(rng.uniform(0.2, 0.8, size=(1, SET_SIZE)).astype(np.float32))
    out = {key: value.numpy() for key, value in dspn(z).items()}
    perm = rng.permutation(SET_SIZE)
    dspn.starting_set.assign(dspn.starting_set.numpy()[:, perm])
    dspn.starting_mask.assign(dspn.starting_mask.numpy()[:, perm])
    permuted = dspn(z)
    for t in range(5):
        np.testing.assert_allclose(permuted["sets"][t], out["sets"][t][:, perm], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(permuted["masks"][t], out["masks"][t][:, perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(permuted["inner_losses"], out["inner_losses"], rtol=1e-5, atol=1e-9)
    # And the steps really moved the set, so the check is not trivially about the start.
    assert np.abs(out["sets"][-1] - out["sets"][0]).max() > 1e-3


def test_one_sample_equals_its_row_in_a_batch_of_32(rng):
    # The inner loss sums per-sample losses, so a sample's steps do not depend on the batch.
    dspn = make_dspn(iters=10)
    z = target_embedding(dspn, rng, batch=32)
    decode = lambda z: dspn(z, training=True)  # noqa: E731
    batched = decode(z)
    for b in (0, 13, 31):
        alone = decode(z[b : b + 1])
        for key in ("sets", "masks", "inner_losses", "grad_norms"):
            np.testing.assert_allclose(alone[key][:, 0], batched[key][:, b], rtol=0, atol=1e-5, err_msg=key)
    # A ragged batch of 5 also agrees, and so does inference.
    np.testing.assert_allclose(decode(z[8:13])["sets"], batched["sets"][:, 8:13], rtol=0, atol=1e-5)
    np.testing.assert_allclose(dspn(z[4:5])["sets"][:, 0], batched["sets"][:, 4], rtol=0, atol=1e-5)


def test_second_order_gradients_match_finite_differences(rng):
    # Float64, tiny config. The final set depends on the encoder weights only
    # through the inner gradient dL/dY, so a correct gradient w.r.t. them
    # proves the outer tape differentiated the inner one (second order).
    dspn = make_dspn(iters=2, lr=2.0, dtype="float64", set_size=3, dim=5, latent=3)
    z = tf.constant(rng.normal(size=(2, 3)) * 0.3)
    set_readout = tf.constant(rng.normal(size=(2, 2, 3, CHANNELS)))
    mask_readout = tf.constant(rng.normal(size=(2, 2, 3)))

    @tf.function
    def outer_loss(z=z):
        out = dspn(z, training=True)
        return tf.reduce_sum(out["sets"][1:] * set_readout) + tf.reduce_sum(out["masks"][1:] * mask_readout)

    masks = dspn(z, training=True)["masks"].numpy()
    assert np.all((masks > 0.01) & (masks < 0.99)), "the mask clip would hide the mask gradient"

    variables = [dspn.starting_set, dspn.starting_mask] + dspn.encoder.trainable_variables
    with tf.GradientTape() as tape:
        loss = outer_loss()
    grads = tape.gradient(loss, variables)
    eps = 1e-5
    for variable, grad in zip(variables, grads):
        assert grad is not None, variable.path
        value = variable.numpy()
        if "starting" in variable.path:
            directions = [np.eye(value.size)[i].reshape(value.shape) for i in range(value.size)]
        else:
            directions = [rng.normal(size=value.shape) for _ in range(2)]
        for d in directions:
            variable.assign(value + eps * d)
            plus = outer_loss().numpy()
            variable.assign(value - eps * d)
            minus = outer_loss().numpy()
            variable.assign(value)
            numerical = (plus - minus) / (2 * eps)
            analytic = np.sum(grad.numpy() * d)
            assert abs(analytic - numerical) <= 1e-6 + 1e-5 * abs(numerical), (variable.path, analytic, numerical)
        if "starting" not in variable.path:
            assert np.abs(grad.numpy()).max() > 1e-6, variable.path

    # z is not stop-gradiented either; it too reaches the sets only through the inner gradient.
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = outer_loss(z)
    grad_z = tape.gradient(loss, z).numpy()
    numerical = np.zeros_like(grad_z)
    for idx in np.ndindex(*grad_z.shape):
        step = np.zeros_like(grad_z)
        step[idx] = eps
        numerical[idx] = (outer_loss(z + step).numpy() - outer_loss(z - step).numpy()) / (2 * eps)
    np.testing.assert_allclose(grad_z, numerical, rtol=1e-5, atol=1e-7)
    assert np.abs(grad_z).max() > 1e-4


@pytest.mark.parametrize("training", [False, True])
def test_gradient_to_starting_set_only_in_training(rng, training):
    dspn = make_dspn(iters=3)
    z = target_embedding(dspn, rng)
    with tf.GradientTape(persistent=True) as tape:
        out = dspn(z, training=training)
        last_set = tf.reduce_sum(out["sets"][-1])
        last_mask = tf.reduce_sum(out["masks"][-1])
    g_set = tape.gradient(last_set, dspn.starting_set)
    g_mask = tape.gradient(last_mask, dspn.starting_mask)
    if training:
        assert g_set is not None and np.abs(g_set.numpy()).max() > 0
        assert g_mask is not None and np.abs(g_mask.numpy()).max() > 0
    else:
        # At inference every step is cut from the graph.
        assert g_set is None or not np.any(g_set.numpy())
        assert g_mask is None or not np.any(g_mask.numpy())


def test_iters_per_call_int_and_tensor(rng):
    dspn = make_dspn(iters=5)
    z = target_embedding(dspn, rng)
    default = dspn(z)
    assert default["sets"].shape == (6, 4, SET_SIZE, CHANNELS)
    assert default["masks"].shape == (6, 4, SET_SIZE)
    assert default["inner_losses"].shape == (5, 4) and default["grad_norms"].shape == (5, 4)
    three = dspn(z, iters=3)
    assert three["sets"].shape == (4, 4, SET_SIZE, CHANNELS)
    # Running more steps extends the same trajectory.
    np.testing.assert_allclose(default["sets"][:4], three["sets"], rtol=1e-6, atol=1e-7)
    # A tensor step count runs a while_loop and gives the same numbers.
    for key, value in dspn(z, iters=tf.constant(3)).items():
        np.testing.assert_allclose(value, three[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # Under tf.function one trace serves any batch and any step count.
    serve = tf.function(
        lambda z, n: dspn(z, iters=n)["sets"],
        input_signature=[tf.TensorSpec([None, LATENT], tf.float32), tf.TensorSpec([], tf.int32)],
    )
    np.testing.assert_allclose(serve(z, tf.constant(3)), three["sets"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(serve(z[:1], tf.constant(5)), default["sets"][:, :1], rtol=1e-5, atol=1e-6)
    more = dspn(z, iters=tf.constant(20))
    assert more["sets"].shape[0] == 21
    np.testing.assert_allclose(more["sets"][:6], default["sets"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("iters", [0, "tensor"])
def test_zero_iters_returns_the_starting_set(rng, iters):
    dspn = make_dspn()
    dspn.starting_mask.assign([[-0.5, 0.2, 0.5, 0.9, 1.0, 1.7]])
    z = target_embedding(dspn, rng, batch=3)
    out = dspn(z, iters=0 if iters == 0 else tf.constant(0))
    assert out["sets"].shape == (1, 3, SET_SIZE, CHANNELS)
    assert out["inner_losses"].shape == (0, 3) and out["grad_norms"].shape == (0, 3)
    np.testing.assert_array_equal(out["sets"][0], np.repeat(dspn.starting_set.numpy(), 3, axis=0))
    # The starting mask is clamped to [0, 1] before use.
    np.testing.assert_allclose(out["masks"][0], np.repeat([[0.0, 0.2, 0.5, 0.9, 1.0, 1.0]], 3, axis=0))


def test_masks_stay_in_unit_interval(rng):
    dspn = make_dspn(iters=6, lr=500.0)  # A huge step pushes masks against both clamps.
    out = dspn(target_embedding(dspn, rng))
    masks = out["masks"].numpy()
    assert masks.min() >= 0.0 and masks.max() <= 1.0


def test_starting_set_initialisation():
    dspn = make_dspn(set_size=50)
    start = dspn.starting_set.numpy()
    assert start.shape == (1, 50, CHANNELS)
    assert start.min() >= 0.0 and start.max() < 1.0 and start.std() > 0.2  # U[0, 1).
    np.testing.assert_array_equal(dspn.starting_mask.numpy(), np.full((1, 50), 0.5))
    assert dspn.encoder.built


def test_negative_iters(rng):
    with pytest.raises(ValueError, match="iters"):
        make_dspn(iters=-1)
    dspn = make_dspn()
    z = target_embedding(dspn, rng)
    with pytest.raises(ValueError, match="iters"):
        dspn(z, iters=-2)
    with pytest.raises(ValueError, match="iters"):
        dspn(z, iters=tf.constant(-2))
    # Inside a graph the value is only known at run time: a runtime error, still naming `iters`.
    run = tf.function(lambda n: dspn(z, iters=n)["sets"], input_signature=[tf.TensorSpec([], tf.int32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="iters"):
        run(tf.constant(-1))


def test_bad_arguments(rng):
    enc = FSEncoder(dim=4, latent=3)
    with pytest.raises(ValueError, match="encoder"):
        DSPN("not a layer", 3, 2)
    with pytest.raises(ValueError, match="set_size"):
        DSPN(enc, 0, 2)
    with pytest.raises(ValueError, match="set_channels"):
        DSPN(enc, 3, 2.0)
    dspn = make_dspn()
    with pytest.raises(ValueError, match=r"`z`.*\(2, 3, 8\)"):
        dspn(tf.zeros([2, 3, LATENT]))
    with pytest.raises(ValueError, match=r"size 8.*\(2, 5\)"):
        dspn(tf.zeros([2, 5]))


def test_config_round_trip(rng):
    dspn = make_dspn(iters=7, lr=3.5)
    config = dspn.get_config()
    clone = DSPN.from_config(config)
    assert (clone.set_size, clone.set_channels, clone.iters, clone.lr) == (SET_SIZE, CHANNELS, 7, 3.5)
    assert isinstance(clone.encoder, FSEncoder)
    assert (clone.encoder.dim, clone.encoder.latent, clone.encoder.n_pieces) == (16, LATENT, 5)
    assert clone.encoder is not dspn.encoder


def test_graph_loop_with_zero_iters_and_dynamic_batch():
    # A served model may be asked for 0 steps with a batch size unknown at
    # trace time; stacking the empty per-step arrays must still work.
    decoder = DSPN(FSEncoder(8, 4), 5, 2, iters=3)
    decode = tf.function(
        lambda z, n: decoder(z, iters=n), input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([], tf.int32)]
    )
    out = decode(tf.zeros([3, 4]), tf.constant(0))
    assert out["sets"].shape == (1, 3, 5, 2)
    assert out["inner_losses"].shape == (0, 3) and out["grad_norms"].shape == (0, 3)
    np.testing.assert_allclose(out["masks"][0].numpy(), 0.5)


def test_eager_inference_follows_a_changed_step_size():
    """Eager calls run a cached graph loop; changing `lr` afterwards must not reuse the old trace."""
    keras.utils.set_random_seed(0)
    decoder = DSPN(FSEncoder(dim=8, latent=4), set_size=5, set_channels=2, iters=3, lr=25.0)
    z = tf.random.normal([3, 4])
    at_25 = decoder(z)["sets"][-1].numpy()
    decoder.lr = 2.5
    at_2_5 = decoder(z)["sets"][-1].numpy()
    assert not np.allclose(at_25, at_2_5)
    fresh = DSPN(FSEncoder(dim=8, latent=4), set_size=5, set_channels=2, iters=3, lr=2.5)
    fresh(z)
    fresh.set_weights(decoder.get_weights())
    np.testing.assert_array_equal(fresh(z)["sets"][-1].numpy(), at_2_5)
