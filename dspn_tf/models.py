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
