"""Exact linear assignment in TensorFlow ops (no Python or NumPy call), batched.

`linear_assignment(cost)` solves `min_sigma sum_i cost[i, sigma(i)]` over
permutations for every `[n, n]` matrix of a `[k, n, n]` batch. It is the
shortest augmenting path form of the Hungarian algorithm (Kuhn-Munkres with
the dual potentials of Jonker and Volgenant, 1987): rows are inserted one at
a time; for each, a Dijkstra-like search over reduced costs
`cost[i, j] - u[i] - v[j]` grows a tree of alternating paths until it reaches
an unassigned column, the potentials are moved so that the tree's edges stay
tight, and the assignment is flipped along the path. That is O(n^3) per
matrix.

The batch is vectorised over one `tf.while_loop`: each matrix carries its own
state (the row it is inserting, whether it is searching or flipping a path)
and every iteration advances each unfinished matrix by one search step or one
path step, so the loop runs as many iterations as the slowest matrix needs,
not the sum over rows of the slowest. It runs eagerly, in `tf.function` and
under `tf.function(jit_compile=True)` (all shapes but `n` are fixed, and `n`
may be dynamic outside XLA).

Termination does not depend on the arithmetic: every search step adds one new
column to the tree and every path step walks back to a column added earlier,
so the result is a permutation even for costs with NaN or Inf (then it is
not specified which one).
"""

import tensorflow as tf

__all__ = ["SOLVERS", "accelerator_visible", "in_xla_compilation", "linear_assignment", "resolve_solver"]

SOLVERS = ("auto", "tf", "scipy")


def accelerator_visible():
    """True if TensorFlow sees a GPU or TPU."""
    return any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))


def in_xla_compilation():
    """True while tracing inside a `tf.function(jit_compile=True)` (best effort: a TensorFlow-internal check)."""
    try:
        from tensorflow.python.ops import control_flow_util  # noqa: PLC0415 (internal, may move)

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except (ImportError, AttributeError):
        return False


def resolve_solver(solver, *, jit_compile=False):
    """The assignment solver `solver` stands for: "tf" or "scipy".

    "auto" is "tf" (`linear_assignment`, in-graph) when the step is
    XLA-compiled (`jit_compile`, or tracing inside a jit-compiled function) or
    a GPU / TPU is visible, and "scipy" (`scipy.optimize.linear_sum_assignment`
    on the host) otherwise: on a CPU without XLA scipy's compiled solver was
    the faster of the two when this default was chosen.

    Raises:
        ValueError: for a solver not in `SOLVERS`.
    """
    if solver not in SOLVERS:
        raise ValueError(f"The assignment solver must be one of {SOLVERS}; received {solver!r}.")
    if solver != "auto":
        return solver
    return "tf" if jit_compile or in_xla_compilation() or accelerator_visible() else "scipy"


def _one_hot(index, depth):
    """Boolean `[k, depth]` with True at `index[k]`."""
    return tf.equal(tf.range(depth)[None, :], index[:, None])


def _at(values, index):
    """`values[k, index[k]]` for `[k, m]` values and `[k]` index."""
    return tf.gather(values, index[:, None], axis=1, batch_dims=1)[:, 0]


def linear_assignment(cost):
    """Optimal assignment (minimum total cost) of each `[n, n]` matrix of a batch.

    Args:
        cost: `[k, n, n]` float tensor (float16 and bfloat16 are solved in
            float32, float32 and float64 in their own dtype). No gradient
            flows through it.

    Returns:
        `[k, n]` int32: the column assigned to each row, a permutation of
        `0..n-1` per matrix. At ties, one of the optimal assignments.
    """
    cost = tf.stop_gradient(tf.convert_to_tensor(cost))
    if cost.dtype.is_integer or cost.dtype == tf.bool:
        cost = tf.cast(cost, tf.float64 if cost.dtype.size > 4 else tf.float32)
    if cost.dtype in (tf.float16, tf.bfloat16):
        cost = tf.cast(cost, tf.float32)
    if cost.shape.rank != 3:
        raise ValueError(f"linear_assignment: cost must be [k, n, n]; received shape {cost.shape}.")
    if not cost.shape[1:2].is_compatible_with(cost.shape[2:3]):
        raise ValueError(f"linear_assignment: cost matrices must be square; received shape {cost.shape}.")
    return _solve(cost)


@tf.function(autograph=False, reduce_retracing=True)
def _solve(cost):
    """`linear_assignment` of a float32 / float64 `[k, n, n]` cost (a graph also when called eagerly)."""
    dtype = cost.dtype
    k, n = tf.shape(cost)[0], tf.shape(cost)[1]
    # Subtracting each row's minimum changes every assignment's total by the
    # same amount, so it keeps the optimum, and it keeps the potentials near
    # the cost differences rather than the costs (a large common offset would
    # round the differences away).
    cost = cost - tf.reduce_min(cost, axis=2, keepdims=True)
    # Row and column 0 are the algorithm's dummies: rows and columns 1..n are
    # the matrix's. Row 0 is never read (the search starts from column 0,
    # whose row is the row being inserted) and column 0 is in the tree from
    # the first step on, so their entries do not matter.
    a = tf.pad(cost, [[0, 0], [1, 0], [1, 0]])
    m = n + 1
    inf = tf.constant(float("inf"), dtype)
    zero = tf.zeros([], dtype)
    cols = tf.range(m)[None, :]

    def start_row(row, p):
        """State for inserting `row` (per matrix): column 0 holds it, an empty tree."""
        p = tf.where(cols == 0, row[:, None], p)
        return p

    row = tf.ones([k], tf.int32)  # The row being inserted (1-based); > n: done.
    state = dict(
        row=row,
        p=start_row(row, tf.zeros([k, m], tf.int32)),  # p[j]: row assigned to column j (0: none).
        way=tf.zeros([k, m], tf.int32),  # way[j]: previous column on the path to j.
        u=tf.zeros([k, m], dtype),  # Row potentials.
        v=tf.zeros([k, m], dtype),  # Column potentials.
        minv=tf.fill([k, m], inf),  # Shortest reduced distance to each column so far.
        used=tf.zeros([k, m], tf.bool),  # Columns in the tree.
        used_rows=tf.zeros([k, m], tf.bool),  # Rows in the tree (the rows of its columns).
        j0=tf.zeros([k], tf.int32),  # The column last added (search) or being flipped (path).
        flipping=tf.zeros([k], tf.bool),  # Walking back the augmenting path.
    )

    def cond(s):
        return tf.reduce_any(s["row"] <= n)

    def body(s):
        active = s["row"] <= n
        search = active & ~s["flipping"]
        flip = active & s["flipping"]
        p, way, u, v, minv, used, used_rows, j0 = (
            s[key] for key in ("p", "way", "u", "v", "minv", "used", "used_rows", "j0")
        )

        # One search step: add column j0 (and its row i0) to the tree, relax
        # the distances from row i0, and pick the nearest column outside the tree.
        used_s = used | _one_hot(j0, m)
        i0 = tf.minimum(_at(p, j0), n)  # Finished matrices hold n + 1 in column 0.
        used_rows_s = used_rows | _one_hot(i0, m)
        a_i0 = tf.gather(a, i0, axis=1, batch_dims=1)  # Shape: [k, m].
        cur = a_i0 - _at(u, i0)[:, None] - v
        better = ~used_s & (cur < minv)
        minv_s = tf.where(better, cur, minv)
        way_s = tf.where(better, j0[:, None], way)
        outside = tf.where(used_s, inf, minv_s)
        delta = tf.reduce_min(outside, axis=1)
        # The first column outside the tree at the minimum; if none compares
        # (NaN costs), the first column outside the tree, so that the tree
        # always grows.
        nearest = ~used_s & (outside <= delta[:, None])
        j1 = tf.where(
            tf.reduce_any(nearest, axis=1),
            tf.argmax(tf.cast(nearest, tf.int32), axis=1, output_type=tf.int32),
            tf.argmax(tf.cast(~used_s, tf.int32), axis=1, output_type=tf.int32),
        )
        delta = tf.where(tf.math.is_finite(delta), delta, zero)
        u_s = u + tf.where(used_rows_s, delta[:, None], zero)
        v_s = v - tf.where(used_s, delta[:, None], zero)
        minv_s = minv_s - tf.where(used_s, zero, delta[:, None])
        found = _at(p, j1) == 0  # Reached an unassigned column: flip the path next.

        # One path step: column j0 takes the row of the column before it.
        prev = _at(way, j0)
        p_f = tf.where(_one_hot(j0, m), _at(p, prev)[:, None], p)
        finished_row = prev == 0
        next_row = s["row"] + tf.cast(finished_row, tf.int32)

        def pick(mask, a_value, b_value):
            return tf.where(mask[:, None], a_value, b_value)

        # Flipping matrices that finished their row start the next one.
        restart = flip & finished_row
        new_p = pick(search, p, pick(flip, p_f, p))
        new_p = pick(restart, start_row(next_row, new_p), new_p)
        new = dict(
            row=tf.where(flip, next_row, s["row"]),
            p=new_p,
            way=pick(search, way_s, pick(restart, tf.zeros_like(way), way)),
            u=pick(search, u_s, u),
            v=pick(search, v_s, v),
            minv=pick(search, minv_s, tf.where(restart[:, None], inf, minv)),
            used=pick(search, used_s, pick(restart, tf.zeros_like(used), used)),
            used_rows=pick(search, used_rows_s, pick(restart, tf.zeros_like(used_rows), used_rows)),
            j0=tf.where(search, j1, tf.where(restart, 0, tf.where(flip, prev, j0))),
            flipping=tf.where(search, found, tf.where(restart, False, s["flipping"])),
        )
        return [new]

    # Each row needs at most n + 1 search steps and n path steps.
    bound = n * (2 * n + 2) + 1
    state = tf.while_loop(cond, body, [state], maximum_iterations=bound)[0]
    # p[1:] - 1 is the row of each column; its argsort is the column of each row.
    return tf.argsort(state["p"][:, 1:], axis=1, stable=True)
