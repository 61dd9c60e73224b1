"""Featurewise sort pooling (FSPool; Zhang, Hare, Prügel-Bennett, ICLR 2020).

Every channel is sorted over the set independently (descending) and the sorted
values are summed with weights that depend on each position's *relative* rank
through a piecewise-linear function with `n_pieces` pieces per channel.
"""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.indexing import flat_segment_ids


@keras.saving.register_keras_serializable(package="dspn_tf")
class FSPool(keras.layers.Layer):
    """Featurewise sort pooling over a set.

    Each of the C channels has a piecewise-linear weight function over relative
    rank r in [0, 1], parametrised by `n_pieces + 1` values `W[c, :]`. Position
    i (0-based, after sorting the channel in descending order) of a set of n
    elements has r = i / max(n - 1, 1); its weight is the linear interpolation
    of W at `n_pieces * r`. The output is the weighted sum of the sorted values.

    Args:
        n_pieces: Number of linear pieces of each weight function (>= 1).
            The DSPN paper uses 20.

    Call arguments:
        inputs: Float tensor `[batch, set_size, channels]`.
        mask: Optional `[batch, set_size]`. Without it every one of the
            `set_size` positions is an element (the DSPN encoders' way: the
            mask is an input *feature* there). With it, nonzero entries mark
            the elements, each set is pooled over its own size n and padded
            positions contribute 0. Elements need not come first.

    Input shape:
        `[batch, set_size, channels]`.

    Output shape:
        `[batch, channels]`.

    Example:

    >>> pool = FSPool(n_pieces=20)
    >>> pool(tf.random.normal([4, 7, 3])).shape
    TensorShape([4, 3])
    """

    def __init__(self, n_pieces=20, **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints("FSPool", n_pieces=n_pieces)
        self.n_pieces = n_pieces
        self.channels = None
        # The layer consumes the mask (like GlobalAveragePooling1D): Keras then
        # passes an upstream mask in and does not warn that it was dropped.
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"FSPool: the channel dimension must be known; received input shape {input_shape}.")
        self.channels = int(channels)
        self.weight = self.add_weight(
            name="weight",
            shape=(self.channels, self.n_pieces + 1),
            initializer=keras.initializers.RandomNormal(mean=0.0, stddev=1.0),
        )

    def _piece_weights(self, ratio):
        """Interpolated weights for relative ranks `ratio` (any shape S) → S + [C]."""
        t = self.n_pieces * ratio
        # Clamping k to n_pieces - 1 makes r = 1 land on W[:, n_pieces] with
        # f = 1, which equals the reference's k = n_pieces, f = 0.
        k = tf.minimum(tf.floor(t), self.n_pieces - 1)
        f = (t - k)[..., None]
        table = tf.transpose(tf.cast(self.weight, ratio.dtype))  # Shape: [n_pieces + 1, C].
        k = tf.cast(k, tf.int64)  # int64: TF would do int32 arithmetic (k + 1) on the host of a GPU.
        left = tf.gather(table, k)
        right = tf.gather(table, k + 1)
        return (1.0 - f) * left + f * right

    def call(self, inputs, mask=None):
        checks.set_and_mask("FSPool", inputs, mask)
        checks.features("FSPool", inputs, self.channels)
        x = tf.convert_to_tensor(inputs)
        dtype = x.dtype
        set_size = tf.shape(x)[1]
        # Ranks and piece weights in at least float32 (also under a mixed-
        # precision policy: float16 ranks are not exact beyond 2048 elements).
        work = tf.float64 if dtype == tf.float64 else tf.float32
        positions = tf.range(set_size, dtype=work)
        keys = x
        if mask is not None:
            present = tf.cast(mask, dtype) > 0
            # Push absent elements to the end of the descending sort (ranks >= n).
            keys = tf.where(present[..., None], x, tf.constant(float("-inf"), dtype))
        # Eq. (A2) as sum_j x_j * w(rank_j): the weights go to the elements'
        # own positions instead of the values being sorted. Sorting is
        # piecewise constant, so value and gradients (of any order) equal those
        # through the sort, and the backward passes stay elementwise.
        # benchmarks/README.md, "FSPool", has what each choice here saves.
        x_t = tf.transpose(tf.stop_gradient(keys), [0, 2, 1])  # Shape: [batch, C, set_size].
        # Descending; ties keep index order. Integer keys sort in the same
        # order as the floats, and are the cheaper ones to sort.
        _, order = tf.math.top_k(sort_keys(x_t), k=set_size, sorted=True)
        # Each element's weight is the weight of its position in the sort: one
        # scatter of the per-position weights through the permutation (`order`
        # is a permutation per row, so the segment sum is a plain scatter),
        # whose gradient with respect to W is a gather. The scatter stays
        # within each [set_size] row of the `[batch, C, set_size]` layout,
        # the cheaper layout to scatter into than the strided `[batch, set_size, C]` one.
        rows = tf.shape(order)[0] * tf.shape(order)[1]
        flat = flat_segment_ids(order, set_size)
        if mask is None:
            n = tf.cast(set_size, work)
            ratio = positions / tf.maximum(n - 1.0, 1.0)  # Shape: [set_size].
            weights = tf.transpose(self._piece_weights(ratio))  # Shape: [C, set_size (position)].
            weights = tf.broadcast_to(weights, tf.shape(order))  # Shape: [batch, C, set_size (position)].
        else:
            n = tf.reduce_sum(tf.cast(present, work), axis=1, keepdims=True)  # Shape: [batch, 1].
            ratio = tf.minimum(positions[None] / tf.maximum(n - 1.0, 1.0), 1.0)  # Shape: [batch, set_size].
            weights = self._piece_weights(ratio)  # Shape: [batch, set_size (position), C].
            weights = tf.transpose(weights, [0, 2, 1])  # Shape: [batch, C, set_size (position)].
        element_weights = tf.reshape(
            tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), flat, rows * set_size), tf.shape(order)
        )  # Shape: [batch, C, set_size (element)].
        element_weights = tf.cast(tf.transpose(element_weights, [0, 2, 1]), dtype)  # Shape: [batch, set_size, C].
        if mask is None:
            return tf.reduce_sum(x * element_weights, axis=1)
        # Absent elements (ranked last, >= n) contribute 0 and get no gradient.
        return tf.reduce_sum(tf.where(present[..., None], x * element_weights, tf.zeros_like(x)), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def compute_mask(self, inputs, mask=None):
        return None  # The pooled output has no set axis left to mask.

    def get_config(self):
        return {**super().get_config(), "n_pieces": self.n_pieces}


def sort_keys(values):
    """Integer keys that order like the float `values`: `a < b` iff `key(a) < key(b)`.

    A float's bits read as a signed integer already order the non-negative
    floats; flipping the magnitude bits of the negative ones reverses their
    order and keeps them below every non-negative key. Zeros are mapped to
    +0.0 first, so floats that compare equal get equal keys (a sort then
    breaks the tie by index, as it does for the floats); -inf and +inf come
    out as the smallest and largest non-NaN keys. The zero test is a float
    comparison on the running device, so the keys order exactly as that
    device's float sort would (TF's CPU kernels treat subnormals as zero).
    Only bitwise ops touch the integers: TF runs int32 arithmetic on the host
    when the graph is on a GPU, bitwise ops stay on the device. float16 and
    bfloat16 are widened to float32 first (exactly); float64 gives int64 keys.
    """
    if values.dtype == tf.float64:
        int_dtype, bits = tf.int64, 64
    else:
        values = tf.cast(values, tf.float32)
        int_dtype, bits = tf.int32, 32
    values = tf.where(values == 0, tf.zeros_like(values), values)  # -0.0 -> +0.0.
    raw = tf.bitcast(values, int_dtype)
    negative = tf.bitwise.right_shift(raw, tf.constant(bits - 1, int_dtype))  # All ones if negative, else 0.
    flip = tf.bitwise.bitwise_and(negative, tf.constant(2 ** (bits - 1) - 1, int_dtype))
    return tf.bitwise.bitwise_xor(raw, flip)
