"""Set losses (docs/algorithm.md §7) against NumPy / brute-force references."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from graph_checks import large_int32_arithmetic
from numpy_reference import chamfer_reference, huber_reference, pairwise_cost_reference

from dspn_tf import losses
from dspn_tf.indexing import flat_segment_ids


def random_prediction(rng, steps, batch, n, channels):
    # Scale 1.5 puts many differences beyond delta = 1, so both Huber pieces are used.
    sets = (rng.normal(size=(steps, batch, n, channels)) * 1.5).astype(np.float32)
    masks = rng.uniform(-0.2, 1.2, size=(steps, batch, n)).astype(np.float32)  # Soft, even out of range.
    return sets, masks


def random_target(rng, batch, n, channels):
    target = (rng.normal(size=(batch, n, channels)) * 1.5).astype(np.float32)
    mask = (rng.random((batch, n)) < 0.7).astype(np.float32)
    target[mask == 0] = 0.0  # Padding is zero vectors with mask 0.
    return target, mask


def brute_force_hungarian(pred_set, pred_mask, target_set, target_mask):
    """Minimum over all permutations of the mean matched cost, per sample."""
    out = []
    for b in range(target_set.shape[0]):
        cost = pairwise_cost_reference(pred_set[b], pred_mask[b], target_set[b], target_mask[b])
        n = cost.shape[0]
        out.append(min(np.mean(cost[np.arange(n), list(p)]) for p in itertools.permutations(range(n))))
    return np.array(out)


# --- Huber --------------------------------------------------------------------------------------


def test_huber_matches_smooth_l1():
    x = np.array([-3.0, -1.0, -0.999, -0.3, 0.0, 0.2, 1.0, 1.5, 10.0], np.float32)
    np.testing.assert_allclose(losses.huber(x).numpy(), huber_reference(x), rtol=1e-6)


def test_huber_second_derivative_is_one_inside_delta_including_zero():
    # The DSPN outer gradient differentiates the inner Huber gradient: its
    # second derivative must be 1 on (-1, 1), also at exactly 0 (where a
    # formulation through |x| gives 0), and 0 outside.
    x = tf.constant([-2.0, -0.5, 0.0, 0.5, 2.0], tf.float64)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = tf.reduce_sum(losses.huber(x))
        grad = inner.gradient(y, x)
    np.testing.assert_allclose(grad.numpy(), [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(outer.gradient(grad, x).numpy(), [0.0, 1.0, 1.0, 1.0, 0.0])


def test_pairwise_cost_matches_numpy(rng):
    pred = rng.normal(size=(2, 4, 3)).astype(np.float32) * 2
    target = rng.normal(size=(2, 5, 3)).astype(np.float32) * 2
    got = losses.pairwise_cost(pred, target).numpy()
    assert got.shape == (2, 4, 5)
    for b in range(2):
        expected = huber_reference(pred[b][:, None] - target[b][None]).mean(axis=-1)
        np.testing.assert_allclose(got[b], expected, rtol=1e-5, atol=1e-7)


# --- Chamfer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps,n,m", [(1, 5, 5), (3, 6, 4), (4, 3, 7)])
def test_chamfer_matches_numpy(rng, steps, n, m):
    sets, masks = random_prediction(rng, steps, 3, n, 2)
    target, target_mask = random_target(rng, 3, m, 2)
    expected = chamfer_reference(sets, masks, target, target_mask)  # Shape: [batch].
    got = losses.chamfer_loss(sets, masks, target, target_mask, reduction="none").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    mean = losses.chamfer_loss(sets, masks, target, target_mask).numpy()
    np.testing.assert_allclose(mean, expected.mean(), rtol=1e-5)


def test_chamfer_single_step_input_and_mask_matters(rng):
    sets, masks = random_prediction(rng, 1, 2, 5, 2)
    target, target_mask = random_target(rng, 2, 5, 2)
    single = losses.chamfer_loss(sets[0], masks[0], target, target_mask, reduction="none").numpy()
    np.testing.assert_allclose(single, chamfer_reference(sets, masks, target, target_mask), rtol=1e-5)
    # The mask is a feature: a prediction equal to the target set but with a wrong mask is penalised.
    exact = losses.chamfer_loss(target, target_mask, target, target_mask).numpy()
    wrong_mask = losses.chamfer_loss(target, 1.0 - target_mask, target, target_mask).numpy()
    assert exact == 0.0 and wrong_mask > 0.05


def test_chamfer_under_tf_function_with_unknown_steps(rng):
    sets, masks = random_prediction(rng, 3, 2, 5, 2)
    target, target_mask = random_target(rng, 2, 5, 2)
    fn = tf.function(
        lambda s, m, t, tm: losses.chamfer_loss(s, m, t, tm, reduction="none"),
        input_signature=[
            tf.TensorSpec([None, None, 5, 2], tf.float32),
            tf.TensorSpec([None, None, 5], tf.float32),
            tf.TensorSpec([None, 5, 2], tf.float32),
            tf.TensorSpec([None, 5], tf.float32),
        ],
    )
    np.testing.assert_allclose(
        fn(sets, masks, target, target_mask).numpy(), chamfer_reference(sets, masks, target, target_mask), rtol=1e-5
    )


@pytest.mark.parametrize("steps", [11, None])
def test_chamfer_never_builds_a_five_dim_tensor(steps):
    # docs/algorithm.md §7: 11 × 32 × 342 × 342 × 3 floats do not fit; the graph must stay 4-D.
    fn = tf.function(lambda s, m, t, tm: losses.chamfer_loss(s, m, t, tm))
    graph = fn.get_concrete_function(
        tf.TensorSpec([steps, 32, 342, 2], tf.float32),
        tf.TensorSpec([steps, 32, 342], tf.float32),
        tf.TensorSpec([32, 342, 2], tf.float32),
        tf.TensorSpec([32, 342], tf.float32),
    ).graph
    ranks = [out.shape.rank for op in graph.get_operations() for out in op.outputs]
    assert max(r for r in ranks if r is not None) <= 4


def test_chamfer_gradient_is_finite_and_nonzero(rng):
    sets, masks = random_prediction(rng, 2, 2, 4, 2)
    target, target_mask = random_target(rng, 2, 4, 2)
    sets, masks = tf.constant(sets), tf.constant(masks)
    with tf.GradientTape() as tape:
        tape.watch([sets, masks])
        loss = losses.chamfer_loss(sets, masks, target, target_mask)
    for grad in tape.gradient(loss, [sets, masks]):
        assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() > 0


def test_flat_segment_ids_hand_computed():
    # Rows in row-major order of the leading dims, each `size` long; int64 ids.
    index = tf.constant([[[2, 0], [1, 1]], [[0, 2], [2, 1]]], tf.int32)  # 4 rows of 2 positions, size 3.
    ids = flat_segment_ids(index, 3)
    assert ids.dtype == tf.int64
    np.testing.assert_array_equal(ids.numpy(), [2, 0, 4, 4, 6, 8, 11, 10])


def test_chamfer_gradient_has_no_int32_arithmetic_on_matches():
    # The backward scatter indexes every matched pair: int32 arithmetic there
    # would run on the host of a GPU (see graph_checks).
    def loss_and_grad(s, m, t, tm):
        with tf.GradientTape() as tape:
            tape.watch([s, m])
            loss = losses.chamfer_loss(s, m, t, tm)
        return tape.gradient(loss, [s, m])

    spec = [tf.TensorSpec([3, 2, 5, 2]), tf.TensorSpec([3, 2, 5]), tf.TensorSpec([2, 5, 2]), tf.TensorSpec([2, 5])]
    graph = tf.function(loss_and_grad).get_concrete_function(*spec).graph
    assert not large_int32_arithmetic(graph, min_elements=5)


# --- Hungarian ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_hungarian_equals_brute_force(rng, n):
    sets, masks = random_prediction(rng, 1, 3, n, 3)
    target, target_mask = random_target(rng, 3, n, 3)
    got = losses.hungarian_loss(sets, masks, target, target_mask, reduction="none").numpy()
    np.testing.assert_allclose(got, brute_force_hungarian(sets[0], masks[0], target, target_mask), rtol=1e-5)


def test_hungarian_is_zero_for_a_permuted_target(rng):
    target, target_mask = random_target(rng, 4, 6, 3)
    perm = rng.permutation(6)
    loss = losses.hungarian_loss(target[:, perm], target_mask[:, perm], target, target_mask).numpy()
    assert loss == 0.0
    # Scoring the unpermuted index pairing instead of the matching would not be 0.
    pairwise = losses.pairwise_cost(
        np.concatenate([target[:, perm], target_mask[:, perm, None]], -1),
        np.concatenate([target, target_mask[..., None]], -1),
    ).numpy()
    assert np.mean(np.diagonal(pairwise, axis1=1, axis2=2)) > 0.1


def test_hungarian_gradient_is_the_matched_cost_gradient(rng):
    sets, masks = random_prediction(rng, 1, 2, 5, 3)
    target, target_mask = random_target(rng, 2, 5, 3)
    sets, masks = tf.constant(sets[0]), tf.constant(masks[0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([sets, masks])
        loss = losses.hungarian_loss(sets, masks, target, target_mask)
        # The same loss written with the brute-force optimal permutation.
        cost = losses.pairwise_cost(
            tf.concat([sets, masks[..., None]], -1), tf.concat([target, target_mask[..., None]], -1)
        )
        manual = []
        for b in range(2):
            c = cost[b].numpy()
            best = min(itertools.permutations(range(5)), key=lambda p: c[np.arange(5), list(p)].sum())
            manual.append(tf.reduce_mean(tf.gather_nd(cost[b], list(zip(range(5), best)))))
        manual = tf.reduce_mean(tf.stack(manual))
    np.testing.assert_allclose(loss.numpy(), manual.numpy(), rtol=1e-6)
    for got, expected in zip(tape.gradient(loss, [sets, masks]), tape.gradient(manual, [sets, masks])):
        assert np.abs(got.numpy()).max() > 0
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


def test_hungarian_inside_tf_function(rng):
    sets, masks = random_prediction(rng, 3, 4, 5, 3)
    target, target_mask = random_target(rng, 4, 5, 3)
    fn = tf.function(
        lambda s, m, t, tm: losses.hungarian_loss(s, m, t, tm, all_steps=True, reduction="none"),
        input_signature=[
            tf.TensorSpec([None, None, 5, 3], tf.float32),
            tf.TensorSpec([None, None, 5], tf.float32),
            tf.TensorSpec([None, 5, 3], tf.float32),
            tf.TensorSpec([None, 5], tf.float32),
        ],
    )
    eager = losses.hungarian_loss(sets, masks, target, target_mask, all_steps=True, reduction="none")
    np.testing.assert_allclose(fn(sets, masks, target, target_mask).numpy(), eager.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        fn(sets[:1, :2], masks[:1, :2], target[:2], target_mask[:2]).numpy(),
        brute_force_hungarian(sets[0, :2], masks[0, :2], target[:2], target_mask[:2]),
        rtol=1e-5,
    )


def test_hungarian_all_steps_averages_and_default_scores_last_step(rng):
    sets, masks = random_prediction(rng, 3, 2, 4, 3)
    target, target_mask = random_target(rng, 2, 4, 3)
    per_step = [brute_force_hungarian(sets[t], masks[t], target, target_mask) for t in range(3)]
    last = losses.hungarian_loss(sets, masks, target, target_mask, reduction="none").numpy()
    every = losses.hungarian_loss(sets, masks, target, target_mask, all_steps=True, reduction="none").numpy()
    np.testing.assert_allclose(last, per_step[-1], rtol=1e-5)
    np.testing.assert_allclose(every, np.mean(per_step, axis=0), rtol=1e-5)
    assert np.abs(last - every).max() > 1e-3


# --- Representation loss ------------------------------------------------------------------------


def test_repr_loss_matches_numpy_and_trains_both_sides(rng):
    a = tf.constant(rng.normal(size=(3, 6)) * 2, tf.float32)
    b = tf.constant(rng.normal(size=(3, 6)), tf.float32)
    expected = huber_reference(a.numpy() - b.numpy()).mean(axis=-1)
    np.testing.assert_allclose(losses.repr_loss(a, b, reduction="none").numpy(), expected, rtol=1e-6)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss = losses.repr_loss(a, b)
    np.testing.assert_allclose(loss.numpy(), expected.mean(), rtol=1e-6)
    grad_a, grad_b = tape.gradient(loss, [a, b])
    # Neither side is stop-gradiented (docs/algorithm.md §7: gradients reach both encoders).
    np.testing.assert_allclose(grad_a.numpy(), -grad_b.numpy())
    assert np.abs(grad_a.numpy()).max() > 0


# --- Errors -------------------------------------------------------------------------------------


def test_errors_name_the_shapes():
    s, m = tf.zeros([2, 4, 3]), tf.zeros([2, 4])
    with pytest.raises(ValueError, match=r"features.*\(2, 4, 2\)"):
        losses.chamfer_loss(s, m, tf.zeros([2, 4, 2]), m)
    with pytest.raises(ValueError, match=r"set shape \(2, 4, 3\) and mask shape \(2, 5\)"):
        losses.chamfer_loss(s, tf.zeros([2, 5]), s, m)
    with pytest.raises(ValueError, match=r"target mask shape \(2, 3\)"):
        losses.hungarian_loss(s, m, s, tf.zeros([2, 3]))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        losses.chamfer_loss(tf.zeros([2, 4]), m, s, m)
    with pytest.raises(ValueError, match="5 elements|equal sizes"):
        losses.hungarian_loss(tf.zeros([2, 5, 3]), tf.zeros([2, 5]), s, m)
    with pytest.raises(ValueError, match="reduction"):
        losses.chamfer_loss(s, m, s, m, reduction="sum")
    with pytest.raises(ValueError, match=r"\(2, 6\).*\(2, 5\)"):
        losses.repr_loss(tf.zeros([2, 6]), tf.zeros([2, 5]))
