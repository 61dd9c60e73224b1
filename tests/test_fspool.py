"""FSPool: the math against a NumPy transcription of docs/algorithm.md §1, and the layer contract."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_checks import large_int32_arithmetic
from numpy_reference import fspool_reference

from dspn_tf import FSPool
from dspn_tf.fspool import sort_keys


def scattered_mask(rng, batch, size):
    """A 0/1 mask whose padding is spread over the set, with an empty and a one-element row."""
    mask = (rng.random((batch, size)) < 0.6).astype(np.float32)
    mask[0] = 0.0
    mask[1] = 0.0
    mask[1, size // 2] = 1.0
    mask[2] = 1.0
    mask[2, [0, size // 2]] = 0.0  # Holes at the front and in the middle, not only at the end.
    return mask


def built_pool(n_pieces, channels, dtype="float32"):
    pool = FSPool(n_pieces, dtype=dtype)
    pool.build((None, None, channels))
    return pool


# (set size, n_pieces): 11 and 21 put ranks exactly on the knots (t integer),
# 7/5 between them, n_pieces = 1 is a single linear piece, N = 1 has r = 0 only.
SIZES_AND_PIECES = [(7, 5), (11, 5), (21, 20), (4, 1), (1, 3), (2, 20)]


@pytest.mark.parametrize("size,n_pieces", SIZES_AND_PIECES)
def test_matches_numpy_without_mask(rng, size, n_pieces):
    x = rng.normal(size=(3, size, 4)).astype(np.float32)
    pool = built_pool(n_pieces, 4)
    expected = fspool_reference(x.astype(np.float64), pool.weight.numpy().astype(np.float64))
    np.testing.assert_allclose(pool(x).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,n_pieces", [(9, 5), (12, 20), (6, 1)])
def test_matches_numpy_with_scattered_mask(rng, size, n_pieces):
    x = rng.normal(size=(5, size, 3)).astype(np.float32)
    mask = scattered_mask(rng, 5, size)
    # Large padded values: if padding entered the sort or the sum the result would be far off.
    x_padded = np.where(mask[..., None] > 0, x, 50.0).astype(np.float32)
    pool = built_pool(n_pieces, 3)
    expected = fspool_reference(x.astype(np.float64), pool.weight.numpy().astype(np.float64), mask)
    got = pool(x_padded, mask=mask).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[0], 0.0)  # An empty set pools to 0.


def test_masked_pool_uses_each_sets_own_size(rng):
    # A set padded with masked slots pools exactly like the same set unpadded.
    x = rng.normal(size=(1, 5, 3)).astype(np.float32)
    pool = built_pool(20, 3)
    padded = np.concatenate([x[:, :2], np.full((1, 4, 3), 7.0, np.float32), x[:, 2:]], axis=1)
    mask = np.array([[1, 1, 0, 0, 0, 0, 1, 1, 1]], np.float32)
    np.testing.assert_allclose(pool(padded, mask=mask).numpy(), pool(x).numpy(), rtol=1e-6, atol=1e-6)


def test_single_element_uses_first_weight(rng):
    # N = 1: r = 0, so the output is x * W[:, 0] (no division by N - 1 = 0).
    x = rng.normal(size=(2, 1, 3)).astype(np.float32)
    pool = built_pool(4, 3)
    np.testing.assert_allclose(pool(x).numpy(), x[:, 0] * pool.weight.numpy()[:, 0], rtol=1e-6)


def test_one_piece_interpolates_between_two_weights(rng):
    # n_pieces = 1: weight of position i of n is (1 - r) W[:, 0] + r W[:, 1].
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    pool = built_pool(1, 3)
    w = pool.weight.numpy()
    r = np.arange(5) / 4.0
    sorted_x = -np.sort(-x, axis=1)
    expected = np.sum(sorted_x * ((1 - r)[:, None] * w[:, 0] + r[:, None] * w[:, 1]), axis=1)
    np.testing.assert_allclose(pool(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_sorts_descending_not_ascending(rng):
    # Weights that rise with rank: descending order puts the largest value on W[:, 0] = 0.
    pool = built_pool(1, 1)
    pool.weight.assign([[0.0, 1.0]])
    x = np.array([[[3.0], [1.0], [2.0]]], np.float32)
    np.testing.assert_allclose(pool(x).numpy(), [[0.0 * 3 + 0.5 * 2 + 1.0 * 1]])


def test_permutation_invariant_with_and_without_mask(rng):
    x = rng.normal(size=(4, 10, 3)).astype(np.float32)
    mask = scattered_mask(rng, 4, 10)
    perm = rng.permutation(10)
    pool = built_pool(20, 3)
    np.testing.assert_allclose(pool(x[:, perm]).numpy(), pool(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        pool(x[:, perm], mask=mask[:, perm]).numpy(), pool(x, mask=mask).numpy(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("masked", [False, True])
def test_input_gradient_matches_finite_differences(rng, masked):
    pool = built_pool(4, 3, dtype="float64")
    # Distinct values (no ties), so the sort order is locally constant.
    x = tf.constant(rng.permutation(30).reshape(2, 5, 3) / 7.0 + rng.normal(size=(2, 5, 3)) * 0.01)
    mask = tf.constant([[1, 0, 1, 1, 0], [0, 1, 1, 1, 1]], tf.float64) if masked else None
    theoretical, numerical = tf.test.compute_gradient(lambda v: pool(v, mask=mask), [x], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)
    assert np.abs(theoretical[0]).max() > 0.1
    if masked:
        # Padded positions get no gradient.
        grad = theoretical[0].reshape(2 * 3, 2, 5, 3)
        assert np.all(grad[:, 0, [1, 4]] == 0) and np.all(grad[:, 1, 0] == 0)


def test_weight_gradient_matches_numpy_finite_differences(rng):
    # Differentiating the NumPy reference w.r.t. W checks which knots each rank feeds.
    x = rng.normal(size=(2, 7, 3))
    mask = np.array([[1, 1, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], np.float64)
    readout = rng.normal(size=(2, 3))
    pool = built_pool(5, 3, dtype="float64")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(pool(tf.constant(x), mask=tf.constant(mask)) * readout)
    grad = tape.gradient(loss, pool.weight).numpy()
    w = pool.weight.numpy()
    numerical = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        step = np.zeros_like(w)
        step[idx] = 1e-6
        plus = np.sum(fspool_reference(x, w + step, mask) * readout)
        minus = np.sum(fspool_reference(x, w - step, mask) * readout)
        numerical[idx] = (plus - minus) / 2e-6
    np.testing.assert_allclose(grad, numerical, atol=1e-7)


def test_input_gradient_is_differentiable_wrt_weights(rng):
    # DSPN differentiates dPool/dx again (w.r.t. the weights): the sort's
    # gradient must itself have a gradient. d/dW of <dPool/dx, v> is linear in W,
    # so a central difference is exact up to rounding.
    pool = built_pool(3, 2, dtype="float64")
    x = tf.constant(rng.normal(size=(2, 6, 2)))
    v = tf.constant(rng.normal(size=(2, 6, 2)))

    def inner(weight_values=None):
        if weight_values is not None:
            pool.weight.assign(weight_values)
        with tf.GradientTape() as outer:
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = tf.reduce_sum(pool(x) ** 2)
            value = tf.reduce_sum(tape.gradient(out, x) * v)
        return value, outer.gradient(value, pool.weight)

    w0 = pool.weight.numpy()
    _, grad = inner()
    assert grad is not None
    numerical = np.zeros_like(w0)
    for idx in np.ndindex(*w0.shape):
        step = np.zeros_like(w0)
        step[idx] = 1e-6
        numerical[idx] = (inner(w0 + step)[0].numpy() - inner(w0 - step)[0].numpy()) / 2e-6
    pool.weight.assign(w0)
    np.testing.assert_allclose(grad.numpy(), numerical, rtol=1e-5, atol=1e-6)
    assert np.abs(numerical).max() > 0.1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_sort_keys_order_exactly_like_the_floats(rng, dtype):
    # Every pair of values must compare the same way as keys as it does as floats:
    # signs, zeros of both signs (equal), infinities, subnormals, ties.
    tiny = {"float16": 6e-8, "bfloat16": 1e-39, "float32": 1e-45, "float64": 5e-324}[dtype]
    special = [0.0, -0.0, np.inf, -np.inf, tiny, -tiny, 1.0, -1.0, 1.0, -1.0, 3e4, -3e4, 0.5, -2.0]
    values = tf.constant(
        np.concatenate([special, rng.normal(size=100) * 10.0]).astype(tf.as_dtype(dtype).as_numpy_dtype)
    )
    keys = sort_keys(values).numpy()
    # Compared by TensorFlow on the same device, as a float sort compares them
    # (TF's CPU kernels treat subnormals as zero; keys and floats agree).
    less = tf.less(values[:, None], values[None, :]).numpy()
    equal = tf.equal(values[:, None], values[None, :]).numpy()
    assert less.any() and (equal & ~np.eye(len(keys), dtype=bool)).any()
    np.testing.assert_array_equal(keys[:, None] < keys[None, :], less)
    np.testing.assert_array_equal(keys[:, None] == keys[None, :], equal)


def test_tied_elements_take_positions_in_index_order(rng):
    # Equal values (including 0.0 and -0.0, equal as floats) are ranked by
    # index, as a stable descending sort does: the gradient of the pool with
    # respect to each element is the weight of that element's position.
    x = np.array([[[0.0], [2.0], [-0.0], [2.0], [0.0], [-1.0], [-0.0]]], np.float32)
    pool = built_pool(3, 1)
    w = pool.weight.numpy()[0]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = pool(xt)
    grad = tape.gradient(out, xt).numpy()[0, :, 0]
    order = np.argsort(-x[0, :, 0], kind="stable")  # -(-0.0) == 0.0: ties stay in index order.
    r = np.arange(7) / 6.0
    t = 3 * r
    k = np.minimum(np.floor(t), 2).astype(int)
    position_weight = (1 - (t - k)) * w[k] + (t - k) * w[k + 1]
    expected = np.empty(7)
    expected[order] = position_weight
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_no_int32_arithmetic_on_set_sized_tensors(masked):
    # On a GPU, TensorFlow runs int32 Add/Sub/Mul/... on the host: a
    # set-sized int32 op in the pool would copy every batch off the device
    # and back. Sort keys and scatter indices must use bitwise ops or int64.
    pool = built_pool(5, 3)
    fn = tf.function(lambda x, m: pool(x, mask=m if masked else None))
    graph = fn.get_concrete_function(tf.TensorSpec([4, 7, 3]), tf.TensorSpec([4, 7])).graph
    offenders = large_int32_arithmetic(graph, min_elements=7)
    assert not offenders, offenders


# --- Contract -----------------------------------------------------------------------------------


def test_weight_shape_and_output_shape():
    pool = FSPool(n_pieces=6)
    out = pool(tf.zeros([3, 8, 5]))
    assert out.shape == (3, 5)
    assert pool.weight.shape == (5, 7)
    assert tuple(pool.compute_output_shape((None, 8, 5))) == (None, 5)


def test_default_is_twenty_pieces():
    assert FSPool().n_pieces == 20


def test_config_round_trip(rng):
    pool = FSPool(n_pieces=7, name="my_pool")
    config = pool.get_config()
    assert config["n_pieces"] == 7
    clone = FSPool.from_config(config)
    assert clone.n_pieces == 7 and clone.name == "my_pool"


def test_keras_file_round_trip(rng):
    inputs = keras.Input((6, 3))
    model = keras.Model(inputs, FSPool(5)(inputs))
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pool.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[-1], FSPool)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_dynamic_batch_under_tf_function(rng):
    pool = built_pool(5, 3)
    weight = pool.weight.numpy().astype(np.float64)
    fn = tf.function(pool, input_signature=[tf.TensorSpec([None, 6, 3], tf.float32)])
    masked = tf.function(
        lambda x, m: pool(x, mask=m),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([None, None], tf.float32)],
    )
    for batch in (1, 5):
        x = rng.normal(size=(batch, 6, 3)).astype(np.float32)
        np.testing.assert_allclose(fn(x).numpy(), fspool_reference(x, weight), rtol=1e-5, atol=1e-5)
        mask = (rng.random((batch, 6)) < 0.5).astype(np.float32)
        np.testing.assert_allclose(masked(x, mask).numpy(), fspool_reference(x, weight, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_pieces", [0, -3, 2.5, "20"])
def test_bad_n_pieces(n_pieces):
    with pytest.raises(ValueError, match="n_pieces"):
        FSPool(n_pieces=n_pieces)


def test_bad_rank_names_the_shape():
    with pytest.raises(ValueError, match=r"rank 3.*\(4, 5\)"):
        FSPool(3)(tf.zeros([4, 5]))


@pytest.mark.parametrize("mask_shape", [(2, 4), (2, 5, 1), (5,)])
def test_bad_mask_shape_names_mask(mask_shape):
    with pytest.raises(ValueError, match=r"`mask`.*\(2, 5, 3\)"):
        FSPool(3)(tf.zeros([2, 5, 3]), mask=tf.ones(mask_shape))


def test_feature_count_differing_from_build():
    pool = built_pool(3, 4)
    with pytest.raises(ValueError, match=r"built for 4 features.*\(2, 5, 3\)"):
        pool(tf.zeros([2, 5, 3]))
