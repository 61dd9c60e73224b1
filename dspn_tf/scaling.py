"""Set-feature normalisation: each feature standardised by its mean and std over the valid elements of sets.

DSPN's defaults (the inner step 25, the starting set's initialisation, the Huber
cost of the set losses) come from the paper's tasks, whose features are of order 1.
`SetScaling` holds a per-feature `mean` and `std` learned from training sets
(`adapt`) and maps sets to `(x - mean) / std` and back, so a model that works
in these units sees features of order 1 whatever the data's units are. The
whole models use it when built with `normalize_sets=True` (`dspn_tf.models`).

It is written directly rather than on `keras.layers.Normalization`, whose
`adapt` counts every element of the data: here only valid elements (mask not
0) enter the statistics, padded elements stay exactly 0 after normalising (the
set losses treat padding as zero vectors with mask 0), and the statistics are
accumulated in float64 over any number of batches.
"""

import typing

import keras
import numpy as np
import tensorflow as tf

# A std at or below this fraction of its feature's |mean| (or exactly 0) marks a
# constant feature, up to float32 rounding; it gets std 1, so it is only shifted.
CONSTANT_RELATIVE_STD = 1e-6


class FeatureStatistics(typing.NamedTuple):
    """Per-feature statistics of the valid elements of sets.

    Attributes:
        sets: Sets read.
        elements: Valid elements (mask not 0) among them.
        mean: `[C]` float64 mean of each feature.
        std: `[C]` float64 population standard deviation of each feature
            (0 for a constant feature).
    """

    sets: int
    elements: int
    mean: np.ndarray
    std: np.ndarray

    def constant(self):
        """`[C]` bool: the features that are constant (std 0, or at most `CONSTANT_RELATIVE_STD` x |mean|)."""
        return self.std <= CONSTANT_RELATIVE_STD * np.abs(self.mean)

    def scale(self):
        """`[C]` float64: the std that normalising divides by (1 for a constant feature)."""
        return np.where(self.constant(), 1.0, self.std)


def _is_pair(data):
    """Whether `data` is one `(set, mask)` pair of arrays rather than an iterable of pairs."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    shapes = [getattr(x, "shape", None) for x in data]
    return all(shape is not None for shape in shapes) and len(shapes[0]) == 3 and len(shapes[1]) == 2


def feature_statistics(data, *, steps=None):
    """Mean and std of each feature over the valid elements (mask not 0) of sets.

    Padded elements (mask 0) are left out whatever their values. Batches are
    merged with the pairwise update of Chan, Golub and LeVeque in float64, so
    the result is that of one pass over all valid elements.

    Args:
        data: One `(set, mask)` pair (`[batch, N, C]`, `[batch, N]`; NumPy
            arrays or tensors), or an iterable of such pairs (a `tf.data.Dataset`,
            a list, a generator).
        steps: Read at most this many pairs (default: all; an endless iterable
            needs it).

    Returns:
        `FeatureStatistics`.

    Raises:
        ValueError: if the pairs' shapes disagree or no element is valid.
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"feature_statistics: `steps` must be None or an integer >= 1; received {steps!r}.")
    pairs = [data] if _is_pair(data) else data
    sets = count = 0
    mean = m2 = None
    for i, (set_batch, mask_batch) in enumerate(pairs):
        if steps is not None and i >= steps:
            break
        x = np.asarray(set_batch, np.float64)
        mask = np.asarray(mask_batch)
        if x.ndim != 3 or mask.shape != x.shape[:2]:
            raise ValueError(
                f"feature_statistics: expected sets [batch, N, C] and masks [batch, N]; received {x.shape} and "
                f"{mask.shape}."
            )
        if mean is not None and x.shape[-1] != mean.shape[0]:
            raise ValueError(f"feature_statistics: sets of {x.shape[-1]} features after {mean.shape[0]}.")
        sets += x.shape[0]
        valid = x[mask != 0]  # Shape: [valid elements, C].
        n = valid.shape[0]
        if mean is None:
            mean, m2 = np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
        if n == 0:
            continue
        batch_mean = valid.mean(axis=0)
        batch_m2 = ((valid - batch_mean) ** 2).sum(axis=0)
        total = count + n
        delta = batch_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + batch_m2 + delta**2 * (count * n / total)
        count = total
    if not count:
        raise ValueError("feature_statistics: no valid element (mask not 0) in the data.")
    return FeatureStatistics(sets=sets, elements=count, mean=mean, std=np.sqrt(m2 / count))


@keras.saving.register_keras_serializable(package="dspn_tf")
class SetScaling(keras.layers.Layer):
    """Per-feature standardisation of sets: `(x - mean) / std` on valid elements, 0 on padding.

    `mean` and `std` are non-trainable weights `[channels]`, 0 and 1 (the
    identity) until `adapt` sets them from data; they are saved with the
    layer (`.keras` files, checkpoints, SavedModels). A constant feature (std
    0, or at most `CONSTANT_RELATIVE_STD` of its |mean|) gets std 1, so it is
    only shifted and nothing is divided by 0.

    Args:
        channels: Features per element C.
        **kwargs: Further `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    >>> scaling = SetScaling(2)
    >>> sets = np.array([[[10.0, 1.0], [30.0, 3.0], [0.0, 0.0]]])
    >>> mask = np.array([[1.0, 1.0, 0.0]])
    >>> _ = scaling.adapt((sets, mask))
    >>> scaling.normalize(sets, mask).numpy().tolist()
    [[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]]
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"SetScaling: `channels` must be an integer >= 1; received {channels!r}.")
        self.channels = channels
        self.mean = self.add_weight(shape=(channels,), initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=(channels,), initializer="ones", trainable=False, name="std")
        self.built = True  # Every weight exists: restoring needs no call first.

    def adapt(self, data, *, steps=None):
        """Sets `mean` and `std` from the valid elements of sets (`feature_statistics`).

        Args:
            data: One `(set, mask)` pair or an iterable of pairs, as `feature_statistics` takes.
            steps: Read at most this many pairs (default: all).

        Returns:
            The `FeatureStatistics` of the data (its `std` before a constant feature's 1).

        Raises:
            ValueError: if the sets do not have `channels` features, or no element is valid.
        """
        stats = feature_statistics(data, steps=steps)
        if stats.mean.shape[0] != self.channels:
            raise ValueError(f"SetScaling.adapt: the sets have {stats.mean.shape[0]} features, not {self.channels}.")
        self.mean.assign(stats.mean.astype(self.mean.dtype))
        self.std.assign(stats.scale().astype(self.std.dtype))
        return stats

    def normalize(self, set, mask):  # noqa: A002 -- `set` is the name used for sets throughout the library.
        """`(set - mean) / std` where `mask` is not 0; exactly 0 where it is 0.

        Args:
            set: `[..., N, C]` sets in the data's units.
            mask: `[..., N]` their masks.

        Returns:
            The sets in normalised units, in `set`'s dtype.
        """
        x = tf.convert_to_tensor(set)
        mean, std = tf.cast(self.mean, x.dtype), tf.cast(self.std, x.dtype)
        valid = tf.not_equal(tf.cast(mask, x.dtype), 0)[..., None]
        scaled = (x - mean) / std
        return tf.where(valid, scaled, tf.zeros_like(scaled))

    def denormalize(self, set):  # noqa: A002
        """`set * std + mean`: sets in normalised units back in the data's units (every element, masks aside).

        Args:
            set: `[..., C]` sets in normalised units.

        Returns:
            The sets in the data's units, in `set`'s dtype.
        """
        x = tf.convert_to_tensor(set)
        return x * tf.cast(self.std, x.dtype) + tf.cast(self.mean, x.dtype)

    def call(self, inputs):
        """`normalize(set, mask)` of `inputs = (set, mask)`."""
        set_, mask = inputs
        return self.normalize(set_, mask)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}
