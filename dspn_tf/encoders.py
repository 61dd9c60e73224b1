"""Permutation-invariant set encoders g(set, mask) -> [batch, latent] (docs/algorithm.md §2).

The same encoder object encodes target sets and drives the DSPN decoder's
inner loop, so it must be differentiable twice with respect to its inputs.
"""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.fspool import FSPool


def _with_mask_feature(x, mask):
    # The mask is one more input feature, so padded elements still pass
    # through the MLP; only their mask feature is 0 (reference behaviour).
    mask = tf.cast(mask, x.dtype)
    return tf.concat([x, mask[..., None]], axis=-1)  # Shape: [batch, n, C + 1].


@keras.saving.register_keras_serializable(package="dspn_tf")
class FSEncoder(keras.layers.Layer):
    """Per-element MLP pooled with FSPool (the set-MNIST encoder).

    Elements `[x_i, m_i]` → Dense(dim) → ReLU → Dense(dim) → ReLU →
    Dense(latent) → divide by the padded set size N → FSPool over all N
    positions.

    Args:
        dim: Hidden width (paper: 256).
        latent: Output size (paper: 64).
        n_pieces: FSPool pieces (paper: 20).

    Call arguments:
        inputs: `[batch, set_size, features]` set.
        mask: `[batch, set_size]` presence (soft values allowed).

    Output shape:
        `[batch, latent]`.

    Example:

    >>> enc = FSEncoder(dim=32, latent=8)
    >>> enc(tf.zeros([2, 5, 2]), tf.ones([2, 5])).shape
    TensorShape([2, 8])
    """

    def __init__(self, dim, latent, n_pieces=20, **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints("FSEncoder", dim=dim, latent=latent, n_pieces=n_pieces)
        self.dim = dim
        self.latent = latent
        self.n_pieces = n_pieces
        self.features = None
        self.supports_masking = True  # The mask is consumed (an input feature); see compute_mask.
        self.hidden1 = keras.layers.Dense(dim, activation="relu", name="hidden1", dtype=self.dtype_policy)
        self.hidden2 = keras.layers.Dense(dim, activation="relu", name="hidden2", dtype=self.dtype_policy)
        self.project = keras.layers.Dense(latent, name="project", dtype=self.dtype_policy)
        self.pool = FSPool(n_pieces, name="pool", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.features = int(input_shape[-1])
        self.hidden1.build((None, None, self.features + 1))
        self.hidden2.build((None, None, self.dim))
        self.project.build((None, None, self.dim))
        self.pool.build((None, None, self.latent))

    def call(self, inputs, mask=None):
        checks.set_and_mask("FSEncoder", inputs, mask)
        if mask is None:
            raise ValueError("FSEncoder: `mask` is required ([batch, set_size]); pass ones for full sets.")
        checks.features("FSEncoder", inputs, self.features)
        x = _with_mask_feature(inputs, mask)
        x = self.project(self.hidden2(self.hidden1(x)))  # Shape: [batch, n, latent].
        # Dividing by the padded size (a constant) keeps activations small for
        # big sets; the reference does this and its lr 25 assumes it. FSPool is
        # linear in its input and its sort is unchanged by a positive scale, so
        # dividing the pooled [batch, latent] output is the same function as
        # dividing the [batch, n, latent] elements, at 1/n of the cost.
        pooled = self.pool(x)
        return pooled / tf.cast(tf.shape(x)[1], pooled.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.latent)

    def compute_mask(self, inputs, mask=None):
        return None  # The embedding has no set axis left to mask.

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "latent": self.latent, "n_pieces": self.n_pieces}


@keras.saving.register_keras_serializable(package="dspn_tf")
class RNFSEncoder(keras.layers.Layer):
    """Relation-network encoder pooled with FSPool (the CLEVR set encoder).

    All N × N ordered pairs `[e_i, e_j]` (i = j included) of elements
    `e_i = [x_i, m_i]` → Dense(dim) → ReLU → Dense(latent) → divide by N² →
    FSPool over the N² pairs.

    The first Dense of a concatenated pair equals `e_i A + e_j B + b`, so the
    pair features are built by broadcasting two per-element projections
    instead of materialising `[batch, N, N, 2C + 2]` inputs (same math, N times
    less work in the first layer).

    Args:
        dim: Hidden width (paper: 512).
        latent: Output size (paper: 512).
        n_pieces: FSPool pieces (paper: 20).

    Call arguments:
        inputs: `[batch, set_size, features]` set.
        mask: `[batch, set_size]` presence (soft values allowed).

    Output shape:
        `[batch, latent]`.
    """

    def __init__(self, dim, latent, n_pieces=20, **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints("RNFSEncoder", dim=dim, latent=latent, n_pieces=n_pieces)
        self.dim = dim
        self.latent = latent
        self.n_pieces = n_pieces
        self.features = None
        self.supports_masking = True  # The mask is consumed (an input feature); see compute_mask.
        self.project = keras.layers.Dense(latent, name="project", dtype=self.dtype_policy)
        self.pool = FSPool(n_pieces, name="pool", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.features = int(input_shape[-1])
        element = self.features + 1
        # One kernel over the concatenated pair [e_i, e_j], as in the paper's
        # Conv2d(2C + 2, dim, 1); glorot fan-in counts the whole pair.
        self.pair_kernel = self.add_weight(
            name="pair_kernel", shape=(2 * element, self.dim), initializer="glorot_uniform"
        )
        self.pair_bias = self.add_weight(name="pair_bias", shape=(self.dim,), initializer="zeros")
        self.project.build((None, None, self.dim))
        self.pool.build((None, None, self.latent))

    def call(self, inputs, mask=None):
        checks.set_and_mask("RNFSEncoder", inputs, mask)
        if mask is None:
            raise ValueError("RNFSEncoder: `mask` is required ([batch, set_size]); pass ones for full sets.")
        checks.features("RNFSEncoder", inputs, self.features)
        e = _with_mask_feature(inputs, mask)  # Shape: [batch, n, C + 1].
        element = self.features + 1
        kernel = tf.convert_to_tensor(self.pair_kernel)
        first = tf.einsum("bnc,cd->bnd", e, kernel[:element])  # Shape: [batch, n, dim].
        second = tf.einsum("bnc,cd->bnd", e, kernel[element:])
        pairs = first[:, :, None, :] + second[:, None, :, :] + self.pair_bias  # Shape: [batch, n, n, dim].
        pairs = tf.nn.relu(pairs)
        n = tf.shape(e)[1]
        pairs = tf.reshape(pairs, [tf.shape(e)[0], n * n, self.dim])  # Shape: [batch, n², dim].
        x = self.project(pairs)  # Shape: [batch, n², latent].
        # Divide by N² after pooling: the same function (see FSEncoder.call), 1/N² of the work.
        return self.pool(x) / tf.cast(n * n, x.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.latent)

    def compute_mask(self, inputs, mask=None):
        return None  # The embedding has no set axis left to mask.

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "latent": self.latent, "n_pieces": self.n_pieces}
