"""Permutation-invariant set encoders g(set, mask) -> [batch, latent] (docs/algorithm.md §2).

The same encoder object encodes target sets and drives the DSPN decoder's
inner loop, so it must be differentiable twice with respect to its inputs.
`FSEncoder` and `RNFSEncoder` share their arguments, checks, pooling and
configuration through the base class `SetEncoder`, which says how to add
another.
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


class SetEncoder(keras.layers.Layer):
    """Base class of the set encoders: items of a set → Dense(latent) → FSPool → divide by the item count.

    A set encoder maps a set and its mask to one `[batch, latent]`
    embedding, invariant to the order of the elements. The encoders here
    share the way they do it: the mask is appended to every element as one
    more feature (`e_i = [x_i, m_i]`, so soft masks are differentiable), the
    elements are turned into *items* of `dim` features (one per element, or
    one per pair of elements), each item is projected to `latent` by the
    Dense layer `project`, and FSPool (`pool`) pools the items, divided by
    their count. This class holds that shared part: the `dim`, `latent` and
    `n_pieces` arguments and their checks, the number of input features
    (known once built), the checks of the call's inputs, the projection and
    pooling, the output shape, the mask handling (required in the call, not
    passed on: the embedding has no set axis) and `get_config`.

    To add a set encoder, subclass it:

    1. Register the class with
       `@keras.saving.register_keras_serializable(package="dspn_tf")`, so
       that `.keras` files find it.
    2. In `__init__`, call `super().__init__(dim, latent, n_pieces, **kwargs)`,
       then create the layers that make the items (with
       `dtype=self.dtype_policy`), then call `self.create_head()`, which
       creates `project` and `pool`. This order is the order of the
       encoder's weights and of the draws of their random initial values.
       The attribute names of the layers and weights are the names under
       which `.keras` files and checkpoints store them: keep them once
       files have been written.
    3. Implement `build_items(element_size)`, which builds those layers (or
       creates weights with `add_weight`) for elements of `element_size`
       features (the set's features plus the mask), and
       `embed_items(elements)`, which maps the `[batch, N, element_size]`
       elements to `[batch, items, dim]` items. This class's `build` and
       `call` call them.
    4. If the encoder takes more constructor arguments, add them to
       `get_config` (extend the dict of `super().get_config()`).

    The encoder must be differentiable twice with respect to its inputs (the
    DSPN inner loop differentiates its gradient), and its items must be
    permuted with the elements, so that the pooled output is invariant to
    the order of the elements.

    Args:
        dim: Width of the items (the hidden width).
        latent: Output size.
        n_pieces: FSPool pieces.
        **kwargs: Passed on to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch, set_size, features]` set.
        mask: `[batch, set_size]` presence (soft values allowed).

    Output shape:
        `[batch, latent]`.
    """

    def __init__(self, dim, latent, n_pieces=20, **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints(type(self).__name__, dim=dim, latent=latent, n_pieces=n_pieces)
        self.dim = dim
        self.latent = latent
        self.n_pieces = n_pieces
        self.features = None
        self.supports_masking = True  # The mask is consumed (an input feature); see compute_mask.

    def create_head(self):
        """Creates the shared `project` (Dense(latent)) and `pool` (FSPool) layers; see the class docstring."""
        self.project = keras.layers.Dense(self.latent, name="project", dtype=self.dtype_policy)
        self.pool = FSPool(self.n_pieces, name="pool", dtype=self.dtype_policy)

    def build_items(self, element_size):
        """Builds what `embed_items` uses, for elements of `element_size` features.

        Args:
            element_size: Features of an element `[x_i, m_i]` (the set's features + 1).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_items(element_size).")

    def embed_items(self, elements):
        """The `[batch, items, dim]` items of `[batch, N, element_size]` elements.

        Args:
            elements: The set with its mask as the last feature.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement embed_items(elements).")

    def build(self, input_shape):
        self.features = int(input_shape[-1])
        self.build_items(self.features + 1)
        self.project.build((None, None, self.dim))
        self.pool.build((None, None, self.latent))

    def call(self, inputs, mask=None):
        name = type(self).__name__
        checks.set_and_mask(name, inputs, mask)
        if mask is None:
            raise ValueError(f"{name}: `mask` is required ([batch, set_size]); pass ones for full sets.")
        checks.features(name, inputs, self.features)
        x = self.project(self.embed_items(_with_mask_feature(inputs, mask)))  # Shape: [batch, items, latent].
        # Dividing by the item count (a constant: N or N², padding included)
        # keeps activations small for big sets; the reference does this and
        # its lr 25 assumes it. FSPool is linear in its input and its sort is
        # unchanged by a positive scale, so dividing the pooled [batch, latent]
        # output is the same function as dividing the [batch, items, latent]
        # items, at 1/items of the cost.
        # Multiplied by the reciprocal, not divided: a graph traced with a known set size has
        # Grappler turn the division into this product, so every execution mode computes the
        # same numbers (a division rounds differently in the last bit).
        pooled = self.pool(x)
        return pooled * tf.math.reciprocal(tf.cast(tf.shape(x)[1], pooled.dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.latent)

    def compute_mask(self, inputs, mask=None):
        return None  # The embedding has no set axis left to mask.

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "latent": self.latent, "n_pieces": self.n_pieces}


@keras.saving.register_keras_serializable(package="dspn_tf")
class FSEncoder(SetEncoder):
    """Per-element MLP pooled with FSPool (the set-MNIST encoder).

    Elements `[x_i, m_i]` → Dense(dim) → ReLU → Dense(dim) → ReLU →
    Dense(latent) → divide by the padded set size N → FSPool over all N
    positions.

    Args:
        dim: Hidden width (paper: 256).
        latent: Output size (paper: 64).
        n_pieces: FSPool pieces (paper: 20).
        **kwargs: Passed on to `keras.layers.Layer` (`name`, `dtype`, ...).

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
        super().__init__(dim, latent, n_pieces, **kwargs)
        self.hidden1 = keras.layers.Dense(dim, activation="relu", name="hidden1", dtype=self.dtype_policy)
        self.hidden2 = keras.layers.Dense(dim, activation="relu", name="hidden2", dtype=self.dtype_policy)
        self.create_head()

    def build_items(self, element_size):
        """Builds the two hidden layers for elements of `element_size` features.

        Args:
            element_size: Features of an element `[x_i, m_i]`.
        """
        self.hidden1.build((None, None, element_size))
        self.hidden2.build((None, None, self.dim))

    def embed_items(self, elements):
        """One item per element: the two hidden layers, `[batch, N, dim]`.

        Args:
            elements: `[batch, N, features + 1]`, the set with its mask as the last feature.
        """
        return self.hidden2(self.hidden1(elements))


@keras.saving.register_keras_serializable(package="dspn_tf")
class RNFSEncoder(SetEncoder):
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
        **kwargs: Passed on to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch, set_size, features]` set.
        mask: `[batch, set_size]` presence (soft values allowed).

    Output shape:
        `[batch, latent]`.
    """

    def __init__(self, dim, latent, n_pieces=20, **kwargs):
        super().__init__(dim, latent, n_pieces, **kwargs)
        self.create_head()

    def build_items(self, element_size):
        """Creates the pair layer's weights for elements of `element_size` features.

        Args:
            element_size: Features of an element `[x_i, m_i]`.
        """
        # One kernel over the concatenated pair [e_i, e_j], as in the paper's
        # Conv2d(2C + 2, dim, 1); glorot fan-in counts the whole pair.
        self.pair_kernel = self.add_weight(
            name="pair_kernel", shape=(2 * element_size, self.dim), initializer="glorot_uniform"
        )
        self.pair_bias = self.add_weight(name="pair_bias", shape=(self.dim,), initializer="zeros")

    def embed_items(self, elements):
        """One item per ordered pair of elements: `relu([e_i, e_j] W + b)`, `[batch, N², dim]`.

        Args:
            elements: `[batch, N, features + 1]`, the set with its mask as the last feature.
        """
        element = self.features + 1
        kernel = tf.convert_to_tensor(self.pair_kernel)
        first = tf.einsum("bnc,cd->bnd", elements, kernel[:element])  # Shape: [batch, n, dim].
        second = tf.einsum("bnc,cd->bnd", elements, kernel[element:])
        pairs = first[:, :, None, :] + second[:, None, :, :] + self.pair_bias  # Shape: [batch, n, n, dim].
        pairs = tf.nn.relu(pairs)
        n = tf.shape(elements)[1]
        return tf.reshape(pairs, [tf.shape(elements)[0], n * n, self.dim])  # Shape: [batch, n², dim].
