"""dspn_tf.suggest_inner_lr and --inner_lr=auto: the rule, its errors, and the runs that use it."""

import glob
import json
import os

import keras
import numpy as np
import pytest
from absl import flags
from entry_points import run

import dspn_tf
from dspn_tf import step_size
from train import config as config_lib
from train import evaluate as evaluate_main
from train import export as export_main

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--dim=16",
    "--latent=16",
    "--decoder_dim=16",
    "--iters=2",
    "--batch_size=8",
    "--eval_iters=2",
    "--generated_train=24",
    "--generated_val=8",
    "--noprogress",
    "--image_every=0",
]


def model_and_batch(scale=1.0, seed=0, **options):
    keras.utils.set_random_seed(seed)
    model = dspn_tf.build_model(
        "autoencoder", set_size=6, set_channels=3, dim=16, latent=8, iters=3, input_shape=(6, 3), **options
    )
    rng = np.random.default_rng(seed)
    mask = (np.arange(6)[None] < rng.integers(2, 7, size=(16, 1))).astype(np.float32)
    values = (rng.normal(size=(16, 6, 3)) * scale * mask[..., None]).astype(np.float32)
    return model, {"set": values, "mask": mask}


def test_the_pick_is_the_smallest_grid_step_that_moves_the_set_far_enough():
    model, batch = model_and_batch()
    spread = step_size.target_spread(batch["set"], batch["mask"])
    per_unit = step_size.first_step_move(model.decoder, batch["set"], batch["mask"])
    needed = step_size.DEFAULT_FRACTION * spread / per_unit
    pick = dspn_tf.suggest_inner_lr(model, batch)
    below = [lr for lr in step_size.GRID if lr < pick]
    assert pick in step_size.GRID and pick >= needed and (not below or below[-1] < needed)
    # The move is linear in the step: a first step of size `pick` moves the set by pick * per_unit.
    state, start = model.decoder._initial_state(model.decoder.encoder(batch["set"], batch["mask"]), False)
    model.decoder.lr = pick
    z = model.decoder.encoder(batch["set"], batch["mask"])
    moved = model.decoder.step(z, state, start)[0].set - state.set
    rms = np.mean(np.sqrt(np.mean(np.square(moved.numpy()), axis=(1, 2))))
    np.testing.assert_allclose(rms, pick * per_unit, rtol=1e-4)


def test_the_spread_counts_real_elements_only():
    values = np.zeros((2, 4, 2), np.float32)
    values[0, :2] = [[1.0, 10.0], [3.0, 30.0]]
    values[1, :1] = [[5.0, 50.0]]
    values[1, 3] = [1e6, 1e6]  # A padded slot with garbage: ignored.
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    real = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    assert step_size.target_spread(values, mask) == pytest.approx(np.mean(np.std(real, axis=0)))


def test_a_larger_fraction_never_picks_a_smaller_step():
    model, batch = model_and_batch()
    picks = [dspn_tf.suggest_inner_lr(model, batch, fraction=f) for f in (1e-5, 1e-4, 1e-3, 1e-2)]
    assert picks == sorted(picks) and picks[0] < picks[-1]


def test_bad_inputs_are_named():
    model, batch = model_and_batch()
    with pytest.raises(ValueError, match="'state' and 'mask'"):
        dspn_tf.suggest_inner_lr(model, batch, set_key="state")
    with pytest.raises(ValueError, match="fraction"):
        dspn_tf.suggest_inner_lr(model, batch, fraction=0)
    with pytest.raises(ValueError, match="zero spread"):
        dspn_tf.suggest_inner_lr(model, {"set": np.ones((2, 6, 3), np.float32), "mask": np.ones((2, 6), np.float32)})
    baseline = dspn_tf.build_model("autoencoder", decoder="mlp", set_size=6, set_channels=3, dim=8, latent=4)
    with pytest.raises(ValueError, match="not a DSPN"):
        dspn_tf.suggest_inner_lr(baseline, batch)


def test_every_config_accepts_inner_lr_auto():
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg"))):
        config = config_lib.load(path, "--inner_lr=auto")
        assert config.model.inner_lr_auto and config.as_flags()["inner_lr"] == "auto", path
    with pytest.raises(Exception, match="inner_lr"):
        config_lib.load(os.path.join(ROOT, "configs", "clevr_mini_state_autoencoder_dspn.cfg"), "--inner_lr=fast")


def test_auto_step_is_chosen_printed_kept_and_reused(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    flagfile = os.path.join(ROOT, "configs", "clevr_mini_state_autoencoder_dspn.cfg")
    argv = [f"--flagfile={flagfile}", *TINY, f"--cache_dir={tmp_path / 'cache'}", f"--model_dir={model_dir}"]
    run([*argv, "--inner_lr=auto", "--train_steps=2", "--checkpoint_every=2"])
    out = capsys.readouterr().out
    chosen = json.load(open(os.path.join(model_dir, "inner_lr.json")))["inner_lr"]
    assert f"Inner step size: {chosen:g} (--inner_lr=auto: dspn_tf.suggest_inner_lr" in out
    # The same pick, computed directly for the model as the run built it.
    config = config_lib.load(flagfile, *argv[1:], "--inner_lr=auto")
    config_lib.set_seeds(config)
    model = config_lib.build_model(config)
    assert dspn_tf.suggest_inner_lr(model, next(iter(config_lib.eval_batches(config))), set_key="state") == chosen
    # Resuming reads the kept step; so do train.evaluate and train.export.
    with open(os.path.join(model_dir, "inner_lr.json"), "w") as f:
        json.dump({"inner_lr": 3.5}, f)
    run([*argv, "--inner_lr=auto", "--train_steps=3", "--checkpoint_every=3"])
    assert "Inner step size: 3.5 (--inner_lr=auto, chosen when the run started)." in capsys.readouterr().out
    assert config_lib.resolved_inner_lr(config_lib.load(flagfile, *argv[1:], "--inner_lr=auto")).model.inner.lr == 3.5
    run([*argv, "--inner_lr=auto", "--noexport_keras"], entry=export_main)
    exported = os.path.join(model_dir, "export", "1")
    assert os.path.isdir(exported)
    run([*argv, "--inner_lr=auto", f"--output={tmp_path / 'eval.json'}"], entry=evaluate_main)
    assert os.path.isfile(tmp_path / "eval.json")


def test_evaluating_an_auto_run_without_its_step_names_the_file(tmp_path):
    flagfile = os.path.join(ROOT, "configs", "clevr_mini_state_autoencoder_dspn.cfg")
    with pytest.raises(ValueError, match="inner_lr.json does not exist"):
        run([f"--flagfile={flagfile}", *TINY, "--inner_lr=auto", f"--model_dir={tmp_path}"], entry=evaluate_main)


def test_a_normalising_model_picks_the_same_step_at_any_feature_scale():
    picks = []
    for scale in (0.1, 1.0, 10.0):
        model, batch = model_and_batch(scale=scale, normalize_sets=True)
        model.adapt(batch)
        picks.append(dspn_tf.suggest_inner_lr(model, batch))
    assert picks[0] == picks[1] == picks[2]
    plain = [dspn_tf.suggest_inner_lr(*model_and_batch(scale=scale)) for scale in (0.1, 10.0)]
    assert plain[0] != plain[1]  # Without normalisation the scale moves the pick.
