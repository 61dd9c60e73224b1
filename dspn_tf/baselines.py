"""One-shot set decoders used as baselines in the paper (docs/algorithm.md §6), and DeepSets.

They return the same dict as `DSPN` with a single step, so training and
evaluation code treat every decoder alike. They have no inner loop, so they
are trained without the representation loss. `MLPDecoder` and `LSTMDecoder`
decode an embedding z; `DeepSets` maps an input set to an output set element
by element (iDSPN's set-equivariant baseline, for `dspn_tf.models.SetToSet`).
"""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.dspn import decoder_output


def _one_step(set_, mask):
    empty = tf.zeros([0, tf.shape(set_)[0]], set_.dtype)
    return decoder_output(set_[None], mask[None], empty, empty)


@keras.saving.register_keras_serializable(package="dspn_tf")
class MLPDecoder(keras.layers.Layer):
    """z → Dense(dim) → ReLU → Dense(dim) → ReLU → Dense(N × (C + 1)).

    The output is reshaped to N elements of C features plus a raw (unclamped)
    mask channel, as in the reference.

    Args:
        set_size: Number of set slots N.
        set_channels: Features per element C.
        dim: Hidden width.
        mask_offset: Added to the raw mask output (default 0, the reference
            code). The paper's appendix B.1 adds 1 for set-MNIST, so that an
            untrained baseline predicts every slot present instead of falling
            into the local optimum of predicting (0, 0) points.

    Call arguments:
        inputs: `[batch, latent]`.
        iters: Ignored (accepted so all decoders share one call signature).

    Returns:
        The decoder dict with one step: `sets` `[1, batch, N, C]`, `masks`
        `[1, batch, N]`, empty `inner_losses` and `grad_norms` `[0, batch]`.
    """

    def __init__(self, set_size, set_channels, dim, mask_offset=0.0, **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints("MLPDecoder", set_size=set_size, set_channels=set_channels, dim=dim)
        self.mask_offset = checks.finite_float("MLPDecoder", "mask_offset", mask_offset)
        self.set_size = set_size
        self.set_channels = set_channels
        self.dim = dim
        self.latent = None
        self.hidden1 = keras.layers.Dense(dim, activation="relu", name="hidden1", dtype=self.dtype_policy)
        self.hidden2 = keras.layers.Dense(dim, activation="relu", name="hidden2", dtype=self.dtype_policy)
        self.output_layer = keras.layers.Dense(set_size * (set_channels + 1), name="output", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.latent = input_shape[-1]
        self.hidden1.build((None, self.latent))
        self.hidden2.build((None, self.dim))
        self.output_layer.build((None, self.dim))

    def call(self, inputs, iters=None, training=False):
        z = tf.convert_to_tensor(inputs)
        checks.embedding("MLPDecoder", z, self.latent)
        x = self.output_layer(self.hidden2(self.hidden1(z)))
        x = tf.reshape(x, [-1, self.set_size, self.set_channels + 1])  # Shape: [batch, N, C + 1].
        return _one_step(x[..., :-1], x[..., -1] + tf.cast(self.mask_offset, x.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "set_size": self.set_size,
            "set_channels": self.set_channels,
            "dim": self.dim,
            "mask_offset": self.mask_offset,
        }


@keras.saving.register_keras_serializable(package="dspn_tf")
class LSTMDecoder(keras.layers.Layer):
    """An LSTM that emits the set one element per step.

    Dense(dim) of z is the initial cell state (hidden state 0); the LSTM runs
    N steps on zero inputs and each output goes through Dense(C + 1) (C
    features and a raw mask value).

    Args:
        set_size: Number of set slots N.
        set_channels: Features per element C.
        dim: LSTM width.

    Call arguments:
        inputs: `[batch, latent]`.
        iters: Ignored.

    Returns:
        The decoder dict with one step, as `MLPDecoder`.
    """

    def __init__(self, set_size, set_channels, dim, mask_offset=0.0, **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints("LSTMDecoder", set_size=set_size, set_channels=set_channels, dim=dim)
        self.mask_offset = checks.finite_float("LSTMDecoder", "mask_offset", mask_offset)
        self.set_size = set_size
        self.set_channels = set_channels
        self.dim = dim
        self.latent = None
        self.cell_init = keras.layers.Dense(dim, name="cell_init", dtype=self.dtype_policy)
        self.lstm = keras.layers.LSTM(dim, return_sequences=True, name="lstm", dtype=self.dtype_policy)
        self.output_layer = keras.layers.Dense(set_channels + 1, name="output", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.latent = input_shape[-1]
        self.cell_init.build((None, self.latent))
        self.lstm.build((None, self.set_size, 1))
        self.output_layer.build((None, self.set_size, self.dim))

    def call(self, inputs, iters=None, training=False):
        z = tf.convert_to_tensor(inputs)
        checks.embedding("LSTMDecoder", z, self.latent)
        cell = self.cell_init(z)  # Shape: [batch, dim].
        steps = tf.zeros([tf.shape(z)[0], self.set_size, 1], z.dtype)
        x = self.lstm(steps, initial_state=[tf.zeros_like(cell), cell], training=training)
        x = self.output_layer(x)  # Shape: [batch, N, C + 1].
        return _one_step(x[..., :-1], x[..., -1] + tf.cast(self.mask_offset, x.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "set_size": self.set_size,
            "set_channels": self.set_channels,
            "dim": self.dim,
            "mask_offset": self.mask_offset,
        }


OUTPUT_ACTIVATIONS = ("softmax", "linear")


@keras.saving.register_keras_serializable(package="dspn_tf")
class DeepSets(keras.layers.Layer):
    """A set-equivariant set-to-set network (Zaheer et al., 2017): one output element per input element.

    Two DeepSets layers, `h_i = relu(A x_i + B mean_j x_j)` and
    `y_i = A' h_i + B' mean_j h_j`, with means over the present elements
    (the mask); the output goes through a softmax over its C features (or
    none, `output_activation="linear"`). It is permutation-equivariant: two
    equal input elements get equal outputs, so it cannot give them different
    numbers (iDSPN's point about multiset-equivariance; the baseline of its
    class-specific numbering).

    Args:
        set_size: Number of set slots N.
        set_channels: Features per output element C.
        dim: Hidden width.
        output_activation: "softmax" (each output element is a distribution) or "linear".

    Call arguments:
        inputs: The input set `[batch, N, C_in]`.
        mask: `[batch, N]` presence of the input elements (default: all present).
        iters: Ignored (accepted so all decoders share one call signature).

    Returns:
        The decoder dict with one step: `sets` `[1, batch, N, C]`, `masks`
        `[1, batch, N]` (the input's mask), empty `inner_losses` and `grad_norms`.
    """

    def __init__(self, set_size, set_channels, dim, output_activation="softmax", **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints("DeepSets", set_size=set_size, set_channels=set_channels, dim=dim)
        checks.choice("DeepSets", "output_activation", output_activation, OUTPUT_ACTIVATIONS)
        self.set_size = set_size
        self.set_channels = set_channels
        self.dim = dim
        self.output_activation = output_activation
        self.input_channels = None
        policy = self.dtype_policy
        self.hidden_element = keras.layers.Dense(dim, name="hidden_element", dtype=policy)
        self.hidden_pooled = keras.layers.Dense(dim, use_bias=False, name="hidden_pooled", dtype=policy)
        self.output_element = keras.layers.Dense(set_channels, name="output_element", dtype=policy)
        self.output_pooled = keras.layers.Dense(set_channels, use_bias=False, name="output_pooled", dtype=policy)

    def build(self, input_shape):
        features = self.input_channels = int(input_shape[-1])
        self.hidden_element.build((None, None, features))
        self.hidden_pooled.build((None, None, features))
        self.output_element.build((None, None, self.dim))
        self.output_pooled.build((None, None, self.dim))

    def call(self, inputs, mask=None, iters=None, training=False):
        x = tf.convert_to_tensor(inputs)
        checks.set_and_mask("DeepSets", x, mask)
        mask = tf.ones(tf.shape(x)[:2], x.dtype) if mask is None else tf.cast(mask, x.dtype)

        def mean(h):  # Masked mean over the elements, [batch, 1, features].
            count = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)[:, None, None]
            return tf.reduce_sum(h * mask[..., None], axis=1, keepdims=True) / count

        h = tf.nn.relu(self.hidden_element(x) + self.hidden_pooled(mean(x)))
        y = self.output_element(h) + self.output_pooled(mean(h))  # Shape: [batch, N, C].
        if self.output_activation == "softmax":
            y = tf.nn.softmax(y, axis=-1)
        return _one_step(y, mask)

    def get_config(self):
        return {
            **super().get_config(),
            "set_size": self.set_size,
            "set_channels": self.set_channels,
            "dim": self.dim,
            "output_activation": self.output_activation,
        }
