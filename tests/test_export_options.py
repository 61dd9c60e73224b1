"""SavedModel export and `.keras` round trips keep every DSPN inner-loop option."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder, export
from dspn_tf.models import SetAutoEncoder

SET_SIZE, CHANNELS, LATENT = 5, 2, 8
OPTIONS = {
    "idspn": {
        "gradient": "implicit",
        "momentum": 0.9,
        "lr": 1.0,
        "clip": 10.0,
        "inner_loss": "mse",
        "starting_set": "random",
        "seed": 11,
    },
    "regularized_heavy_ball": {"momentum": 0.5, "nesterov": False, "start_regularizer": 0.1},
    "tolerance": {"tolerance": 1e-4},
}


def _model(options):
    options = {"lr": 25.0, **options}
    decoder = DSPN(FSEncoder(dim=16, latent=LATENT, n_pieces=4), SET_SIZE, CHANNELS, iters=3, **options)
    model = SetAutoEncoder(decoder)
    model(_inputs(1), iters=0)
    return model


def _inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    mask = (rng.random((batch, SET_SIZE)) < 0.7).astype(np.float32)
    return {"set": rng.random((batch, SET_SIZE, CHANNELS)).astype(np.float32) * mask[..., None], "mask": mask}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_keras_file_and_saved_model_keep_the_option(tmp_path, name):
    model = _model(OPTIONS[name])
    inputs = _inputs(6)
    expected = model(inputs, iters=3)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    config = loaded.decoder.get_config()
    for key, value in OPTIONS[name].items():
        assert config[key] == value, key
    again = loaded(inputs, iters=3)
    for key in ("sets", "masks", "steps"):
        np.testing.assert_allclose(again[key].numpy(), expected[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)

    version = export.export_model(model, str(tmp_path / "export"))
    served = tf.saved_model.load(version)
    out = served.signatures["serving_default"](
        set=tf.constant(inputs["set"]), mask=tf.constant(inputs["mask"]), iters=tf.constant(3)
    )
    np.testing.assert_allclose(out["set"].numpy(), expected["sets"][-1].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["mask"].numpy(), expected["masks"][-1].numpy(), rtol=1e-5, atol=1e-6)
    assert os.path.isfile(os.path.join(version, export.KERAS_FILENAME))


def test_served_random_starting_set_is_reproducible(tmp_path):
    model = _model(OPTIONS["idspn"])
    version = export.export_model(model, str(tmp_path / "export"), save_keras=False)
    decode = tf.saved_model.load(version).signatures["decode"]
    z = tf.constant(np.random.default_rng(1).normal(size=(4, LATENT)).astype(np.float32))
    first, second = decode(z=z, iters=tf.constant(3)), decode(z=z, iters=tf.constant(3))
    np.testing.assert_array_equal(first["set"].numpy(), second["set"].numpy())
    # And it is the in-process model's inference output.
    np.testing.assert_allclose(
        first["set"].numpy(), model.decoder(z, iters=3)["sets"][-1].numpy(), rtol=1e-5, atol=1e-6
    )


def test_random_starting_set_is_the_same_in_every_execution_mode(tmp_path):
    # Eager, traced (unrolled and graph loop), compiled with XLA and served: one start, one decoding.
    model = _model(OPTIONS["idspn"])
    decoder = model.decoder
    z = tf.constant(np.random.default_rng(2).normal(size=(4, LATENT)).astype(np.float32))
    version = export.export_model(model, str(tmp_path / "export"), save_keras=False, all_steps=True)
    served = tf.saved_model.load(version).signatures["decode_all_steps"]

    def unrolled(z, iters):
        return decoder(z, iters=int(iters))

    def looped(z, iters):
        return decoder(z, iters=iters)

    runs = {
        "eager": lambda iters: unrolled(z, iters),
        "eager_loop": lambda iters: looped(z, tf.constant(iters)),
        "graph": lambda iters: tf.function(lambda z: unrolled(z, iters))(z),
        "graph_loop": lambda iters: tf.function(looped)(z, tf.constant(iters)),
        "xla": lambda iters: tf.function(lambda z: unrolled(z, iters), jit_compile=True)(z),
        "xla_loop": lambda iters: tf.function(looped, jit_compile=True)(z, tf.constant(iters)),
    }
    # The start the automatic algorithm drew eagerly before the algorithm was named: older files keep it.
    seed = tf.constant([OPTIONS["idspn"]["seed"], 0], tf.int64)
    expected = tf.random.stateless_normal([4, SET_SIZE, CHANNELS], seed=seed, stddev=0.1).numpy()
    for name, run in runs.items():
        np.testing.assert_array_equal(run(0)["sets"][0].numpy(), expected, err_msg=name)
    np.testing.assert_array_equal(served(z=z, iters=tf.constant(0))["sets"][:, 0].numpy(), expected)

    final = runs["eager"](3)["sets"][-1].numpy()
    for name, run in runs.items():
        np.testing.assert_allclose(run(3)["sets"][-1].numpy(), final, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(served(z=z, iters=tf.constant(3))["sets"][:, -1].numpy(), final, rtol=1e-5, atol=1e-6)
