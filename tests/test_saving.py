"""`.keras` save/load round trips of whole models, including the shared set encoder."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder, LSTMDecoder, MLPDecoder, RNFSEncoder
from dspn_tf.image_encoders import ConvEncoder
from dspn_tf.models import ImageToSet, SetAutoEncoder


def round_trip(model, tmp_path):
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    return keras.models.load_model(path)


def assert_same_outputs(a, b):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for wa, wb in zip(a.weights, b.weights):
        assert wa.shape == wb.shape
        np.testing.assert_array_equal(wa.numpy(), wb.numpy(), err_msg=wa.path)


def set_batch(rng, batch=3, size=6, channels=2):
    x = rng.random((batch, size, channels)).astype(np.float32)
    mask = np.ones((batch, size), np.float32)
    mask[:, -2:] = 0.0
    return {"set": x * mask[..., None], "mask": mask}


@pytest.mark.parametrize("encoder", [FSEncoder, RNFSEncoder])
def test_set_autoencoder_round_trip_keeps_outputs_and_sharing(rng, tmp_path, encoder):
    model = SetAutoEncoder(DSPN(encoder(dim=8, latent=4, n_pieces=5), 6, 2, iters=3))
    inputs = set_batch(rng)
    before = model(inputs)
    assert model.shares_encoder
    # 2 DSPN weights + the encoder's (each once, although two attributes point at it).
    n_weights = 2 + len(model.decoder.encoder.weights)
    assert len(model.weights) == n_weights

    loaded = round_trip(model, tmp_path)
    assert loaded.encoder is loaded.decoder.encoder and loaded.shares_encoder
    assert len(loaded.weights) == n_weights
    assert len({id(w) for w in loaded.weights}) == n_weights
    assert_same_weights(model, loaded)
    assert_same_outputs(before, loaded(inputs))
    assert_same_outputs(model(inputs, iters=5), loaded(inputs, iters=5))
    assert loaded.decoder.iters == 3 and loaded.decoder.lr == 25.0

    # Still one encoder: a change to the input encoder is seen by the decoder's inner loop.
    kernel = loaded.encoder.weights[0]
    kernel.assign(kernel.numpy() * 2.0)
    assert np.abs(loaded.decoder.encoder.weights[0].numpy() - model.decoder.encoder.weights[0].numpy()).max() > 0


def test_separate_encoder_stays_separate(rng, tmp_path):
    model = SetAutoEncoder(DSPN(FSEncoder(dim=8, latent=4), 6, 2, iters=2), encoder=FSEncoder(dim=8, latent=4))
    inputs = set_batch(rng)
    before = model(inputs)
    assert not model.shares_encoder
    loaded = round_trip(model, tmp_path)
    assert not loaded.shares_encoder
    assert_same_weights(model, loaded)
    assert_same_outputs(before, loaded(inputs))


@pytest.mark.parametrize("decoder", [MLPDecoder, LSTMDecoder])
def test_set_autoencoder_with_baseline_round_trip(rng, tmp_path, decoder):
    model = SetAutoEncoder(decoder(6, 2, 8), encoder=FSEncoder(dim=8, latent=4))
    inputs = set_batch(rng)
    before = model(inputs)
    loaded = round_trip(model, tmp_path)
    assert type(loaded.decoder) is decoder
    assert_same_weights(model, loaded)
    assert_same_outputs(before, loaded(inputs))


def test_image_to_set_round_trip(rng, tmp_path):
    model = ImageToSet(ConvEncoder(4, filters=(4, 8)), DSPN(RNFSEncoder(dim=8, latent=4, n_pieces=5), 3, 2, iters=2))
    images = rng.random((2, 16, 16, 3)).astype(np.float32)
    for _ in range(2):
        model(images, training=True)  # Moves the BatchNorm statistics off their initial values.
    moving = [w for w in model.non_trainable_weights if "moving_mean" in w.path]
    assert moving and all(np.abs(w.numpy()).max() > 0 for w in moving)
    before = model(images)
    n_weights = len(model.weights)
    assert n_weights == len({id(w) for w in model.weights})

    loaded = round_trip(model, tmp_path)
    assert isinstance(loaded.image_encoder, ConvEncoder) and loaded.set_encoder is loaded.decoder.encoder
    assert len(loaded.weights) == n_weights
    assert_same_weights(model, loaded)
    assert_same_outputs(before, loaded(images))
    # The loaded model trains: gradients reach both encoders and the starting set.
    with tf.GradientTape() as tape:
        out = loaded(images, training=True)
        loss = tf.reduce_sum(out["sets"][-1]) + tf.reduce_sum(out["z"])
    grads = tape.gradient(loss, loaded.trainable_variables)
    assert all(g is not None for g in grads)
