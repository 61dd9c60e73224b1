"""Set losses (docs/algorithm.md §7): Chamfer, Hungarian and the representation loss.

Predictions and targets are compared as `[set, mask]`: the mask is one more
feature, and padded target slots are real zero elements that predictions must
match. All losses accept either one step `[batch, n, C]` or stacked decoder
steps `[steps, batch, n, C]` (the `sets`/`masks` a decoder returns).
"""

import numpy as np
import scipy.optimize
import tensorflow as tf

from dspn_tf.assignment import linear_assignment, resolve_solver
from dspn_tf.indexing import flat_segment_ids


def huber(x, delta=1.0):
    """Elementwise Huber / smooth-L1: 0.5 x² for |x| < delta, else delta (|x| - delta / 2)."""
    # Written without a branch so that it is twice differentiable everywhere
    # the reference's smooth_l1 is. The quadratic part is taken on the clipped
    # signed value, not on min(|x|, delta): |x| has derivative sign(0) = 0 at 0,
    # which would make the second derivative at x = 0 come out 0 instead of 1.
    q = tf.clip_by_value(x, -delta, delta)
    return 0.5 * q * q + delta * (tf.abs(x) - tf.abs(q))


def _with_mask(sets, masks):
    return tf.concat([sets, tf.cast(masks, sets.dtype)[..., None]], axis=-1)


def _as_steps(sets, masks, name):
    sets = tf.convert_to_tensor(sets)
    masks = tf.convert_to_tensor(masks, dtype=sets.dtype)
    received = f"received set shape {sets.shape} and mask shape {masks.shape}"  # Before adding a step axis.
    if sets.shape.rank == 3:
        sets, masks = sets[None], masks[None]
    if sets.shape.rank != 4 or masks.shape.rank != 3:
        raise ValueError(
            f"{name}: predictions must be [batch, n, C] with mask [batch, n], or "
            f"[steps, batch, n, C] with mask [steps, batch, n]; {received}."
        )
    if not masks.shape.is_compatible_with(sets.shape[:3]):
        raise ValueError(f"{name}: the predicted mask does not match the predicted set; {received}.")
    return sets, masks


def _check_target(name, target_set, target_mask, pred_sets):
    if target_set.shape.rank != 3 or target_mask.shape.rank != 2:
        raise ValueError(
            f"{name}: target must be [batch, n, C] with mask [batch, n]; received "
            f"{target_set.shape} and {target_mask.shape}."
        )
    if not target_mask.shape.is_compatible_with(target_set.shape[:2]):
        raise ValueError(f"{name}: target mask shape {target_mask.shape} does not match target set {target_set.shape}.")
    if not target_set.shape[-1:].is_compatible_with(pred_sets.shape[-1:]):
        raise ValueError(
            f"{name}: predictions have {pred_sets.shape[-1]} features but targets have "
            f"{target_set.shape[-1]} (pred {pred_sets.shape}, target {target_set.shape})."
        )


def pairwise_cost(pred, target):
    """Huber cost averaged over features between every pred and target element.

    Args:
        pred: `[batch, n, F]`.
        target: `[batch, m, F]`.

    Returns:
        `[batch, n, m]`, entry (i, j) = mean_f huber(pred_i - target_j).
    """
    diff = pred[:, :, None, :] - target[:, None, :, :]  # Shape: [batch, n, m, F].
    return tf.reduce_mean(huber(diff), axis=-1)


def _reduce(per_sample, reduction):
    if reduction == "mean":
        return tf.reduce_mean(per_sample)
    if reduction == "none":
        return per_sample
    raise ValueError(f"`reduction` must be 'mean' or 'none'; received {reduction!r}.")


@tf.function(jit_compile=True)
def _nearest(pred, target):
    """For `[k, n, F]` pred and `[k, m, F]` target: each target's nearest pred and vice versa.

    XLA fuses the Huber cost into the two min/argmin reductions, so the
    `[k, n, m]` cost matrix is never built from many full-size temporaries
    (without fusion, 8 elementwise passes over `[k, n, m, F]`; benchmarks/README.md,
    "Chamfer", has the timings).

    Returns:
        `(min_over_pred [k, m], argmin_over_pred [k, m], min_over_target [k, n],
        argmin_over_target [k, n])`.
    """
    features = pred.shape[-1]
    cost = 0.0
    for f in range(features):  # Shape: [k, n, m] per feature, never [k, n, m, F].
        cost += huber(pred[:, :, None, f] - target[:, None, :, f])
    cost = cost / features
    n, m = tf.shape(cost)[1], tf.shape(cost)[2]
    min_i = tf.reduce_min(cost, axis=1)
    min_j = tf.reduce_min(cost, axis=2)
    # The argmins as the first index attaining the min: two more plain min
    # reductions (the cost is recomputed inside each fused reduction, with
    # the same elementwise IEEE arithmetic, so it equals the min exactly).
    # XLA's CPU argmin is a (key, index) reduction, which costs more than a
    # plain min (benchmarks/README.md, "Chamfer"). `<=` and the clamp only
    # guard against an impossible no-match.
    arg_i = tf.reduce_min(tf.where(cost <= min_i[:, None, :], tf.range(n)[None, :, None], n), axis=1)
    arg_j = tf.reduce_min(tf.where(cost <= min_j[:, :, None], tf.range(m)[None, None, :], m), axis=2)
    return min_i, tf.minimum(arg_i, n - 1), min_j, tf.minimum(arg_j, m - 1)


def _huber_grad(x, delta=1.0):
    return tf.clip_by_value(x, -delta, delta)


def _scatter_add(values, index, size):
    """`out[k, index[k, i]] += values[k, i]` for `[k, l, F]` values → `[k, size, F]`."""
    k = tf.shape(values)[0]
    flat = flat_segment_ids(index, size)
    out = tf.math.unsorted_segment_sum(tf.reshape(values, [-1, tf.shape(values)[2]]), flat, k * size)
    return tf.reshape(out, [k, size, tf.shape(values)[2]])


@tf.custom_gradient
def _chamfer_pairs(pred, target):
    """Per-sample Chamfer `mean_j min_i d + mean_i min_j d` of `[k, n, F]` / `[k, m, F]`.

    The gradient of a min is the gradient of the chosen entry, so the
    backward pass only gathers the matched pairs (`[k, m, F]` and `[k, n, F]`)
    instead of back-propagating through the whole cost matrix. At an exact
    tie the first index gets the gradient (`tf.reduce_min` would split it
    between the tied entries; for the identical zero vectors of padded
    targets both give the same gradient to the predictions).
    """
    min_i, arg_i, min_j, arg_j = _nearest(pred, target)
    value = tf.reduce_mean(min_i, axis=1) + tf.reduce_mean(min_j, axis=1)  # Shape: [k].

    def grad(upstream):
        dtype = pred.dtype
        n, m = tf.shape(pred)[1], tf.shape(target)[1]
        features = tf.cast(tf.shape(pred)[2], dtype)
        up = upstream[:, None, None]
        # Term mean_j min_i: target j pulls on its nearest prediction arg_i[j].
        g_to = _huber_grad(tf.gather(pred, arg_i, batch_dims=1) - target) * (
            up / (features * tf.cast(m, dtype))
        )  # Shape: [k, m, F].
        # Term mean_i min_j: prediction i pulls on its nearest target arg_j[i].
        g_from = _huber_grad(pred - tf.gather(target, arg_j, batch_dims=1)) * (
            up / (features * tf.cast(n, dtype))
        )  # Shape: [k, n, F].
        d_pred = _scatter_add(g_to, arg_i, n) + g_from
        d_target = -g_to - _scatter_add(g_from, arg_j, m)
        return d_pred, d_target

    return value, grad


def chamfer_loss(pred_sets, pred_masks, target_set, target_mask, all_steps=True, reduction="mean", score_mask=True):
    """Chamfer loss averaged over decoder steps (set-MNIST; docs/algorithm.md §7).

    Per sample and step: `mean_j min_i d(i, j) + mean_i min_j d(i, j)` with d
    the feature-mean Huber cost of `[set, mask]` vectors. The cost is built one
    step at a time inside one fused XLA kernel, so memory is `[batch, n, m]`,
    never 5-D, and the gradient touches only the matched pairs.

    Args:
        pred_sets: `[steps, batch, n, C]` or `[batch, n, C]`.
        pred_masks: `[steps, batch, n]` or `[batch, n]`.
        target_set: `[batch, m, C]`.
        target_mask: `[batch, m]`.
        all_steps: If True (the reference for Chamfer), the loss is averaged
            over all steps; if False, only the last step is scored.
        reduction: "mean" (scalar, batch mean) or "none" (`[batch]`).
        score_mask: If True, the mask is one more feature of every element;
            if False, only the set's features are compared (sets without padding).

    Returns:
        The loss averaged over the scored steps.
    """
    pred_sets, pred_masks = _as_steps(pred_sets, pred_masks, "chamfer_loss")
    if not all_steps:
        pred_sets, pred_masks = pred_sets[-1:], pred_masks[-1:]
    target_set = tf.convert_to_tensor(target_set, pred_sets.dtype)
    target_mask = tf.convert_to_tensor(target_mask, pred_sets.dtype)
    _check_target("chamfer_loss", target_set, target_mask, pred_sets)
    target = _with_mask(target_set, target_mask) if score_mask else target_set

    def one_step(args):
        s, m = args
        return _chamfer_pairs(_with_mask(s, m) if score_mask else s, target)  # Shape: [batch].

    steps = pred_sets.shape[0]
    if steps is not None:
        # unstack, not pred_sets[t]: the gradient of 11 slices would be 11 full-size zero tensors.
        per_step = [one_step(pair) for pair in zip(tf.unstack(pred_sets), tf.unstack(pred_masks))]
        per_sample = tf.add_n(per_step) / float(steps)
    else:
        per_sample = tf.reduce_mean(
            tf.map_fn(one_step, (pred_sets, pred_masks), fn_output_signature=pred_sets.dtype), axis=0
        )
    return _reduce(per_sample, reduction)


def _assign_batch(cost):
    """Optimal assignment for each `[n, m]` matrix of a `[k, n, m]` NumPy batch."""
    cols = np.empty(cost.shape[:2], dtype=np.int32)
    for b in range(cost.shape[0]):
        c = cost[b]
        if not np.all(np.isfinite(c)):
            raise ValueError(f"hungarian_loss: the cost matrix of sample {b} contains NaN or Inf.")
        rows, col = scipy.optimize.linear_sum_assignment(c)
        cols[b, rows] = col
    return cols


def hungarian_assignment(cost, solver="auto"):
    """Column assigned to every row of each `[n, n]` cost matrix (no gradient).

    Args:
        cost: `[k, n, n]` float tensor.
        solver: "tf": `dspn_tf.assignment.linear_assignment`, an exact solver
            in TensorFlow ops (runs inside `tf.function`, under XLA and on an
            accelerator without a host round trip); "scipy": scipy's
            `linear_sum_assignment` for the whole batch in one
            `tf.numpy_function` call (host only, cannot be XLA-compiled;
            raises on NaN or Inf costs); "auto": "tf" when tracing inside an
            XLA-compiled function or when a GPU / TPU is visible, else "scipy",
            which was the faster one on a CPU without XLA when this default was
            chosen (`dspn_tf.assignment.resolve_solver`). Both give an optimal
            assignment; at ties they may pick different ones.

    Returns:
        `[k, n]` int32 tensor.
    """
    if resolve_solver(solver) == "tf":
        return linear_assignment(cost)
    cols = tf.numpy_function(_assign_batch, [tf.stop_gradient(cost)], tf.int32, stateful=False)
    cols.set_shape(cost.shape[:2])
    return cols


def hungarian_loss(
    pred_sets, pred_masks, target_set, target_mask, all_steps=False, reduction="mean", solver="auto", score_mask=True
):
    """Hungarian loss (CLEVR; docs/algorithm.md §7).

    The optimal one-to-one matching of predicted and target `[set, mask]`
    elements is found on the stopped-gradient cost; the loss is the mean of
    the matched (differentiable) costs over the n pairs.

    Args:
        pred_sets: `[steps, batch, n, C]` or `[batch, n, C]`.
        pred_masks: `[steps, batch, n]` or `[batch, n]`.
        target_set: `[batch, n, C]` (same n as the predictions).
        target_mask: `[batch, n]`.
        all_steps: If False (the reference), only the last step is scored; if
            True (the paper's text), the loss is averaged over all steps.
        reduction: "mean" (scalar) or "none" (`[batch]`).
        solver: The assignment solver, "auto", "tf" or "scipy" (`hungarian_assignment`).
        score_mask: If True, the mask is one more feature of every element;
            if False, only the set's features are matched and scored (sets
            without padding, as iDSPN's random sets: the mean over the C
            features of the smooth-L1, then over the n pairs).
    """
    pred_sets, pred_masks = _as_steps(pred_sets, pred_masks, "hungarian_loss")
    target_set = tf.convert_to_tensor(target_set, pred_sets.dtype)
    target_mask = tf.convert_to_tensor(target_mask, pred_sets.dtype)
    _check_target("hungarian_loss", target_set, target_mask, pred_sets)
    if not pred_sets.shape[2:3].is_compatible_with(target_set.shape[1:2]):
        raise ValueError(
            f"hungarian_loss: predictions have {pred_sets.shape[2]} elements but targets have "
            f"{target_set.shape[1]}; a one-to-one matching needs equal sizes."
        )
    if not all_steps:
        pred_sets, pred_masks = pred_sets[-1:], pred_masks[-1:]
    target = _with_mask(target_set, target_mask) if score_mask else target_set
    steps = tf.shape(pred_sets)[0]
    batch = tf.shape(pred_sets)[1]
    pred = _with_mask(pred_sets, pred_masks) if score_mask else pred_sets  # Shape: [steps, batch, n, F].
    flat_pred = tf.reshape(pred, tf.concat([[-1], tf.shape(pred)[2:]], axis=0))
    flat_target = tf.tile(target, [steps, 1, 1])  # Shape: [steps * batch, n, F].
    cost = pairwise_cost(flat_pred, flat_target)  # Shape: [steps * batch, n, n].
    cols = hungarian_assignment(cost, solver=solver)
    matched = tf.gather(cost, cols, axis=2, batch_dims=2)  # Shape: [steps * batch, n].
    per_sample = tf.reshape(tf.reduce_mean(matched, axis=1), [steps, batch])
    return _reduce(tf.reduce_mean(per_sample, axis=0), reduction)


def repr_loss(predicted, target, reduction="mean"):
    """Huber distance between embeddings, averaged over the latent dimensions.

    In DSPN training this is `huber(g(target_set, target_mask) - z)`; neither
    side is stop-gradiented, so it trains both encoders (docs/algorithm.md §7).
    """
    predicted = tf.convert_to_tensor(predicted)
    target = tf.convert_to_tensor(target, predicted.dtype)
    if not predicted.shape.is_compatible_with(target.shape):
        raise ValueError(f"repr_loss: shapes differ: {predicted.shape} vs {target.shape}.")
    return _reduce(tf.reduce_mean(huber(predicted - target), axis=-1), reduction)


# Added to the matching cost of an output and a target element of different classes (iDSPN's numbering).
CROSS_CLASS_PENALTY = 1e3


def numbering_cost(pred, target, classes, penalty=CROSS_CLASS_PENALTY):
    """Matching cost of class-specific numbering: L2 distance, plus `penalty` across classes.

    Entry (b, s, t) is `||target[b, s] - pred[b, t]||_2 + penalty * (1 - classes[b, s] . classes[b, t])`:
    output element t belongs to input element t, so with one-hot classes a
    target and an output of different classes cost `penalty` more.

    Args:
        pred: `[batch, n, C]` outputs.
        target: `[batch, n, C]` targets.
        classes: `[batch, n, K]` class one-hots of the input elements.
        penalty: The cross-class penalty.

    Returns:
        `[batch, n(target), n(pred)]`.
    """
    pred = tf.convert_to_tensor(pred)
    target = tf.convert_to_tensor(target, pred.dtype)
    classes = tf.convert_to_tensor(classes, pred.dtype)
    squared = tf.reduce_sum(tf.square(target[:, :, None, :] - pred[:, None, :, :]), axis=-1)
    # The square root's derivative is unbounded at 0; below 1e-12 the distance is held at 1e-6 (no gradient).
    distance = tf.sqrt(tf.maximum(squared, 1e-12))
    same_class = tf.einsum("bsk,btk->bst", classes, classes)
    return distance + penalty * (1.0 - same_class)


def numbering_loss(pred_sets, target_set, classes, all_steps=False, reduction="mean", solver="auto"):
    """Class-specific numbering loss (iDSPN §4.1): the matched `numbering_cost`, averaged over the elements.

    The optimal matching of targets and outputs is found on the stopped-gradient
    `numbering_cost`; its cross-class penalty makes a match across classes
    lose to any within its class, so the matched cost is the mean L2 distance of
    each target to the output of its class it is matched with.

    Args:
        pred_sets: `[steps, batch, n, C]` or `[batch, n, C]` outputs.
        target_set: `[batch, n, C]` one-hot numbers.
        classes: `[batch, n, K]` class one-hots of the input elements.
        all_steps: Average over every step (True) or score the last one only.
        reduction: "mean" (scalar) or "none" (`[batch]`).
        solver: The assignment solver, "auto", "tf" or "scipy" (`hungarian_assignment`).
    """
    pred_sets = tf.convert_to_tensor(pred_sets)
    if pred_sets.shape.rank == 3:
        pred_sets = pred_sets[None]
    if pred_sets.shape.rank != 4:
        raise ValueError(
            f"numbering_loss: outputs must be [batch, n, C] or [steps, batch, n, C]; got {pred_sets.shape}."
        )
    target_set = tf.convert_to_tensor(target_set, pred_sets.dtype)
    classes = tf.convert_to_tensor(classes, pred_sets.dtype)
    if not all_steps:
        pred_sets = pred_sets[-1:]
    steps, batch = tf.shape(pred_sets)[0], tf.shape(pred_sets)[1]
    flat_pred = tf.reshape(pred_sets, tf.concat([[-1], tf.shape(pred_sets)[2:]], axis=0))  # [steps * batch, n, C].
    cost = numbering_cost(flat_pred, tf.tile(target_set, [steps, 1, 1]), tf.tile(classes, [steps, 1, 1]))
    cols = hungarian_assignment(cost, solver=solver)
    matched = tf.gather(cost, cols, axis=2, batch_dims=2)  # Shape: [steps * batch, n].
    per_sample = tf.reshape(tf.reduce_mean(matched, axis=1), [steps, batch])
    return _reduce(tf.reduce_mean(per_sample, axis=0), reduction)
