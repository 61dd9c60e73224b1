"""FSEncoder and RNFSEncoder: NumPy references of docs/algorithm.md §2, invariance and gradient equivariance."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy_reference import fspool_reference

from dspn_tf import FSEncoder, RNFSEncoder

ENCODERS = [
    pytest.param(lambda **kw: FSEncoder(dim=16, latent=6, n_pieces=5, **kw), id="FSEncoder"),
    pytest.param(lambda **kw: RNFSEncoder(dim=16, latent=6, n_pieces=5, **kw), id="RNFSEncoder"),
]


def dense(x, layer):
    return x @ layer.kernel.numpy().astype(np.float64) + layer.bias.numpy().astype(np.float64)


def relu(x):
    return np.maximum(x, 0.0)


def fs_encoder_reference(enc, x, mask):
    e = np.concatenate([x, mask[..., None]], axis=-1)
    h = dense(relu(dense(relu(dense(e, enc.hidden1)), enc.hidden2)), enc.project)
    return fspool_reference(h / x.shape[1], enc.pool.weight.numpy().astype(np.float64))


def rn_encoder_reference(enc, x, mask):
    """Literally builds all N × N ordered pairs [e_i, e_j] and applies one Dense(2C + 2 → dim)."""
    e = np.concatenate([x, mask[..., None]], axis=-1)  # Shape: [B, N, C + 1].
    batch, n, _ = e.shape
    pairs = np.concatenate(
        [np.repeat(e[:, :, None, :], n, axis=2), np.repeat(e[:, None, :, :], n, axis=1)], axis=-1
    )  # Shape: [B, N, N, 2C + 2]; pairs[b, i, j] = [e_i, e_j].
    assert pairs.shape[-1] == enc.pair_kernel.shape[0]
    h = relu(pairs @ enc.pair_kernel.numpy().astype(np.float64) + enc.pair_bias.numpy())
    h = dense(h, enc.project).reshape(batch, n * n, -1) / (n * n)
    return fspool_reference(h, enc.pool.weight.numpy().astype(np.float64))


def random_set(rng, batch=3, size=7, channels=2):
    x = rng.normal(size=(batch, size, channels)).astype(np.float32)
    mask = (rng.random((batch, size)) < 0.7).astype(np.float32)
    mask[:, 0] = 1.0
    mask[0, 3] = 0.35  # Soft masks are legal: DSPN optimises them.
    return x, mask


def randomise_biases(enc, rng):
    # Zero-initialised biases would hide a missing or doubled bias term.
    for weight in enc.weights:
        if "bias" in weight.path:
            weight.assign(rng.normal(size=weight.shape) * 0.5)


def test_fs_encoder_matches_numpy(rng):
    x, mask = random_set(rng)
    enc = FSEncoder(dim=16, latent=6, n_pieces=5)
    enc(x, mask)
    randomise_biases(enc, rng)
    np.testing.assert_allclose(
        enc(x, mask).numpy(), fs_encoder_reference(enc, x.astype(np.float64), mask), rtol=1e-4, atol=1e-5
    )


def test_fs_encoder_divides_by_padded_size(rng):
    # Variable size reaches the encoder only through the mask feature: the
    # divisor is the padded N (a constant), not the number of real elements.
    x, _ = random_set(rng, size=8)
    mask = np.zeros((3, 8), np.float32)
    mask[:, :3] = 1.0
    x[:, 3:] = 0.0
    enc = FSEncoder(dim=16, latent=6, n_pieces=5)
    got = enc(x, mask).numpy()
    np.testing.assert_allclose(got, fs_encoder_reference(enc, x, mask), rtol=1e-4, atol=1e-6)
    # The same elements with more padding: padded elements pass through the MLP, pool and divisor.
    wider_x = np.concatenate([x, np.zeros((3, 4, 2), np.float32)], axis=1)
    wider_mask = np.concatenate([mask, np.zeros((3, 4), np.float32)], axis=1)
    np.testing.assert_allclose(
        enc(wider_x, wider_mask).numpy(), fs_encoder_reference(enc, wider_x, wider_mask), rtol=1e-4, atol=1e-6
    )
    assert np.abs(enc(wider_x, wider_mask).numpy() - got).max() > 1e-3


def test_rn_encoder_matches_naive_pairs(rng):
    x, mask = random_set(rng, size=5, channels=3)
    enc = RNFSEncoder(dim=16, latent=6, n_pieces=5)
    enc(x, mask)
    randomise_biases(enc, rng)
    # The pair kernel's two halves must differ in effect: an asymmetric kernel
    # catches using one half for both elements of the pair.
    np.testing.assert_allclose(
        enc(x, mask).numpy(), rn_encoder_reference(enc, x.astype(np.float64), mask), rtol=1e-4, atol=1e-6
    )


def test_rn_encoder_single_hidden_layer_and_pair_kernel_shape():
    enc = RNFSEncoder(dim=16, latent=6)
    enc(tf.zeros([1, 3, 4]), tf.ones([1, 3]))
    assert enc.pair_kernel.shape == (2 * (4 + 1), 16)
    assert enc.pair_bias.shape == (16,)
    # pair (dim) + project (dim → latent) + FSPool: nothing else.
    expected = 10 * 16 + 16 + 16 * 6 + 6 + 6 * 21
    assert sum(int(np.prod(w.shape)) for w in enc.trainable_weights) == expected


@pytest.mark.parametrize("make", ENCODERS)
def test_permutation_invariant(rng, make):
    x, mask = random_set(rng)
    perm = rng.permutation(x.shape[1])
    enc = make()
    np.testing.assert_allclose(enc(x[:, perm], mask[:, perm]).numpy(), enc(x, mask).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", ENCODERS)
def test_gradient_wrt_set_is_permutation_equivariant(rng, make):
    # Paper Appendix A: for an invariant g, dg/dY(perm Y) = perm dg/dY(Y),
    # which makes every DSPN inner step equivariant.
    x, mask = random_set(rng)
    perm = rng.permutation(x.shape[1])
    readout = tf.constant(rng.normal(size=(3, 6)), tf.float32)
    enc = make()

    def grads(x, mask):
        x, mask = tf.constant(x), tf.constant(mask)
        with tf.GradientTape() as tape:
            tape.watch([x, mask])
            out = tf.reduce_sum(enc(x, mask) * readout)
        return [g.numpy() for g in tape.gradient(out, [x, mask])]

    gx, gm = grads(x, mask)
    gx_perm, gm_perm = grads(x[:, perm], mask[:, perm])
    assert np.abs(gx).max() > 1e-4 and np.abs(gm).max() > 1e-4
    np.testing.assert_allclose(gx_perm, gx[:, perm], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(gm_perm, gm[:, perm], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("make", ENCODERS)
def test_builds_in_float64(rng, make):
    # Sub-layers follow the encoder's dtype policy (they used to stay float32),
    # which float64 finite-difference tests of the decoder rely on.
    enc = make(dtype="float64")
    x, mask = random_set(rng)
    out = enc(x.astype(np.float64), mask.astype(np.float64))
    assert out.dtype == tf.float64
    assert {w.dtype for w in enc.weights} == {"float64"}


@pytest.mark.parametrize("make", ENCODERS)
def test_contract(rng, make):
    enc = make()
    x, mask = random_set(rng)
    assert enc(x, mask).shape == (3, 6)
    config = enc.get_config()
    clone = type(enc).from_config(config)
    assert (clone.dim, clone.latent, clone.n_pieces) == (16, 6, 5)
    fn = tf.function(
        lambda x, m: enc(x, m),
        input_signature=[tf.TensorSpec([None, 7, 2], tf.float32), tf.TensorSpec([None, 7], tf.float32)],
    )
    np.testing.assert_allclose(fn(x[:1], mask[:1]).numpy(), enc(x[:1], mask[:1]).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fn(x, mask).numpy(), enc(x, mask).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", ENCODERS)
def test_bad_inputs(make):
    enc = make()
    enc(tf.zeros([2, 5, 3]), tf.ones([2, 5]))
    with pytest.raises(ValueError, match=r"`mask`.*\(2, 4\)"):
        enc(tf.zeros([2, 5, 3]), tf.ones([2, 4]))
    with pytest.raises(ValueError, match=r"rank 3.*\(2, 5\)"):
        enc(tf.zeros([2, 5]), tf.ones([2, 5]))
    with pytest.raises(ValueError, match=r"built for 3 features.*\(2, 5, 4\)"):
        enc(tf.zeros([2, 5, 4]), tf.ones([2, 5]))
    with pytest.raises(ValueError, match="mask"):
        enc(tf.zeros([2, 5, 3]))


@pytest.mark.parametrize("cls", [FSEncoder, RNFSEncoder])
@pytest.mark.parametrize("key", ["dim", "latent", "n_pieces"])
def test_bad_sizes_name_the_argument(cls, key):
    kwargs = {"dim": 4, "latent": 4, key: 0}
    with pytest.raises(ValueError, match=key):
        cls(**kwargs)


def test_keras_mask_is_consumed_without_warning(recwarn):
    # The encoder takes the mask as an argument; Keras must not warn that it is dropped.
    enc = FSEncoder(dim=4, latent=3)
    enc(tf.zeros([2, 5, 2]), tf.ones([2, 5]))
    assert not [w for w in recwarn if "mask" in str(w.message)]
    assert keras.ops.shape(enc(tf.zeros([2, 5, 2]), mask=tf.ones([2, 5]))) == (2, 3)
