"""Files written by dspn_tf v0 still load and compute what they computed when they were written.

The fixtures in tests/data/v0/ were written by commit 4dd57ed
(4dd57edc2909d6d6702e5336710c9a408e3aa6a0, dspn_tf 0.1.0, TensorFlow 2.21,
Keras 3) with tests/data/make_v0_fixtures.py, which says how to write them
again (from a checkout of that commit, never from the current code):

- `.keras` files of `SetAutoEncoder` / `ImageToSet` models: DSPN with its
  defaults (compiled, so with the optimizer's state), DSPN with iDSPN's
  inner-loop options, `RNFSEncoder` in an auto-encoder, and `ImageToSet` with
  `ConvEncoder` and `RNFSEncoder`;
- a training checkpoint (`model`, `optimizer`, `step`, `iterator`) of the model
  `train.config.build_model` builds from a config file and flags;
- a SavedModel of `dspn_tf.export.export_model`;
- `expected.npz`: their outputs on fixed inputs (also stored there).

These tests guard changes to the library's classes (their variables, names and
configs): every file must still load and give the same outputs. Where a
weight would not be restored, a freshly built model is checked to give other
outputs, so the comparisons can tell.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import dspn_tf
from dspn_tf import export as export_lib
from dspn_tf import optimizers
from train import checkpoints
from train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "v0")
COMMIT = "4dd57edc2909d6d6702e5336710c9a408e3aa6a0"
KERAS_MODELS = ["ae_default", "ae_idspn", "ae_rnfs", "image_rnfs_conv"]
# The decoding loops run the same float32 ops on the same weights; this holds with room to spare.
ATOL = 1e-6
# A model with other weights is further off than this.
DIFFERENT = 1e-3
# The iDSPN options of the fixture `ae_idspn` (tests/data/make_v0_fixtures.py).
IDSPN_OPTIONS = {
    "gradient": "implicit",
    "momentum": 0.9,
    "nesterov": True,
    "clip": 10.0,
    "inner_loss": "mse",
    "starting_set": "random",
    "seed": 3,
    "start_regularizer": 0.1,
    "tolerance": 1e-4,
}
# The exported model's iters (DSPN's default), the default of its signatures' `iters`.
EXPORT_TRAINED_ITERS = 10


@pytest.fixture(scope="module")
def manifest():
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(FIXTURES, "expected.npz")) as data:
        return {key: data[key] for key in data.files}


def inputs_of(name, expected):
    if name.startswith("image"):
        return expected["inputs.image"]
    if name == "checkpoint":
        return {"set": expected["inputs.state"], "mask": expected["inputs.state_mask"]}
    return {"set": expected["inputs.set"], "mask": expected["inputs.mask"]}


def assert_close(actual, want, key):
    actual = np.asarray(actual)
    assert actual.shape == want.shape, key
    assert actual.dtype == want.dtype, key
    np.testing.assert_allclose(actual, want, rtol=0, atol=ATOL, err_msg=key)


def assert_model_outputs(name, model, expected, other_iters):
    """The model's outputs at its default iters and at `other_iters` equal the stored ones."""
    for label, iters in (("default", None), (f"iters{other_iters}", other_iters)):
        out = model(inputs_of(name, expected), iters=iters, training=False)
        for key in ("sets", "masks", "inner_losses", "z", "steps"):
            assert_close(out[key], expected[f"{name}.{label}.{key}"], f"{name}.{label}.{key}")


def assert_differs(name, model, expected):
    """A model without the stored weights gives other final sets (the comparisons can tell)."""
    out = model(inputs_of(name, expected), training=False)
    gap = np.abs(np.asarray(out["sets"][-1]) - expected[f"{name}.default.sets"][-1]).max()
    assert gap > DIFFERENT, f"{name}: a model with fresh weights gives the stored outputs (gap {gap})."


def test_fixtures_come_from_v0(manifest):
    assert manifest["commit"] == COMMIT
    assert manifest["dspn_tf"] == "0.1.0"
    for name in KERAS_MODELS:
        assert os.path.isfile(os.path.join(FIXTURES, f"{name}.keras")), name


@pytest.mark.parametrize("name", KERAS_MODELS)
def test_keras_file_loads_with_v0_outputs(name, manifest, expected):
    model = keras.models.load_model(os.path.join(FIXTURES, f"{name}.keras"))
    assert_model_outputs(name, model, expected, manifest["other_iters"][name])
    fresh = type(model).from_config(model.get_config())
    assert_differs(name, fresh, expected)
    assert len(fresh.weights) == len(model.weights)
    assert [w.path for w in fresh.weights] == [w.path for w in model.weights]


def test_keras_files_keep_their_settings():
    # Through get_config, the public form of a layer's settings.
    default = keras.models.load_model(os.path.join(FIXTURES, "ae_default.keras"))
    assert default.shares_encoder and isinstance(default.encoder, dspn_tf.FSEncoder)
    # Saved compiled: the optimizer comes back with its state (two `fit` steps).
    assert isinstance(default.optimizer, optimizers.Adam)
    assert int(default.optimizer.iterations) == 2
    config = default.decoder.get_config()
    assert {key: config[key] for key in ("iters", "lr", "gradient", "starting_set", "momentum", "clip")} == {
        "iters": 10,
        "lr": 25.0,
        "gradient": "unrolled",
        "starting_set": "learned",
        "momentum": 0.0,
        "clip": None,
    }

    idspn = keras.models.load_model(os.path.join(FIXTURES, "ae_idspn.keras"))
    config = idspn.decoder.get_config()
    assert {key: config[key] for key in IDSPN_OPTIONS} == IDSPN_OPTIONS
    assert (config["iters"], config["lr"]) == (6, 1.0)
    assert not idspn.loss_settings.all_steps

    rnfs = keras.models.load_model(os.path.join(FIXTURES, "ae_rnfs.keras"))
    assert rnfs.shares_encoder and isinstance(rnfs.encoder, dspn_tf.RNFSEncoder)

    image = keras.models.load_model(os.path.join(FIXTURES, "image_rnfs_conv.keras"))
    assert isinstance(image.image_encoder, dspn_tf.ConvEncoder) and isinstance(image.set_encoder, dspn_tf.RNFSEncoder)
    moving = [w for w in image.non_trainable_weights if "moving_mean" in w.path]
    assert moving and all(np.abs(w.numpy()).max() > 0 for w in moving)


def _checkpoint_model(manifest):
    config = config_lib.load(os.path.join(ROOT, manifest["checkpoint_config"]), *manifest["checkpoint_overrides"])
    return config, config_lib.build_model(config)


def test_training_checkpoint_restores_as_train_evaluate_does(manifest, expected):
    _, model = _checkpoint_model(manifest)
    assert_differs("checkpoint", model, expected)
    step = tf.Variable(0, dtype=tf.int64, name="step")
    # train.evaluate's restore: the model and step only.
    path = checkpoints.restore({"model": model, "step": step}, os.path.join(FIXTURES, "checkpoint"))
    assert os.path.basename(path) == "ckpt-1"
    assert int(step) == 1
    assert_model_outputs("checkpoint", model, expected, manifest["other_iters"]["checkpoint"])


def test_training_checkpoint_resumes_as_train_loop_does(manifest, expected):
    config, model = _checkpoint_model(manifest)
    assert_differs("checkpoint", model, expected)
    optimizer = config_lib.build_optimizer(config, model, total=10)
    step = tf.Variable(0, dtype=tf.int64, name="step")
    iterator = iter(tf.data.Dataset.range(100).batch(4))
    state = {"model": model, "optimizer": optimizer, "step": step, "iterator": iterator}
    # train.loop's resume: every object, nothing of the checkpoint left over.
    checkpoints.restore(state, os.path.join(FIXTURES, "checkpoint"), partial=False, resume=True)
    assert int(step) == 1 and int(optimizer.iterations) == 1
    assert any(np.abs(v.numpy()).max() > 0 for v in optimizer.variables if "momentum" in v.path)
    np.testing.assert_array_equal(next(iterator).numpy(), [4, 5, 6, 7])  # One batch was read before saving.
    assert_model_outputs("checkpoint", model, expected, manifest["other_iters"]["checkpoint"])


def _version_dir():
    return os.path.join(FIXTURES, "export", "1")


def test_saved_model_signatures_give_v0_outputs(manifest, expected):
    loaded = tf.saved_model.load(_version_dir())
    signatures = loaded.signatures
    assert set(signatures) == {"serving_default", "decode", "encode", "serving_all_steps", "decode_all_steps"}
    set_inputs = {"set": expected["inputs.set"], "mask": expected["inputs.mask"]}
    z = expected["inputs.z"]
    for iters in (*manifest["export_iters"], EXPORT_TRAINED_ITERS):
        calls = {
            "serving_default": signatures["serving_default"](**set_inputs, iters=tf.constant(iters)),
            "decode": signatures["decode"](z=z, iters=tf.constant(iters)),
            "serving_all_steps": signatures["serving_all_steps"](**set_inputs, iters=tf.constant(iters)),
            "decode_all_steps": signatures["decode_all_steps"](z=z, iters=tf.constant(iters)),
        }
        for signature, out in calls.items():
            prefix = f"export.{signature}.iters{iters}."
            assert sorted(out) == sorted(k[len(prefix) :] for k in expected if k.startswith(prefix)), prefix
            for key, value in out.items():
                assert_close(value, expected[prefix + key], prefix + key)
    assert_close(signatures["encode"](**set_inputs)["z"], expected["export.encode.z"], "export.encode.z")
    # The module's functions leave `iters` at its default, the trained value.
    for name, out in (("serve", loaded.serve(set_inputs["set"], set_inputs["mask"])), ("decode", loaded.decode(z))):
        for key, value in out.items():
            assert_close(value, expected[f"export.module.{name}.default.{key}"], f"{name}.{key}")


def test_saved_model_signature_defaults_are_the_trained_iters():
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(_version_dir(), "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    signatures = proto.meta_graphs[0].signature_def
    for name in ("serving_default", "decode", "serving_all_steps", "decode_all_steps"):
        assert list(signatures[name].defaults["iters"].int_val) == [EXPORT_TRAINED_ITERS], name


def test_exported_keras_copy_loads_with_v0_outputs(manifest, expected):
    name = manifest["export_model"]
    model = export_lib.load_keras_model(_version_dir())
    assert_model_outputs(name, model, expected, manifest["other_iters"][name])
