"""iDSPN's random-set auto-encoding: the sets, the metric, the separate objective encoder, the inner objective."""

import os

import keras
import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf
from absl import flags as absl_flags

from dspn_tf import evaluation
from dspn_tf import losses as losses_lib
from dspn_tf.data import random_sets
from dspn_tf.dspn import DSPN
from dspn_tf.encoders import FSEncoder
from dspn_tf.inner import FullMask, LearnedStart
from dspn_tf.models import build_model
from dspn_tf.training import LossSettings, loss_and_gradients
from train import config as config_lib
from train import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    "random_sets_idspn_momentum",
    "random_sets_idspn",
    "random_sets_dspn",
    "random_sets_dspn_momentum",
]


def numpy_sets(split, num_sets, n, d, seed):
    stream = {"train": 0, "eval": 1}[split]
    return np.random.default_rng([seed, stream]).standard_normal((num_sets, n, d)).astype(np.float32)


def test_the_sets_are_the_numpy_draw_with_full_masks():
    ds = random_sets.build_dataset("train", num_sets=50, set_size=8, channels=8, seed=3)
    elements = list(ds.as_numpy_iterator())
    sets = np.stack([e["set"] for e in elements])
    masks = np.stack([e["mask"] for e in elements])
    assert sets.shape == (50, 8, 8) and sets.dtype == np.float32
    np.testing.assert_array_equal(sets, numpy_sets("train", 50, 8, 8, seed=3))
    np.testing.assert_array_equal(masks, np.ones((50, 8), np.float32))


def test_a_seed_gives_the_same_sets_and_the_splits_are_different_draws():
    args = dict(num_sets=2000, set_size=4, channels=3)
    train = random_sets.draw("train", seed=0, **args)
    np.testing.assert_array_equal(train, random_sets.draw("train", seed=0, **args))
    assert not np.any(np.isclose(train, random_sets.draw("train", seed=1, **args)).all(axis=(1, 2)))
    evaluation_sets = random_sets.draw("eval", seed=0, **args)
    # No evaluation set is a training set (nor any element of one).
    elements = {row.tobytes() for row in train.reshape(-1, 3)}
    assert not any(row.tobytes() in elements for row in evaluation_sets.reshape(-1, 3))


def test_the_published_split_is_standard_normal():
    sets = random_sets.draw("train", num_sets=64_000, set_size=8, channels=8, seed=0)
    assert sets.shape == (64_000, 8, 8)
    # 4,096,000 draws: the mean's standard error is 5e-4, the standard deviation's 3.5e-4.
    assert abs(sets.mean()) < 3e-3
    assert abs(sets.std() - 1.0) < 3e-3
    np.testing.assert_allclose(sets.mean(axis=(0, 1)), 0.0, atol=0.01)  # Every feature.
    np.testing.assert_allclose(sets.std(axis=(0, 1)), 1.0, atol=0.01)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="val"), "split"),
        (dict(num_sets=0), "num_sets"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {**dict(split="train", num_sets=4, set_size=2, channels=2, seed=0), **kwargs}
    with pytest.raises(ValueError, match=match):
        random_sets.draw(args.pop("split"), **args)


def numpy_hungarian(pred, target):
    """The metric written out: smooth-L1 (beta 1) mean over features, optimal matching, mean over pairs and sets."""
    per_set = []
    for p, t in zip(pred, target):
        diff = np.abs(t[:, None, :] - p[None, :, :])
        cost = np.where(diff < 1.0, 0.5 * diff**2, diff - 0.5).mean(axis=-1)
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        per_set.append(cost[rows, cols].mean())
    return float(np.mean(per_set))


def test_the_metric_is_the_features_only_hungarian_smooth_l1(rng):
    target = rng.standard_normal((40, 8, 8)).astype(np.float32)
    pred = {10: (target[:, ::-1] + 0.7 * rng.standard_normal((40, 8, 8))).astype(np.float32), 0: 0.1 * target}
    predictions = {
        "pred": pred,
        # Masks that a mask channel would score: the metric must not see them.
        "scores": {i: rng.uniform(size=(40, 8)).astype(np.float32) for i in pred},
        "target": target,
        "target_mask": np.ones((40, 8), np.float32),
    }
    got = evaluation.hungarian_per_iters(predictions)
    for i in pred:
        np.testing.assert_allclose(got[i], numpy_hungarian(pred[i], target), rtol=1e-5)
    # The training loss is the same function, with either assignment solver.
    for solver in ("tf", "scipy"):
        loss = losses_lib.hungarian_loss(
            pred[10], predictions["scores"][10], target, np.ones((40, 8), np.float32), solver=solver, score_mask=False
        )
        np.testing.assert_allclose(float(loss), numpy_hungarian(pred[10], target), rtol=1e-5)


def test_the_task_and_its_settings():
    task = tasks.get("random_sets")
    assert (task.kind, task.set_key, task.set_size, task.set_channels) == ("autoencoder", "set", 8, 8)
    assert task.full_sets and task.eval_metric == "hungarian"
    config = config_lib.load(os.path.join(ROOT, "configs/random_sets_idspn_momentum.cfg"))
    assert config_lib.loss_settings(config) == LossSettings(
        set_key="set", loss="hungarian", all_steps=False, repr_lambda=0.0, score_mask=False
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_the_configs_are_the_published_settings(name):
    flags = config_lib.load(os.path.join(ROOT, f"configs/{name}.cfg")).as_flags()
    assert flags["dataset"] == "random_sets" and flags["model_dir"] == f"runs/{name}"
    expected = dict(
        generated_train=64_000, generated_val=6_400, dim=512, latent=512, objective_dim=512, iters=10, inner_lr=1.0,
        inner_clip=None, inner_loss="mse", starting_set="learned", learned_start_stddev=0.1,
        start_regularizer=0.1 / 64, learning_rate=1e-3, batch_size=128, train_steps=20_000, seed=0,
        separate_objective_encoder=True, checkpoint_every=500, learning_rate_drops=(), iters_schedule=(),
    )  # fmt: skip
    assert {k: flags[k] for k in expected} == expected
    implicit, momentum = "idspn" in name, "momentum" in name
    assert flags["inner_gradient"] == ("implicit" if implicit else "unrolled")
    assert (flags["inner_momentum"], flags["inner_nesterov"]) == ((0.9, True) if momentum else (0.0, True))


def tiny_model(**kwargs):
    return build_model(
        "autoencoder",
        set_size=4,
        set_channels=3,
        dim=8,
        latent=6,
        n_pieces=3,
        separate_objective_encoder=True,
        objective_dim=10,
        projection="full_mask",
        start_stddev=0.1,
        inner={"lr": 1.0, "inner_loss": "mse", "start_regularizer": 0.1 / 12, **kwargs},
        input_shape=(4, 3),
    )


@pytest.mark.parametrize("gradient", ["unrolled", "implicit"])
def test_the_objective_encoder_is_not_the_input_encoder(gradient, rng):
    model = tiny_model(gradient=gradient, iters=2)
    assert model.encoder is not model.decoder.encoder and not model.shares_encoder
    assert model.repr_encoder is None
    assert (model.encoder.dim, model.decoder.encoder.dim) == (8, 10)
    inputs = {id(v) for v in model.encoder.weights}
    objective = {id(v) for v in model.decoder.encoder.weights}
    assert inputs and objective and not inputs & objective
    # Both train: every trainable variable gets a gradient; the held mask's start is not trainable.
    batch = {"set": tf.constant(rng.standard_normal((5, 4, 3)), tf.float32), "mask": tf.ones([5, 4])}
    settings = LossSettings(loss="hungarian", all_steps=False, score_mask=False, solver="tf")
    optimizer = keras.optimizers.Adam()
    _, _, grads = loss_and_gradients(model, optimizer, batch, settings, global_batch_size=5)
    names = [v.path for v in model.trainable_variables]
    assert not any("starting_mask" in n for n in names)
    assert any("starting_set" in n for n in names)
    for name, grad in zip(names, grads):
        assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0, name


def test_the_inner_objective_has_the_start_regularizer_and_the_mask_stays_at_one(rng):
    model = tiny_model(iters=3)
    decoder = model.decoder
    assert isinstance(decoder.projection, FullMask) and decoder.start.stddev == 0.1
    z = tf.constant(rng.standard_normal((5, 6)), tf.float32)
    state, start = decoder._initial_state(z, training=False)
    np.testing.assert_array_equal(start[1].numpy(), np.ones((5, 4)))
    y = start[0] + tf.constant(rng.standard_normal((5, 4, 3)), tf.float32)
    got = decoder.objective(z, y, tf.ones([5, 4]), start).numpy()
    embedding = decoder.encoder(y, tf.ones([5, 4])).numpy()
    y0 = decoder.starting_set.numpy()
    expected = 0.5 * ((embedding - z.numpy()) ** 2).mean(axis=1) + 0.1 * 0.5 * ((y.numpy() - y0) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    out = decoder(z, training=False)
    np.testing.assert_array_equal(out["masks"].numpy(), np.ones((4, 5, 4)))


def test_the_new_parts_survive_the_decoder_config():
    decoder = DSPN(FSEncoder(8, 6), 4, 3, projection="full_mask", starting_set=LearnedStart(stddev=0.1))
    again = DSPN.from_config(decoder.get_config())
    assert isinstance(again.projection, FullMask)
    assert isinstance(again.start, LearnedStart) and again.start.stddev == 0.1
    assert LearnedStart().get_config() == {"stddev": None}


def test_a_learned_start_stddev_draws_normal_values():
    decoder = DSPN(FSEncoder(8, 6), 64, 8, starting_set=LearnedStart(stddev=0.1))
    decoder(tf.zeros([1, 6]))
    start = decoder.starting_set.numpy()
    assert start.min() < 0 and abs(start.std() - 0.1) < 0.02


@pytest.mark.parametrize(
    "override, flag",
    [
        ("--learned_start_stddev=0", "learned_start_stddev"),
        ("--objective_dim=0", "objective_dim"),
        ("--starting_set=random", "learned_start_stddev"),
        ("--decoder=mlp", "separate_objective_encoder"),
        ("--dataset=clevr_state", "separate_objective_encoder"),
    ],
)
def test_bad_flags_are_refused_by_name(override, flag):
    with pytest.raises(absl_flags.IllegalFlagValueError, match=flag):
        config_lib.load(os.path.join(ROOT, "configs/random_sets_idspn.cfg"), override)


def test_random_sets_come_from_generated_data_only():
    config = config_lib.load(os.path.join(ROOT, "configs/random_sets_idspn.cfg"), "--data_source=tfds")
    with pytest.raises(ValueError, match="--data_source"):
        config_lib.build_split(config, "train")
