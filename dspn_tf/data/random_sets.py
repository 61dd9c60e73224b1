"""Random sets: iDSPN's auto-encoding of sets of Gaussian vectors (Zhang et al., ICLR 2022, section 4.2).

Every set is N elements of C features drawn i.i.d. from N(0, 1); every set
has all N elements (the mask is all ones). A split is drawn once, in NumPy,
from its own stream of the seed (`np.random.default_rng([seed, split id])`),
so the training and evaluation sets are independent draws and a seed gives
the same sets on every machine.

    ds = build_dataset("train", num_sets=64_000, set_size=8, channels=8, seed=0)
    ds = ds.batch(128)   # {"set": [128, 8, 8], "mask": [128, 8]}
"""

import numpy as np
import tensorflow as tf

from dspn_tf import checks

# The stream of the seed each split draws from.
SPLIT_STREAMS = {"train": 0, "eval": 1}


def draw(split, *, num_sets, set_size, channels, seed):
    """The sets of a split as a float32 NumPy array `[num_sets, set_size, channels]`.

    Args:
        split: "train" or "eval".
        num_sets: Sets in the split.
        set_size: Elements per set N.
        channels: Features per element C.
        seed: An integer >= 0.

    Raises:
        ValueError: naming the argument that is out of range.
    """
    checks.choice("random_sets", "split", split, tuple(SPLIT_STREAMS))
    checks.positive_ints("random_sets", num_sets=num_sets, set_size=set_size, channels=channels)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"random_sets: `seed` must be an integer >= 0; received seed={seed!r}.")
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
    return rng.standard_normal((num_sets, set_size, channels)).astype(np.float32)


def build_dataset(split, *, num_sets, set_size, channels, seed):
    """The unbatched `tf.data` dataset of a split: dicts `{"set": [N, C], "mask": [N]}` (mask all ones).

    Arguments as `draw`.
    """
    sets = draw(split, num_sets=num_sets, set_size=set_size, channels=channels, seed=seed)
    return tf.data.Dataset.from_tensor_slices({"set": sets, "mask": np.ones(sets.shape[:2], np.float32)})
