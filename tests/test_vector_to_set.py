"""VectorToSet: any input encoder and a set decoder, trained with fit, saved, exported; ImageToSet is its image case."""

import keras
import numpy as np
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder, ImageToSet, MLPDecoder, VectorToSet
from dspn_tf.export import export_model
from dspn_tf.training import LossSettings

N, C, FEATURES, LATENT = 4, 2, 3, 8


def polygon_data(rng, count):
    """Inputs: (angle, scale, offset); targets: the 4 corners of the rotated, scaled square (a set)."""
    params = rng.uniform([0, 0.5, -0.5], [np.pi / 2, 1.0, 0.5], size=(count, FEATURES)).astype(np.float32)
    base = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float32) / 2
    angle, scale, offset = params[:, 0], params[:, 1], params[:, 2]
    rotation = np.stack([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], -1).reshape(-1, 2, 2)
    corners = scale[:, None, None] * np.einsum("nij,kj->nki", rotation, base) + offset[:, None, None]
    return params, corners.astype(np.float32), np.ones((count, N), np.float32)


def make_model(decoder="dspn"):
    encoder = keras.Sequential([keras.layers.Dense(32, activation="relu"), keras.layers.Dense(LATENT)])
    if decoder == "dspn":
        dec = DSPN(FSEncoder(dim=16, latent=LATENT, n_pieces=4), N, C, iters=3, lr=5.0)
    else:
        dec = MLPDecoder(N, C, 16)
    model = VectorToSet(encoder, dec)
    return model.build_on_zeros((FEATURES,))


def test_fit_on_pairs_then_save_and_load(rng, tmp_path):
    params, corners, mask = polygon_data(rng, 256)
    data = tf.data.Dataset.from_tensor_slices((params, {"set": corners, "mask": mask})).batch(32)
    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss_settings=LossSettings(loss="hungarian", all_steps=True))
    history = model.fit(data, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.6 * losses[0]  # It learns.
    held_out, held_corners, held_mask = polygon_data(np.random.default_rng(1), 64)
    scores = model.evaluate(
        tf.data.Dataset.from_tensor_slices((held_out, {"set": held_corners, "mask": held_mask})).batch(32),
        return_dict=True,
        verbose=0,
    )
    assert np.isfinite(scores["loss"])
    predicted = model.predict(held_out, verbose=0)
    assert predicted["set"].shape == (64, N, C)
    path = str(tmp_path / "vector_to_set.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(held_out)["sets"].numpy(), model(held_out)["sets"].numpy(), atol=1e-6)


def test_exports_with_an_iters_input(rng, tmp_path):
    model = make_model()
    params, _, _ = polygon_data(rng, 5)
    version = export_model(model, str(tmp_path / "export"), save_keras=False)
    served = tf.saved_model.load(str(version))
    signature = served.signatures["serving_default"]
    assert set(signature.structured_input_signature[1]) == {"inputs", "iters"}
    for iters in (0, 3, 7):
        out = signature(inputs=tf.constant(params), iters=tf.constant(iters))
        expected = model(params, iters=iters)
        np.testing.assert_allclose(out["set"].numpy(), expected["sets"][-1].numpy(), atol=1e-5)


def test_a_baseline_decoder_and_dict_batches(rng):
    model = make_model("mlp")
    params, corners, mask = polygon_data(rng, 64)
    model.compile(optimizer="adam", loss_settings=LossSettings(loss="chamfer", all_steps=False))
    data = tf.data.Dataset.from_tensor_slices({"inputs": params, "set": corners, "mask": mask}).batch(16)
    assert np.isfinite(model.fit(data, epochs=1, verbose=0).history["loss"][0])
    assert not model.iterative and model.set_encoder is None


def test_image_to_set_is_the_image_case():
    from dspn_tf import ConvEncoder

    model = ImageToSet(ConvEncoder(LATENT, filters=(4, 8)), DSPN(FSEncoder(dim=8, latent=LATENT), N, C, iters=2))
    model.build_on_zeros((16, 16, 3))
    assert isinstance(model, VectorToSet) and model.inputs_encoder is model.image_encoder
    config = model.get_config()
    assert "image_encoder" in config and "input_encoder" not in config and "input_key" not in config
    assert model.input_signature()[0].name == "image"
