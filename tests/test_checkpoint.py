"""Training checkpoints (`tf.train.Checkpoint`) must hold every weight of every model kind."""

import numpy as np
import pytest
import tensorflow as tf

from dspn_tf.models import build_model

KINDS = [
    ("autoencoder", "dspn", "fs", "conv"),
    ("autoencoder", "mlp", "fs", "conv"),
    ("autoencoder", "lstm", "fs", "conv"),
    ("image", "dspn", "rnfs", "conv"),
    ("image", "mlp", "rnfs", "resnet34"),
    ("image", "dspn", "fs", "resnet18"),  # Its head conv is made in build.
]


def _built(task, decoder, set_encoder, image_encoder):
    model = build_model(
        task,
        decoder=decoder,
        set_size=5,
        set_channels=3,
        dim=8,
        latent=8,
        set_encoder=set_encoder,
        image_encoder=image_encoder,
        iters=1,
    )
    if task == "autoencoder":
        model.build_on_zeros((5, 3))
    else:
        # ResNet34 and its head need 128 px to reach a 1×1 map (ResNet18's head a 2×2 one).
        model.build_on_zeros((128, 128, 3))
    return model


@pytest.mark.parametrize("kind", KINDS, ids=["-".join(k) for k in KINDS])
def test_checkpoint_restores_every_weight(tmp_path, kind):
    source = _built(*kind)
    rng = np.random.default_rng(0)
    for v in source.weights:  # Trainable and non-trainable (BatchNorm statistics).
        v.assign(rng.normal(size=v.shape).astype(v.dtype))
    path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    target = _built(*kind)
    tf.train.Checkpoint(model=target).restore(path).assert_consumed()
    assert len(target.weights) == len(source.weights)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
