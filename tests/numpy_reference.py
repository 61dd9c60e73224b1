"""Plain NumPy transcriptions of SPEC formulas, shared by the tests.

They are written for clarity (loops, no tricks) so that an optimised
library implementation can be checked against them.
"""

import numpy as np


def fspool_reference(x, weight, mask=None):
    """SPEC §1 written out with loops: x `[B, N, C]`, weight `[C, P + 1]`, mask `[B, N]` or None.

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
