"""Keras-native training: `compile` / `fit` / `evaluate` / `predict` on the whole models.

`SetModel.train_step` applies `dspn_tf.training.loss_and_gradients`, the update of the
custom loop's `Trainer`; these tests check that both give the same step, that `fit`
learns, that a `.keras` file written by `ModelCheckpoint` after `fit` predicts the same
once loaded, and that Keras' standard callbacks do their job on these models.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from dspn_tf.models import ImageToSet, SetAutoEncoder, build_model
from dspn_tf.training import LossSettings, Trainer

N, C, IMAGE = 4, 2, 16


def _examples(count, seed=0):
    """Sets of 1..4 points in [0, 1]^2 (zero-padded, masked), with 16 px images for ImageToSet."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, N + 1, size=count)
    mask = (np.arange(N)[None] < sizes[:, None]).astype(np.float32)
    points = rng.random((count, N, C), dtype=np.float32) * mask[..., None]
    images = rng.random((count, IMAGE, IMAGE, 3), dtype=np.float32)
    return {"set": points, "state": points, "mask": mask, "image": images}


def _dataset(examples, batch_size):
    return tf.data.Dataset.from_tensor_slices(examples).batch(batch_size)


def _model(task, decoder="dspn", iters=2):
    shape = (N, C) if task == "autoencoder" else (IMAGE, IMAGE, 3)
    return build_model(
        task, decoder=decoder, set_size=N, set_channels=C, dim=16, latent=8, iters=iters, input_shape=shape
    )


@pytest.mark.parametrize(
    "task, settings",
    [
        ("autoencoder", LossSettings(set_key="set", loss="chamfer", all_steps=True)),
        # The image model with the representation loss (BatchNorm in the conv encoder, two encoders).
        ("image", LossSettings(set_key="state", loss="hungarian", all_steps=False, repr_lambda=0.1, iters=3)),
    ],
)
def test_fit_step_equals_trainer_step(task, settings):
    examples = _examples(8)
    batch = {k: tf.constant(v) for k, v in examples.items()}
    model = _model(task)
    start = [w.numpy() for w in model.weights]

    # Plain SGD: the weight change is lr x gradient, so any difference in the
    # gradients (batch scaling, loss terms, iters) shows in the update.
    trainer = Trainer(model, keras.optimizers.SGD(0.5), settings, global_batch_size=8)
    trainer_loss = float(trainer.train_step(batch)["train/loss"])
    by_trainer = [w.numpy() for w in model.weights]

    model.set_weights(start)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss_settings=settings)
    history = model.fit(_dataset(examples, 8), epochs=1, verbose=0)
    by_fit = [w.numpy() for w in model.weights]

    np.testing.assert_allclose(history.history["loss"][0], trainer_loss, rtol=1e-5)
    changed = 0
    for w0, a, b, var in zip(start, by_trainer, by_fit, model.weights):
        np.testing.assert_allclose(b - w0, a - w0, rtol=1e-4, atol=1e-6, err_msg=var.path)
        changed += var.trainable and np.abs(a - w0).max() > 1e-6
    assert changed >= len(model.trainable_weights) // 2, "the step left most weights unchanged"


def test_fit_lowers_the_loss_and_evaluate_agrees():
    model = _model("autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss_settings=LossSettings(loss="chamfer"))
    train = _dataset(_examples(32), 8)
    before = model.evaluate(train, verbose=0, return_dict=True)
    history = model.fit(train, epochs=12, verbose=0)
    after = model.evaluate(train, verbose=0, return_dict=True)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] <= 0.6 * losses[0], losses
    assert after["loss"] <= 0.6 * before["loss"], (before, after)
    assert after["set_loss"] == pytest.approx(after["loss"]) and after["repr_loss"] == 0.0


def test_keras_file_saved_after_fit_loads_and_predicts_the_same(tmp_path):
    settings = LossSettings(set_key="state", loss="hungarian", all_steps=False, repr_lambda=0.1, iters=3)
    # Settings from the constructor here (test_loss_settings_survive_get_config covers compile's).
    model = ImageToSet.from_config({**_model("image").get_config(), "loss_settings": settings.get_config()})
    model.build_on_zeros((IMAGE, IMAGE, 3))
    model.compile(optimizer="adam")
    examples = _examples(12)
    path = str(tmp_path / "model.keras")
    model.fit(_dataset(examples, 4), epochs=2, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(path)])

    loaded = keras.models.load_model(path)
    assert type(loaded) is ImageToSet and loaded.loss_settings == settings
    ours, theirs = model.predict(_dataset(examples, 4), verbose=0), loaded.predict(_dataset(examples, 4), verbose=0)
    assert sorted(ours) == ["mask", "set", "z"] and ours["set"].shape == (12, N, C) and ours["mask"].shape == (12, N)
    for key in ours:
        np.testing.assert_allclose(theirs[key], ours[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # predict's final set is the model's last decoder step.
    direct = model(tf.constant(examples["image"]))
    np.testing.assert_allclose(ours["set"], direct["sets"][-1].numpy(), rtol=1e-5, atol=1e-6)
    # The optimizer came back compiled, with its state (6 steps taken).
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 6
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_tensorboard_and_early_stopping_callbacks(tmp_path):
    model = _model("autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    train, val = _dataset(_examples(16), 8), _dataset(_examples(8, seed=1), 8)
    logs = str(tmp_path / "logs")
    # min_delta larger than any loss: the second epoch cannot improve, so training stops after it.
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=1e3)
    history = model.fit(
        train,
        validation_data=val,
        epochs=6,
        verbose=0,
        callbacks=[keras.callbacks.TensorBoard(logs, write_graph=False), stop],
    )
    assert history.epoch == [0, 1] and stop.stopped_epoch == 1
    assert set(history.history) == {"loss", "set_loss", "repr_loss", "val_loss", "val_set_loss", "val_repr_loss"}
    # Keras' TensorBoard callback writes each epoch's logs: train under train/, validation under validation/.
    for run in ("train", "validation"):
        acc = event_accumulator.EventAccumulator(os.path.join(logs, run), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in ("epoch_loss", "epoch_set_loss", "epoch_repr_loss"):
            events = acc.Tensors(tag)
            assert [e.step for e in events] == [0, 1], (run, tag)
            prefix = "" if run == "train" else "val_"
            logged = [float(tf.make_ndarray(e.tensor_proto)) for e in events]
            np.testing.assert_allclose(logged, history.history[prefix + tag[len("epoch_") :]], rtol=1e-6)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_an_interrupted_fit(tmp_path):
    examples = _examples(16)
    keras.utils.set_random_seed(5)
    model = _model("autoencoder")
    start = model.get_weights()

    def run(callbacks, epochs=4):
        # Plain SGD has no optimizer state, so the resumed run must end on the uninterrupted weights.
        model.compile(optimizer=keras.optimizers.SGD(0.2))
        return model.fit(_dataset(examples, 8), epochs=epochs, verbose=0, callbacks=callbacks)

    run([])
    uninterrupted = model.get_weights()

    model.set_weights(start)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, _Interrupt()])
    assert os.listdir(tmp_path / "backup")
    model.set_weights(start)  # As if the process had restarted: the backup must bring back epoch 2's weights.
    history = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert history.epoch == [2, 3]
    for a, b in zip(model.get_weights(), uninterrupted):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_compile_refuses_keras_losses_and_bad_settings():
    model = _model("autoencoder")
    with pytest.raises(ValueError, match="`loss` is not used"):
        model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="`metrics` is not used"):
        model.compile(optimizer="adam", metrics=["mae"])
    implicit = build_model(
        "autoencoder", set_size=N, set_channels=C, dim=16, latent=8, iters=2, dspn_options={"gradient": "implicit"}
    )
    with pytest.raises(ValueError, match="final step only"):
        implicit.compile(optimizer="adam", loss_settings=LossSettings(all_steps=True))
    with pytest.raises(ValueError, match="`iters` must be None or an int >= 1"):
        LossSettings(iters=0)
    # A batch without the target set names the key and the batch's keys.
    model.compile(optimizer="adam", loss_settings=LossSettings(set_key="boxes"))
    with pytest.raises(KeyError, match="no target set 'boxes'"):
        model.fit(_dataset({k: v for k, v in _examples(4).items() if k != "image"}, 4), verbose=0)


def test_loss_settings_survive_get_config():
    settings = LossSettings(set_key="state", loss="hungarian", all_steps=False, repr_lambda=0.25, iters=7)
    model = SetAutoEncoder.from_config({**_model("autoencoder").get_config(), "loss_settings": settings.get_config()})
    assert model.loss_settings == settings
    assert SetAutoEncoder.from_config(model.get_config()).loss_settings == settings
    compiled = _model("autoencoder")
    compiled.compile(optimizer="adam", loss_settings=settings.get_config())
    assert SetAutoEncoder.from_config(compiled.get_config()).loss_settings == settings
    assert compiled.get_compile_config()["loss_settings"] == settings.get_config()
    # Defaults: set-MNIST's Chamfer for the auto-encoder, the paper's CLEVR states for images.
    assert _model("autoencoder").loss_settings == LossSettings()
    assert _model("image").loss_settings == LossSettings(
        set_key="state", loss="hungarian", all_steps=False, repr_lambda=0.1
    )


MIRRORED_FIT = r"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from dspn_tf.models import build_model
from dspn_tf.training import LossSettings, Trainer

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
mask = (np.arange(4)[None] < rng.integers(1, 5, size=(8, 1))).astype(np.float32)
batch = {"set": rng.random((8, 4, 2), dtype=np.float32) * mask[..., None], "mask": mask}
settings = LossSettings(loss="chamfer")

def make():
    return build_model("autoencoder", set_size=4, set_channels=2, dim=16, latent=8, iters=2, input_shape=(4, 2))

single = make()
start = single.get_weights()
trainer = Trainer(single, keras.optimizers.SGD(0.5), settings, global_batch_size=8)
trainer.train_step({k: tf.constant(v) for k, v in batch.items()})

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = make()
    mirrored.set_weights(start)
    mirrored.compile(optimizer=keras.optimizers.SGD(0.5), loss_settings=settings)
assert strategy.num_replicas_in_sync == 2
mirrored.fit(tf.data.Dataset.from_tensor_slices(batch).batch(8), epochs=1, verbose=0)
worst = max(float(np.max(np.abs(a - b))) for a, b in zip(mirrored.get_weights(), single.get_weights()))
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), start))
print("max difference", worst, "max update", moved)
assert moved > 1e-3 and worst < 1e-6, (worst, moved)
print("OK")
"""


def test_fit_under_two_replicas_equals_the_single_device_trainer_step():
    # Keras sums the replicas' gradients; train_step divides by the global batch, so two
    # replicas of 4 examples must take the step the Trainer takes on all 8.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_FIT], capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
