"""The outer training loss falls: a tiny model trained through the library's Trainer (Orbit-style behavioural test)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf.models import build_model
from dspn_tf.training import LossSettings, Trainer


def _batch(rng, batch_size=16, set_size=6, channels=2):
    """Sets of 3..6 points in [0, 1]^2, zero-padded and masked."""
    sizes = rng.integers(3, set_size + 1, size=batch_size)
    mask = (np.arange(set_size)[None] < sizes[:, None]).astype(np.float32)
    points = rng.random((batch_size, set_size, channels), dtype=np.float32) * mask[..., None]
    return {"set": tf.constant(points), "mask": tf.constant(mask)}


@pytest.mark.parametrize(
    "decoder, loss",
    [("dspn", "chamfer"), ("dspn", "hungarian"), ("mlp", "chamfer")],
)
def test_outer_loss_at_least_halves(rng, decoder, loss):
    batch = _batch(rng)
    model = build_model(
        "autoencoder",
        decoder=decoder,
        set_size=6,
        set_channels=2,
        dim=32,
        latent=16,
        iters=5,
        input_shape=(6, 2),
    )
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    settings = LossSettings(set_key="set", loss=loss, all_steps=loss == "chamfer")
    trainer = Trainer(model, optimizer, settings, global_batch_size=16)
    losses = [float(trainer.train_step(trainer.split(batch))["train/loss"]) for _ in range(150)]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert np.all(np.isfinite(losses))
    assert last <= 0.5 * first, (decoder, loss, first, last)
    assert trainer.traces == 1  # One trace serves every step.


def test_float64_model_scores_and_trains_in_float64(rng):
    """A float64 model's loss is float64 (not rounded to float32), so its gradients keep float64 precision."""
    from dspn_tf.training import loss_and_gradients, per_sample_losses
    from tests.numpy_reference import chamfer_reference

    keras.mixed_precision.set_global_policy("float64")
    try:
        model = build_model(
            "autoencoder", decoder="dspn", set_size=6, set_channels=2, dim=8, latent=4, iters=3, input_shape=(6, 2)
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    batch = {k: tf.cast(v, tf.float64) for k, v in _batch(rng, batch_size=4).items()}
    settings = LossSettings(set_key="set", loss="chamfer", all_steps=True)
    outputs, losses = per_sample_losses(model, batch, settings, training=True)
    assert losses["loss"].dtype == tf.float64
    expected = chamfer_reference(
        outputs["sets"].numpy(), outputs["masks"].numpy(), batch["set"].numpy(), batch["mask"].numpy()
    )
    # float32 rounding of the loss would leave ~1e-8 relative error here.
    np.testing.assert_allclose(losses["loss"].numpy(), expected, rtol=1e-12)
    optimizer = keras.optimizers.SGD(0.1)
    _, _, grads = loss_and_gradients(model, optimizer, batch, settings, global_batch_size=tf.constant(4.0))
    assert all(g.dtype == tf.float64 for g in grads if g is not None)
