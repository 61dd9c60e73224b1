"""dspn_tf.optimizers.Adam: the update of Kingma & Ba's Algorithm 1 (PyTorch's), not Keras' epsilon-hat one."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import optimizers
from train import config as config_lib


def _algorithm_1(gradients, w, lr, eps, beta_1=0.9, beta_2=0.999, amsgrad=False):
    """NumPy Adam with epsilon on the bias-corrected sqrt(v) (torch.optim.Adam's formula)."""
    m, v, v_max = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(gradients, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        v_max = np.maximum(v_max, v)
        v_hat = (v_max if amsgrad else v) / (1 - beta_2**t)
        w = w - lr * (m / (1 - beta_1**t)) / (np.sqrt(v_hat) + eps)
    return w


def _run(optimizer, gradients, w0):
    w = keras.Variable(w0)
    for g in gradients:
        optimizer.apply([tf.constant(g)], [w])
    return w.numpy()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_small_gradients_follow_algorithm_1(rng, amsgrad):
    # Gradients of 1e-8..1e-6 per weight, like the set-MNIST encoder's first steps: there the two
    # epsilon placements differ by up to 2-30x in the update.
    w0 = np.zeros(64, np.float32)  # Updates of 1e-4..1e-2 stay exact in float32 near 0.
    gradients = [(rng.normal(size=(64,)) * 10.0 ** rng.uniform(-8, -6, size=64)).astype(np.float32) for _ in range(6)]
    want = _algorithm_1(gradients, w0.astype(np.float64), lr=1e-2, eps=1e-8, amsgrad=amsgrad)
    got = _run(optimizers.Adam(1e-2, amsgrad=amsgrad), gradients, w0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8)
    # Keras' own Adam with the same epsilon moves these weights far less: the test tells them apart.
    keras_moved = _run(keras.optimizers.Adam(1e-2, epsilon=1e-8, amsgrad=amsgrad), gradients, w0) - w0
    assert np.abs(keras_moved).sum() < 0.7 * np.abs(want - w0).sum()


def test_large_gradients_agree_with_keras_adam(rng):
    # Far above epsilon both placements give the same steps.
    w0 = rng.normal(size=(32,)).astype(np.float32)
    gradients = [rng.normal(size=(32,)).astype(np.float32) for _ in range(5)]
    ours = _run(optimizers.Adam(1e-3), gradients, w0)
    theirs = _run(keras.optimizers.Adam(1e-3, epsilon=1e-8), gradients, w0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_learning_rate_schedule_and_serialization():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [1e-2, 1e-3])
    optimizer = optimizers.Adam(schedule, epsilon=1e-6)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is optimizers.Adam
    assert restored.epsilon == 1e-6
    w = keras.Variable([0.0])
    for _ in range(3):
        restored.apply([tf.constant([1.0])], [w])
    # Unit gradients: every step moves lr * 1 / (1 + eps); lr 1e-2, 1e-2, then 1e-3.
    np.testing.assert_allclose(w.numpy(), [-(2e-2 + 1e-3) / (1 + 1e-6)], rtol=1e-5)


def test_checkpoint_slots_are_keras_adams(tmp_path):
    # Same slot variables: a run saved with keras.optimizers.Adam resumes with ours (and back).
    w = keras.Variable(np.ones(3, np.float32))
    old = keras.optimizers.Adam(1e-2, epsilon=1e-8)
    old.apply([tf.constant([1.0, 2.0, 3.0])], [w])
    path = tf.train.Checkpoint(optimizer=old, w=w).save(str(tmp_path / "ckpt"))
    w2 = keras.Variable(np.zeros(3, np.float32))
    new = optimizers.Adam(1e-2)
    new.build([w2])
    tf.train.Checkpoint(optimizer=new, w=w2).restore(path).assert_consumed()
    assert int(new.iterations) == 1
    np.testing.assert_allclose(new.variables[2].numpy(), old.variables[2].numpy())


@pytest.mark.parametrize("flag, kind", [("adam", optimizers.Adam), ("keras_adam", keras.optimizers.Adam)])
def test_optimizer_flag(flag, kind):
    cfg = config_lib.load("configs/set_mnist_dspn.cfg", f"--optimizer={flag}", "--max_train_examples=64")
    model = config_lib.build_model(cfg)
    optimizer = config_lib.build_optimizer(cfg, model, total=10)
    assert type(optimizer) is kind
    assert optimizer.epsilon == 1e-8
