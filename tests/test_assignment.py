"""The in-graph assignment solver (`dspn_tf.assignment`) against scipy's `linear_sum_assignment`."""

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspn_tf import losses
from dspn_tf.assignment import in_xla_compilation, linear_assignment, resolve_solver
from dspn_tf.loss_settings import LossSettings

# Kinds of cost batches, each made from a seed (NumPy draws them: hypothesis
# picks the kind, the sizes, the dtype and the seed, and shrinks those).
KINDS = ("float", "int_ties", "constant", "degenerate_rows", "huge", "huge_offset", "tiny", "huge_and_tiny", "masked")


def make_cost(kind, batch, n, seed, dtype):
    rng = np.random.default_rng(seed)
    shape = (batch, n, n)
    if kind == "float":
        cost = rng.normal(size=shape)
    elif kind == "int_ties":
        cost = rng.integers(0, 4, size=shape).astype(np.float64)  # Many optimal assignments.
    elif kind == "constant":
        cost = np.full(shape, rng.normal())
    elif kind == "degenerate_rows":
        cost = rng.random(shape)
        constant_rows = rng.random((batch, n)) < 0.4
        cost = np.where(constant_rows[..., None], rng.random((batch, n, 1)), cost)
        # Some rows repeat row 0 and some columns repeat column 0.
        cost[:, rng.random(n) < 0.3, :] = cost[:, :1, :]
        cost[:, :, rng.random(n) < 0.3] = cost[:, :, :1]
    elif kind == "huge":
        cost = rng.random(shape) * 1e6
    elif kind == "huge_offset":
        cost = 1e6 + rng.random(shape) * 100.0
    elif kind == "tiny":
        cost = rng.random(shape) * 1e-9
    elif kind == "huge_and_tiny":
        cost = np.where(rng.random(shape) < 0.5, 1e6 * rng.random(shape), 1e-9 * rng.random(shape))
    elif kind == "masked":
        # As hungarian_loss builds it: [set, mask] vectors, padded targets are zero vectors with mask 0.
        sizes = rng.integers(0, n + 1, size=batch)
        target_mask = (np.arange(n)[None] < sizes[:, None]).astype(np.float64)
        target = rng.random((batch, n, 3)) * target_mask[..., None]
        pred = rng.normal(size=(batch, n, 3)) * 0.1
        pred_mask = rng.random((batch, n))
        cost = losses.pairwise_cost(
            losses._with_mask(tf.constant(pred), tf.constant(pred_mask)),
            losses._with_mask(tf.constant(target), tf.constant(target_mask)),
        ).numpy()
    else:
        raise ValueError(kind)
    return cost.astype(dtype)


def assert_optimal(cost, cols):
    """`cols` is a permutation per matrix with scipy's optimal total (in float64 on the same numbers)."""
    cost = np.asarray(cost)
    batch, n, _ = cost.shape
    cols = np.asarray(cols)
    assert cols.shape == (batch, n) and cols.dtype == np.int32
    # The solver's arithmetic is in the cost's dtype: its rounding, relative to
    # the largest entry, may cost a few ulps per matched pair.
    eps = np.finfo(cost.dtype).eps
    exact = cost.astype(np.float64)
    for b in range(batch):
        assert sorted(cols[b]) == list(range(n)), f"matrix {b}: not a permutation: {cols[b]}"
        rows, best_cols = scipy.optimize.linear_sum_assignment(exact[b])
        best = exact[b][rows, best_cols].sum()
        got = exact[b][np.arange(n), cols[b]].sum()
        scale = exact[b].max() - exact[b].min() + np.finfo(np.float64).tiny
        assert got - best <= 64 * eps * n * scale, f"matrix {b}: total {got} > optimum {best}"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(1, 64),
    batch=st.integers(1, 256),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_optimal_like_scipy(kind, n, batch, seed, dtype):
    batch = max(1, min(batch, 2**15 // (n * n)))  # Bounded work per example: large n, fewer matrices.
    cost = make_cost(kind, batch, n, seed, dtype)
    assert_optimal(cost, linear_assignment(cost).numpy())


@pytest.mark.parametrize("batch, n", [(256, 64), (256, 1), (1, 64)])
def test_largest_sizes(batch, n):
    cost = make_cost("float", batch, n, seed=batch + n, dtype=np.float32)
    assert_optimal(cost, linear_assignment(cost).numpy())


def test_one_element():
    cols = linear_assignment(np.array([[[3.0]], [[-1e9]]], np.float32))
    np.testing.assert_array_equal(cols.numpy(), [[0], [0]])


def test_known_optimum():
    cost = np.array([[[4, 1, 3], [2, 0, 5], [3, 2, 2]]], np.float64)
    np.testing.assert_array_equal(linear_assignment(cost).numpy(), [[1, 0, 2]])  # Total 5.


def test_jitted_equals_eager():
    jitted = tf.function(linear_assignment, jit_compile=True)
    for n, kind in [(1, "float"), (7, "float"), (20, "masked"), (33, "float"), (12, "int_ties")]:
        cost = make_cost(kind, 9, n, seed=n, dtype=np.float32)
        eager, xla = linear_assignment(cost).numpy(), jitted(cost).numpy()
        assert_optimal(cost, xla)
        if kind != "int_ties":  # Continuous costs: the optimum is unique.
            np.testing.assert_array_equal(xla, eager)


def test_dynamic_shapes_in_a_graph():
    solve = tf.function(linear_assignment, input_signature=[tf.TensorSpec([None, None, None], tf.float64)])
    for batch, n in [(3, 5), (1, 1), (4, 16)]:
        cost = make_cost("float", batch, n, seed=n, dtype=np.float64)
        assert_optimal(cost, solve(cost).numpy())
    assert solve(np.zeros((2, 0, 0))).shape == (2, 0)


def test_half_precision_and_integer_costs():
    cost = make_cost("float", 4, 6, seed=1, dtype=np.float32)
    assert_optimal(cost.astype(np.float16).astype(np.float32), linear_assignment(tf.cast(cost, tf.float16)).numpy())
    ints = np.random.default_rng(2).integers(0, 5, (3, 6, 6))
    assert_optimal(ints.astype(np.float64), linear_assignment(ints).numpy())


def test_non_finite_costs_still_give_permutations():
    cost = make_cost("float", 3, 6, seed=3, dtype=np.float32)
    cost[0, 2, 3] = np.nan
    cost[1] = np.inf
    cost[2, :, 1] = -np.inf
    cols = linear_assignment(cost).numpy()
    for row in cols:
        assert sorted(row) == list(range(6))


def test_no_gradient_through_the_assignment():
    cost = tf.Variable(make_cost("float", 2, 4, seed=4, dtype=np.float32))
    with tf.GradientTape() as tape:
        cols = linear_assignment(cost)
        total = tf.reduce_sum(tf.gather(cost, cols, axis=2, batch_dims=2))
    grad = tape.gradient(total, cost).numpy()
    expected = np.zeros((2, 4, 4), np.float32)
    for b in range(2):
        expected[b, np.arange(4), cols.numpy()[b]] = 1.0
    np.testing.assert_array_equal(grad, expected)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        linear_assignment(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[k, n, n\]"):
        linear_assignment(np.zeros((2, 2), np.float32))


# --- The solver choice and the Hungarian loss -------------------------------------------------------


def test_hungarian_loss_same_with_both_solvers(rng):
    steps, batch, n, channels = 3, 6, 7, 3
    pred = tf.constant(rng.normal(size=(steps, batch, n, channels)).astype(np.float32))
    pred_mask = tf.constant(rng.random((steps, batch, n)).astype(np.float32))
    mask = (np.arange(n)[None] < rng.integers(1, n + 1, size=batch)[:, None]).astype(np.float32)
    target = tf.constant((rng.random((batch, n, channels)) * mask[..., None]).astype(np.float32))
    results = {}
    for solver in ("tf", "scipy"):
        with tf.GradientTape() as tape:
            tape.watch(pred)
            loss = losses.hungarian_loss(pred, pred_mask, target, mask, all_steps=True, solver=solver)
        results[solver] = (loss.numpy(), tape.gradient(loss, pred).numpy())
    np.testing.assert_allclose(results["tf"][0], results["scipy"][0], rtol=1e-6)
    np.testing.assert_allclose(results["tf"][1], results["scipy"][1], rtol=1e-5, atol=1e-8)


def test_hungarian_assignment_rejects_unknown_solver():
    with pytest.raises(ValueError, match="solver"):
        losses.hungarian_assignment(tf.zeros([1, 2, 2]), solver="lapjv")


def test_auto_solver_follows_xla():
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        pytest.skip("'auto' is 'tf' everywhere with an accelerator")
    assert resolve_solver("auto") == "scipy"
    assert resolve_solver("auto", jit_compile=True) == "tf"
    assert resolve_solver("scipy", jit_compile=True) == "scipy"
    seen = {}

    def probe(x):
        seen["xla"] = in_xla_compilation()
        return x

    tf.function(probe)(tf.constant(1.0))
    assert not seen["xla"]
    tf.function(probe, jit_compile=True)(tf.constant(1.0))
    assert seen["xla"]
    # So "auto" inside a jit-compiled function picks the in-graph solver and compiles.
    cost = make_cost("float", 3, 5, seed=5, dtype=np.float32)
    assert_optimal(cost, tf.function(losses.hungarian_assignment, jit_compile=True)(cost).numpy())


def test_loss_settings_solver():
    assert LossSettings().solver == "auto"
    old = {"set_key": "state", "loss": "hungarian", "all_steps": False, "repr_lambda": 0.1, "iters": None}
    assert LossSettings.from_config(old).solver == "auto"  # Configs saved before the field existed.
    settings = LossSettings(loss="hungarian", solver="tf")
    assert LossSettings.from_config(settings.get_config()) == settings
    assert settings.for_step() is settings
    assert LossSettings(solver="auto").for_step(jit_compile=True).solver == "tf"
    with pytest.raises(ValueError, match="solver"):
        LossSettings(solver="munkres")
