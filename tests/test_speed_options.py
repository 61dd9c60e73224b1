"""The speed paths compute the same numbers as the plain formulation.

- `Trainer(jit_compile=True)` (the `--jit_compile` flag) gives the same losses
  and weights as the default step.
- Mixed precision (`mixed_float16` / `mixed_bfloat16` Keras policies) runs
  end to end through the DSPN inner loop, which stays float32, and gives the
  same loss within the policy's precision.
- The Chamfer loss's fused forward and matched-pairs gradient equal autodiff
  through `tf.reduce_min` of the full cost matrix.
- FSPool's rank weighting equals differentiating through the sort, to second
  order (the DSPN inner loop differentiates FSPool twice).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import losses
from dspn_tf.fspool import FSPool
from dspn_tf.models import build_model
from dspn_tf.training import LossSettings, Trainer, per_sample_losses


def _tiny_trainer(jit_compile, loss, iters=3):
    keras.utils.set_random_seed(3)
    task = "autoencoder" if loss == "chamfer" else "image"
    model = build_model(task, decoder="dspn", set_size=6, set_channels=2, dim=16, latent=8, iters=iters)
    if task == "autoencoder":
        model.build_on_zeros((6, 2))
        settings = LossSettings(set_key="set", loss="chamfer", all_steps=True)
    else:
        model.build_on_zeros((16, 16, 3))
        settings = LossSettings(set_key="set", loss="hungarian", all_steps=False, repr_lambda=0.1)
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    return model, Trainer(model, optimizer, settings, global_batch_size=4, jit_compile=jit_compile)


def _batch(rng):
    mask = (np.arange(6)[None] < np.array([[6], [3], [1], [4]])).astype(np.float32)
    return {
        "set": tf.constant(rng.random((4, 6, 2), dtype=np.float32) * mask[..., None]),
        "mask": tf.constant(mask),
        "image": tf.constant(rng.random((4, 16, 16, 3), dtype=np.float32)),
    }


def test_jit_compile_step_gives_the_same_losses_and_weights():
    # Chamfer here; Hungarian steps under XLA (the in-graph assignment) are in tests/test_xla_steps.py.
    loss = "chamfer"
    rng = np.random.default_rng(0)
    batches = [_batch(rng) for _ in range(2)]
    runs = []
    for jit in (False, True):
        model, trainer = _tiny_trainer(jit, loss, iters=2)  # Two steps keep the XLA compile short.
        values = [trainer.train_step(b) for b in batches]
        runs.append(([float(v["train/loss"]) for v in values], [v.numpy() for v in model.trainable_variables]))
    (plain_losses, plain_weights), (xla_losses, xla_weights) = runs
    np.testing.assert_allclose(xla_losses, plain_losses, rtol=1e-4, atol=1e-6)
    for a, b in zip(xla_weights, plain_weights):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("loss", ["chamfer", "hungarian"])
def test_mixed_precision_gives_the_same_loss_and_gradients(loss):
    # Same initial weights (the variables are float32 under every policy), so
    # the loss differs only by the encoders' compute precision: float16 keeps
    # 11 mantissa bits, bfloat16 8 (~0.4% per rounding, compounded over the
    # inner steps and, for images, the conv encoder). Eager: no tracing cost.
    # Measured: set-MNIST-like (Chamfer) agrees to ~1e-4; the image model's
    # conv encoder adds its own rounding and its BatchNorm amplifies it in
    # the gradient (float16 ~4%, bfloat16 ~9% on the gradient norm).
    rtol = {
        "chamfer": {"mixed_float16": 2e-3, "mixed_bfloat16": 1e-2},
        "hungarian": {"mixed_float16": 6e-2, "mixed_bfloat16": 1.5e-1},
    }[loss]
    batch = _batch(np.random.default_rng(0))
    results = {}
    try:
        for policy in ("float32", *rtol):
            keras.mixed_precision.set_global_policy(policy)
            model, trainer = _tiny_trainer(False, loss, iters=2)
            with tf.GradientTape() as tape:
                outputs, losses = per_sample_losses(model, batch, trainer.settings, training=True)
                value = tf.reduce_mean(losses["loss"])
            assert outputs["sets"].dtype == tf.float32 and outputs["masks"].dtype == tf.float32
            grads = tape.gradient(value, model.trainable_variables)
            norm = tf.linalg.global_norm([tf.cast(g, tf.float32) for g in grads])
            results[policy] = (float(value), float(norm))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(list(results.values())).all()
    for policy, tol in rtol.items():
        np.testing.assert_allclose(results[policy], results["float32"], rtol=tol, err_msg=policy)


def _chamfer_autodiff(sets, masks, target, target_mask):
    """Chamfer through `tf.reduce_min` of the whole cost matrix (the textbook graph)."""
    tgt = tf.concat([target, target_mask[..., None]], -1)
    per_step = []
    for s in range(sets.shape[0]):
        pred = tf.concat([sets[s], masks[s][..., None]], -1)
        cost = tf.reduce_mean(losses.huber(pred[:, :, None] - tgt[:, None]), -1)
        per_step.append(tf.reduce_mean(tf.reduce_min(cost, 1), 1) + tf.reduce_mean(tf.reduce_min(cost, 2), 1))
    return tf.add_n(per_step) / len(per_step)


def test_chamfer_gradient_equals_autodiff_through_min():
    rng = np.random.default_rng(1)
    steps, batch, n, m = 3, 4, 9, 7
    sets = tf.constant(rng.normal(size=(steps, batch, n, 2)) * 1.5, tf.float32)  # Some |diff| > 1: both Huber arms.
    masks = tf.constant(rng.random((steps, batch, n)), tf.float32)
    target_mask = (np.arange(m)[None] < np.array([[7], [2], [5], [1]])).astype(np.float32)
    target = tf.constant(rng.random((batch, m, 2)).astype(np.float32) * target_mask[..., None])
    target_mask = tf.constant(target_mask)
    weights = tf.constant(rng.random(batch), tf.float32)
    results = []
    for fn in (_chamfer_autodiff, lambda *a: losses.chamfer_loss(*a, reduction="none")):
        with tf.GradientTape() as tape:
            tape.watch([sets, masks])
            value = fn(sets, masks, target, target_mask)
            weighted = tf.reduce_sum(value * weights)
        results.append([value] + tape.gradient(weighted, [sets, masks]))
    for got, expected in zip(results[1], results[0]):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


def _fspool_through_sort(layer, x, mask):
    """FSPool by sorting the values (top_k, whose gradient is a scatter)."""
    n_pieces = layer.n_pieces
    set_size = x.shape[1]
    if mask is None:
        present = tf.ones(x.shape[:2], bool)
    else:
        present = mask > 0
    keys = tf.where(present[..., None], x, float("-inf"))
    sorted_x = tf.transpose(tf.math.top_k(tf.transpose(keys, [0, 2, 1]), k=set_size).values, [0, 2, 1])
    n = tf.reduce_sum(tf.cast(present, x.dtype), 1, keepdims=True)
    ratio = tf.minimum(tf.range(set_size, dtype=x.dtype)[None] / tf.maximum(n - 1.0, 1.0), 1.0)
    t = n_pieces * ratio
    k = tf.minimum(tf.floor(t), n_pieces - 1)
    f = (t - k)[..., None]
    table = tf.transpose(layer.weight)
    k = tf.cast(k, tf.int32)
    w = (1 - f) * tf.gather(table, k) + f * tf.gather(table, k + 1)
    valid = tf.range(set_size, dtype=x.dtype)[None] < n
    return tf.reduce_sum(tf.where(valid[..., None], sorted_x, 0.0) * w, 1)


@pytest.mark.parametrize("with_mask", [False, True])
def test_fspool_rank_weighting_equals_sorting_to_second_order(with_mask):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 9, 4)).astype(np.float32)
    x[:, 5:] = 0.25  # Ties, like the identical padded elements of set-MNIST.
    mask = tf.constant((np.arange(9)[None] < np.array([[9], [4], [6]])).astype(np.float32)) if with_mask else None
    layer = FSPool(5)
    layer.build((None, 9, 4))
    results = []
    for fn in (lambda v: _fspool_through_sort(layer, v, mask), lambda v: layer(v, mask=mask)):
        xv = tf.constant(x)
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(xv)
            with tf.GradientTape() as inner:
                inner.watch(xv)
                y = fn(xv)
                loss = tf.reduce_sum(tf.sin(y))
            g = inner.gradient(loss, xv)
            second = tf.reduce_sum(g * g * tf.cos(xv))
        results.append([y, g, *outer.gradient(second, [xv, layer.weight]), outer.gradient(loss, layer.weight)])
    for got, expected in zip(results[1], results[0]):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
