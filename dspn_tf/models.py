"""Whole models: an input encoder followed by a set decoder.

`SetAutoEncoder` encodes a set and decodes it back (set-MNIST);
`ImageToSet` predicts a set from an image (CLEVR). With a `DSPN` decoder the
target-set encoder is the decoder's own encoder (weights shared, SPEC §3).
Both return the decoder dict plus the embedding `z`.
"""

import keras

from dspn_tf.dspn import DSPN


def _deserialize(obj):
    return keras.saving.deserialize_keras_object(obj) if isinstance(obj, dict) else obj


@keras.saving.register_keras_serializable(package="dspn_tf")
class SetAutoEncoder(keras.Model):
    """Set → z → set.

    Args:
        decoder: A `DSPN`, `MLPDecoder` or `LSTMDecoder`.
        encoder: The set encoder. Omit it for a `DSPN` decoder to use the
            decoder's encoder (the paper's weight sharing).

    Call arguments:
        inputs: A dict with `set` `[batch, N, C]` and `mask` `[batch, N]`.
        iters: Optional inner steps for a DSPN decoder.
    """

    def __init__(self, decoder, encoder=None, **kwargs):
        super().__init__(**kwargs)
        decoder = _deserialize(decoder)
        encoder = _deserialize(encoder)
        if encoder is None:
            if not isinstance(decoder, DSPN):
                raise ValueError(f"SetAutoEncoder: `encoder` is required with a {type(decoder).__name__} decoder.")
            encoder = decoder.encoder
        self.decoder = decoder
        self.encoder = encoder

    @property
    def shares_encoder(self):
        return isinstance(self.decoder, DSPN) and self.decoder.encoder is self.encoder

    def call(self, inputs, iters=None, training=False):
        z = self.encoder(inputs["set"], inputs["mask"], training=training)
        return {**self.decoder(z, iters=iters, training=training), "z": z}

    def get_config(self):
        config = {**super().get_config(), "decoder": keras.saving.serialize_keras_object(self.decoder)}
        if not self.shares_encoder:
            config["encoder"] = keras.saving.serialize_keras_object(self.encoder)
        return config


@keras.saving.register_keras_serializable(package="dspn_tf")
class ImageToSet(keras.Model):
    """Image → z → set, with the set encoder for the representation loss.

    Args:
        image_encoder: e.g. `ResNet34Encoder` or `ConvEncoder`.
        decoder: A `DSPN`, `MLPDecoder` or `LSTMDecoder`.

    Call arguments:
        inputs: `[batch, H, W, 3]` images.
        iters: Optional inner steps for a DSPN decoder.
    """

    def __init__(self, image_encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.image_encoder = _deserialize(image_encoder)
        self.decoder = _deserialize(decoder)

    @property
    def set_encoder(self):
        """The encoder g of target sets (DSPN only; baselines have none)."""
        return self.decoder.encoder if isinstance(self.decoder, DSPN) else None

    def call(self, inputs, iters=None, training=False):
        z = self.image_encoder(inputs, training=training)
        return {**self.decoder(z, iters=iters, training=training), "z": z}

    def get_config(self):
        return {
            **super().get_config(),
            "image_encoder": keras.saving.serialize_keras_object(self.image_encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
        }


def build_model(task, *, decoder="dspn", set_size, set_channels, dim, latent, decoder_dim=None,
                set_encoder=None, image_encoder="conv", iters=10, inner_lr=25.0, n_pieces=20, dspn_options=None):
    """Builds the model of one of the paper's tasks from plain settings.

    Args:
        task: "autoencoder" (set → set, set-MNIST) or "image" (image → set, CLEVR).
        decoder: "dspn", "mlp" or "lstm".
        set_size: Set slots N.
        set_channels: Features per element C.
        dim: Hidden width of the set encoder.
        latent: Embedding size.
        decoder_dim: Hidden width of a baseline decoder (default `dim`).
        set_encoder: "fs" or "rnfs" (default: "fs" for the auto-encoder, "rnfs" for images).
        image_encoder: "conv" (small, for CPUs), "resnet34" (the DSPN paper's)
            or "resnet18" (iDSPN's).
        iters: DSPN inner steps.
        inner_lr: DSPN per-sample inner step size.
        n_pieces: FSPool pieces.
        dspn_options: Further keyword arguments of `DSPN` (the inner-loop
            options: `gradient`, `momentum`, `nesterov`, `clip`, `inner_loss`,
            `starting_set`, `start_regularizer`, `tolerance`, `seed`); ignored
            by the baselines.

    Returns:
        A `SetAutoEncoder` or `ImageToSet`.
    """
    # Imported here to keep this module importable without a cycle.
    from dspn_tf.baselines import LSTMDecoder, MLPDecoder
    from dspn_tf.encoders import FSEncoder, RNFSEncoder
    from dspn_tf.image_encoders import ConvEncoder, ResNet18Encoder, ResNet34Encoder

    if task not in ("autoencoder", "image"):
        raise ValueError(f"build_model: `task` must be 'autoencoder' or 'image'; received {task!r}.")
    set_encoder = set_encoder or ("fs" if task == "autoencoder" else "rnfs")
    encoders = {"fs": FSEncoder, "rnfs": RNFSEncoder}
    if set_encoder not in encoders:
        raise ValueError(f"build_model: `set_encoder` must be one of {sorted(encoders)}; received {set_encoder!r}.")
    make_set_encoder = lambda: encoders[set_encoder](dim, latent, n_pieces=n_pieces)  # noqa: E731
    if decoder == "dspn":
        dec = DSPN(make_set_encoder(), set_size, set_channels, iters=iters, lr=inner_lr, **(dspn_options or {}))
    elif decoder in ("mlp", "lstm"):
        cls = MLPDecoder if decoder == "mlp" else LSTMDecoder
        dec = cls(set_size, set_channels, decoder_dim or dim)
    else:
        raise ValueError(f"build_model: `decoder` must be 'dspn', 'mlp' or 'lstm'; received {decoder!r}.")
    if task == "autoencoder":
        return SetAutoEncoder(dec, encoder=None if decoder == "dspn" else make_set_encoder())
    images = {"conv": ConvEncoder, "resnet18": ResNet18Encoder, "resnet34": ResNet34Encoder}
    if image_encoder not in images:
        raise ValueError(f"build_model: `image_encoder` must be one of {sorted(images)}; received {image_encoder!r}.")
    return ImageToSet(images[image_encoder](latent), dec)
