r"""Writes the v0 backward-compatibility fixtures that tests/test_compat_v0.py loads.

Run it from the root of a checkout of the code whose files must stay loadable
(v0: commit 4dd57ed), so that it imports that checkout's `dspn_tf` and `train`:

    cd CHECKOUT && python /path/to/tests/data/make_v0_fixtures.py OUT_DIR

OUT_DIR (tests/data/v0 in the repository) then holds:

- `<name>.keras`: `model.save` of every model in `keras_models()`;
- `checkpoint/`: a `tf.train.Checkpoint(model, optimizer, step, iterator)`
  as train.train writes it, of the model `train.config.build_model` builds
  from `CHECKPOINT_CONFIG` and `CHECKPOINT_OVERRIDES`, after one training step;
- `export/1/`: `dspn_tf.export.export_model` of the model `ae_default`
  (all-steps signatures included, the `.keras` copy in `assets.extra/`);
- `expected.npz`: the fixed inputs and what each model returns on them
  (`training=False`, at its default `iters` and at `OTHER_ITERS[name]`), and
  what the SavedModel's signatures return;
- `manifest.json`: the commit and library versions that wrote them.

Every model is small, seeded with `keras.utils.set_random_seed` and trained a
step or two, so that no weight has its initial value.
"""

import json
import os
import subprocess
import sys

# The checkout in the working directory, not an installed dspn_tf.
sys.path.insert(0, os.getcwd())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dspn_tf  # noqa: E402
from dspn_tf import DSPN, FSEncoder, RNFSEncoder, optimizers  # noqa: E402
from dspn_tf import training as training_lib  # noqa: E402
from dspn_tf.export import export_model  # noqa: E402
from dspn_tf.image_encoders import ConvEncoder  # noqa: E402
from dspn_tf.models import ImageToSet, SetAutoEncoder  # noqa: E402

SEED = 0
SET_SIZE, SET_CHANNELS = 6, 2
IMAGE_SET_SIZE, IMAGE_SET_CHANNELS, IMAGE_SIZE = 4, 3, 16
BATCH = 3
# The iDSPN options of the model `ae_idspn` (its CLEVR setting plus a seed, a regulariser and early stopping).
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
# A second step count per model, besides its default `iters`.
OTHER_ITERS = {"ae_default": 3, "ae_idspn": 12, "ae_rnfs": 7, "image_rnfs_conv": 1, "checkpoint": 6}
CHECKPOINT_CONFIG = "configs/clevr_mini_state_autoencoder_dspn.cfg"
CHECKPOINT_OVERRIDES = ("--dim=16", "--latent=8", "--iters=3", "--n_pieces=5", "--seed=0")
EXPORT_MODEL = "ae_default"
EXPORT_MAX_ITERS = 20
EXPORT_ITERS = (0, 4)  # Besides the trained iters (the signatures' default).


def keras_models():
    """`{name: unbuilt model}` of the `.keras` fixtures."""
    return {
        # DSPN's defaults (learned starting set, Huber, lr 25, 10 unrolled steps).
        "ae_default": SetAutoEncoder(DSPN(FSEncoder(dim=16, latent=8), SET_SIZE, SET_CHANNELS)),
        # Implicit gradients score the final step only; the settings are part of the file.
        "ae_idspn": SetAutoEncoder(
            DSPN(FSEncoder(dim=16, latent=8, n_pieces=5), SET_SIZE, SET_CHANNELS, iters=6, lr=1.0, **IDSPN_OPTIONS),
            loss_settings=training_lib.LossSettings(all_steps=False),
        ),
        "ae_rnfs": SetAutoEncoder(DSPN(RNFSEncoder(dim=16, latent=8, n_pieces=5), SET_SIZE, SET_CHANNELS, iters=4)),
        "image_rnfs_conv": ImageToSet(
            ConvEncoder(8, filters=(4, 8)),
            DSPN(RNFSEncoder(dim=12, latent=8, n_pieces=4), IMAGE_SET_SIZE, IMAGE_SET_CHANNELS, iters=3),
        ),
    }


def fixed_inputs():
    """The inputs every model is run on (also stored in expected.npz)."""
    rng = np.random.default_rng(SEED)
    mask = np.ones((BATCH, SET_SIZE), np.float32)
    mask[1, -2:] = 0.0
    mask[2, -4:] = 0.0
    state_mask = np.ones((BATCH, 10), np.float32)
    state_mask[1, -3:] = 0.0
    return {
        "set": (rng.random((BATCH, SET_SIZE, SET_CHANNELS)) * mask[..., None]).astype(np.float32),
        "mask": mask,
        "image": rng.random((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
        "state": (rng.random((BATCH, 10, 18)) * state_mask[..., None]).astype(np.float32),
        "state_mask": state_mask,
        "z": rng.normal(size=(BATCH, 8)).astype(np.float32),
        "image_state": rng.random((BATCH, IMAGE_SET_SIZE, IMAGE_SET_CHANNELS)).astype(np.float32),
    }


def model_inputs(name, inputs):
    if name.startswith("image"):
        return inputs["image"]
    if name == "checkpoint":
        return {"set": inputs["state"], "mask": inputs["state_mask"]}
    return {"set": inputs["set"], "mask": inputs["mask"]}


def outputs_of(name, model, inputs):
    """`{key: array}` of the model's outputs at its default iters and at OTHER_ITERS[name]."""
    found = {}
    for label, iters in (("default", None), (f"iters{OTHER_ITERS[name]}", OTHER_ITERS[name])):
        out = model(model_inputs(name, inputs), iters=iters, training=False)
        for key in ("sets", "masks", "inner_losses", "z", "steps"):
            found[f"{name}.{label}.{key}"] = np.asarray(out[key])
    return found


def train_a_little(model, batches, settings):
    """Adam steps of the training loss on `batches`: no weight keeps its initial value."""
    optimizer = optimizers.Adam(1e-2)
    for batch in batches:
        size = tf.cast(tf.shape(batch["mask"])[0], tf.float32)
        _, _, grads = training_lib.loss_and_gradients(model, optimizer, batch, settings, global_batch_size=size)
        optimizer.apply(grads, model.trainable_variables)
    return optimizer


def write_keras_models(out_dir, inputs):
    expected = {}
    for name, model in keras_models().items():
        keras.utils.set_random_seed(SEED)
        if name.startswith("image"):
            batch = {
                "image": inputs["image"],
                "state": inputs["image_state"],
                "mask": inputs["mask"][:, :IMAGE_SET_SIZE],
            }
            model.build_on_zeros((IMAGE_SIZE, IMAGE_SIZE, 3))
        else:
            batch = {"set": inputs["set"], "mask": inputs["mask"]}
            model.build_on_zeros()
        # For the image model the training-mode calls also move the BatchNorm statistics.
        train_a_little(model, [batch, batch], model.loss_settings)
        if name == "ae_default":
            # A compiled model's file also holds the optimizer and its state.
            model.compile(optimizer=optimizers.Adam(1e-3))
            model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=1, verbose=0, shuffle=False)
        path = os.path.join(out_dir, f"{name}.keras")
        model.save(path)
        expected.update(outputs_of(name, model, inputs))
        # The file must give back what the model computes.
        reloaded = outputs_of(name, keras.models.load_model(path), inputs)
        for key, value in reloaded.items():
            np.testing.assert_array_equal(value, expected[key], err_msg=key)
        if name == EXPORT_MODEL:
            expected.update(write_export(out_dir, model, inputs))
    return expected


def write_checkpoint(out_dir, inputs):
    from train import config as config_lib

    keras.utils.set_random_seed(SEED)
    config = config_lib.load(CHECKPOINT_CONFIG, *CHECKPOINT_OVERRIDES)
    model = config_lib.build_model(config)
    batch = {"state": inputs["state"], "mask": inputs["state_mask"]}
    optimizer = config_lib.build_optimizer(config, model, total=10)
    size = tf.constant(BATCH, tf.float32)
    _, _, grads = training_lib.loss_and_gradients(
        model, optimizer, batch, config_lib.loss_settings(config), global_batch_size=size
    )
    optimizer.apply(grads, model.trainable_variables)
    step = tf.Variable(1, dtype=tf.int64, name="step")
    iterator = iter(tf.data.Dataset.range(100).batch(4))
    next(iterator)
    state = {"model": model, "optimizer": optimizer, "step": step, "iterator": iterator}
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**state), os.path.join(out_dir, "checkpoint"), 1)
    manager.save(checkpoint_number=int(step))
    return outputs_of("checkpoint", model, inputs)


def write_export(out_dir, model, inputs):
    version_dir = export_model(
        model, os.path.join(out_dir, "export"), all_steps=True, max_iters=EXPORT_MAX_ITERS, save_keras=True
    )
    loaded = tf.saved_model.load(version_dir)
    signatures = loaded.signatures
    expected = {}
    for iters in (*EXPORT_ITERS, model.decoder.iters):
        extra = {"iters": tf.constant(iters)}
        calls = {
            "serving_default": signatures["serving_default"](set=inputs["set"], mask=inputs["mask"], **extra),
            "decode": signatures["decode"](z=inputs["z"], **extra),
            "serving_all_steps": signatures["serving_all_steps"](set=inputs["set"], mask=inputs["mask"], **extra),
            "decode_all_steps": signatures["decode_all_steps"](z=inputs["z"], **extra),
        }
        for signature, out in calls.items():
            for key, value in out.items():
                expected[f"export.{signature}.iters{iters}.{key}"] = value.numpy()
    for key, value in signatures["encode"](set=inputs["set"], mask=inputs["mask"]).items():
        expected[f"export.encode.{key}"] = value.numpy()
    # The loaded module's functions, with `iters` left to its default (the trained value).
    for name, out in (("serve", loaded.serve(inputs["set"], inputs["mask"])), ("decode", loaded.decode(inputs["z"]))):
        for key, value in out.items():
            expected[f"export.module.{name}.default.{key}"] = value.numpy()
    return expected


def git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=os.getcwd()
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(out_dir):
    here = os.path.realpath(os.getcwd())
    if not os.path.realpath(dspn_tf.__file__).startswith(here + os.sep):
        raise SystemExit(f"dspn_tf was imported from {dspn_tf.__file__}, not from the checkout {here}.")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise SystemExit(f"{out_dir} is not empty; write the fixtures into a new folder.")
    os.makedirs(out_dir, exist_ok=True)
    inputs = fixed_inputs()
    expected = {f"inputs.{key}": value for key, value in inputs.items()}
    expected.update(write_keras_models(out_dir, inputs))
    expected.update(write_checkpoint(out_dir, inputs))
    np.savez_compressed(os.path.join(out_dir, "expected.npz"), **expected)
    manifest = {
        "commit": git_commit(),
        "dspn_tf": dspn_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "checkpoint_config": CHECKPOINT_CONFIG,
        "checkpoint_overrides": list(CHECKPOINT_OVERRIDES),
        "other_iters": OTHER_ITERS,
        "export_model": EXPORT_MODEL,
        "export_iters": list(EXPORT_ITERS),
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"Wrote the fixtures of {manifest['commit']} to {out_dir}.")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: cd CHECKOUT && python {sys.argv[0]} OUT_DIR")
    main(os.path.abspath(sys.argv[1]))
