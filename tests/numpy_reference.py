"""Plain NumPy transcriptions of the formulas of docs/algorithm.md, shared by the tests.

They are written for clarity (loops, no tricks) so that an optimised
library implementation can be checked against them.
"""

import numpy as np


def fspool_reference(x, weight, mask=None):
    """docs/algorithm.md §1 written out with loops: x `[B, N, C]`, weight `[C, P + 1]`, mask `[B, N]` or None.

    Each channel of each set is sorted descending over that set's own
    elements; position i of n has r = i / max(n - 1, 1), t = P r,
    k = floor(t) clamped so k + 1 <= P, f = t - k, weight (1 - f) W[c, k] + f W[c, k + 1].
    """
    batch, size, channels = x.shape
    pieces = weight.shape[1] - 1
    out = np.zeros((batch, channels))
    for b in range(batch):
        elements = np.arange(size) if mask is None else np.flatnonzero(mask[b] > 0)
        n = len(elements)
        for c in range(channels):
            values = np.sort(x[b, elements, c])[::-1]
            for i, value in enumerate(values):
                t = pieces * (i / max(n - 1, 1))
                k = min(int(np.floor(t)), pieces - 1)
                f = t - k
                out[b, c] += value * ((1 - f) * weight[c, k] + f * weight[c, k + 1])
    return out


def huber_reference(x, delta=1.0):
    """Smooth-L1: 0.5 x² for |x| < delta, else delta (|x| - delta / 2)."""
    a = np.abs(x)
    return np.where(a < delta, 0.5 * x * x, delta * (a - 0.5 * delta))


def pairwise_cost_reference(pred_set, pred_mask, target_set, target_mask):
    """d(i, j) = Huber([pred_i, m_i] - [target_j, t_j]) averaged over the C + 1 features, one sample."""
    pred = np.concatenate([pred_set, np.asarray(pred_mask)[:, None]], axis=-1).astype(np.float64)
    target = np.concatenate([target_set, np.asarray(target_mask)[:, None]], axis=-1).astype(np.float64)
    cost = np.zeros((len(pred), len(target)))
    for i in range(len(pred)):
        for j in range(len(target)):
            cost[i, j] = np.mean(huber_reference(pred[i] - target[j]))
    return cost


def chamfer_reference(pred_sets, pred_masks, target_set, target_mask):
    """Per-sample Chamfer `mean_j min_i d + mean_i min_j d`, averaged over steps.

    pred_sets `[steps, B, n, C]`, pred_masks `[steps, B, n]`; returns `[B]`.
    """
    steps, batch = pred_sets.shape[:2]
    out = np.zeros((steps, batch))
    for t in range(steps):
        for b in range(batch):
            d = pairwise_cost_reference(pred_sets[t, b], pred_masks[t, b], target_set[b], target_mask[b])
            out[t, b] = d.min(axis=0).mean() + d.min(axis=1).mean()
    return out.mean(axis=0)
