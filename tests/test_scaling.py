"""Set-feature normalisation: masked statistics, the models' units, saving, export and train.train --normalize_sets."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder, MLPDecoder, SetAutoEncoder, VectorToSet, build_model, evaluation, losses
from dspn_tf.export import export_model
from dspn_tf.models import SetModel
from dspn_tf.scaling import SetScaling, feature_statistics
from dspn_tf.training import LossSettings, per_sample_losses
from tests.test_train import TINY, run
from train import checkpoints
from train import evaluate as evaluate_main
from train import set_scaling as train_scaling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, C, FEATURES, LATENT = 5, 3, 4, 8


def padded_sets(rng, count, scale=1.0, offset=0.0, junk=1e6):
    """Sets of 1..N elements per feature scaled and shifted; padded elements hold `junk` (the statistics skip them)."""
    sizes = rng.integers(1, N + 1, size=count)
    mask = (np.arange(N)[None] < sizes[:, None]).astype(np.float32)
    sets = (rng.normal(size=(count, N, C)) * [1.0, 2.0, 0.5] * scale + [offset, -offset, 3 * offset]).astype(np.float32)
    sets = np.where(mask[..., None] > 0, sets, np.float32(junk))
    return sets, mask


def test_statistics_are_those_of_the_valid_elements_over_batches(rng):
    sets, mask = padded_sets(rng, 50, scale=7.0, offset=40.0)
    valid = sets[mask > 0].astype(np.float64)  # Shape: [elements, C].
    empty = (np.full((2, N, C), 5.0, np.float32), np.zeros((2, N), np.float32))  # Two sets of padding only.
    pairs = [(sets[:7], mask[:7]), empty, (sets[7:31], mask[7:31]), (sets[31:], mask[31:])]
    stats = feature_statistics(tf.data.Dataset.from_tensor_slices((sets, mask)).batch(9))
    for got in (stats, feature_statistics(pairs), feature_statistics((sets, mask))):
        assert got.elements == valid.shape[0]
        np.testing.assert_allclose(got.mean, valid.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(got.std, valid.std(axis=0), rtol=1e-10)
    assert stats.sets == 50 and feature_statistics(pairs).sets == 52 and feature_statistics(pairs, steps=2).sets == 9
    with pytest.raises(ValueError, match="no valid element"):
        feature_statistics((sets, mask * 0))


def test_normalize_round_trip_padding_zero_and_constant_features(rng):
    sets, mask = padded_sets(rng, 40, scale=10.0, offset=-25.0)
    sets[..., 2] = np.where(mask > 0, 4.0, sets[..., 2])  # A constant feature: std 0.
    scaling = SetScaling(C)
    np.testing.assert_array_equal(scaling.normalize(sets, mask).numpy()[mask > 0], sets[mask > 0])  # Identity.
    stats = scaling.adapt((sets, mask))
    assert stats.std[2] == 0 and list(stats.constant()) == [False, False, True]
    np.testing.assert_allclose(scaling.std.numpy(), [stats.std[0], stats.std[1], 1.0], rtol=1e-6)
    normalized = scaling.normalize(sets, mask).numpy()
    assert np.all(normalized[mask == 0] == 0.0)  # Padding stays exactly 0 (its junk values are dropped).
    valid = normalized[mask > 0]
    np.testing.assert_allclose(valid[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(valid[:, :2].std(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(valid[:, 2], 0.0)
    back = scaling.denormalize(normalized).numpy()
    np.testing.assert_allclose(back[mask > 0], sets[mask > 0], rtol=1e-6, atol=1e-5)
    # The docstring's example.
    doc = SetScaling(2)
    doc.adapt((np.array([[[10.0, 1.0], [30.0, 3.0], [0.0, 0.0]]]), np.array([[1.0, 1.0, 0.0]])))
    assert doc.normalize([[[10.0, 1.0], [30.0, 3.0], [0.0, 0.0]]], [[1.0, 1.0, 0.0]]).numpy().tolist() == [
        [[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]
    ]
    with pytest.raises(ValueError, match="features, not 3"):
        scaling.adapt((sets[..., :2], mask))


def vector_model(normalize_sets=True, decoder="dspn"):
    encoder = keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(LATENT)])
    if decoder == "dspn":
        dec = DSPN(FSEncoder(dim=16, latent=LATENT, n_pieces=4), N, C, iters=3, lr=5.0)
    else:
        dec = MLPDecoder(N, C, 16)
    model = VectorToSet(encoder, dec, normalize_sets=normalize_sets)
    return model.build_on_zeros((FEATURES,))


def pairs_of(rng, count, scale):
    inputs = rng.normal(size=(count, FEATURES)).astype(np.float32)
    sets, mask = padded_sets(rng, count, scale=scale, offset=5.0 * scale, junk=0.0)
    return inputs, sets, mask


def test_without_normalisation_nothing_is_added():
    plain, scaled = vector_model(False), vector_model(True)
    assert not plain.normalizes_sets and plain.set_scaling is None and "normalize_sets" not in plain.get_config()
    assert not any("set_scaling" in v.path for v in plain.variables)
    assert len(scaled.variables) == len(plain.variables) + 2
    assert {v.path for v in scaled.variables if "set_scaling" in v.path} == {"set_scaling/mean", "set_scaling/std"}
    assert len(scaled.trainable_variables) == len(plain.trainable_variables)
    with pytest.raises(ValueError, match=r"normalize_sets=True .*--normalize_sets"):
        plain.adapt({"set": np.zeros([1, N, C]), "mask": np.ones([1, N])})
    model = build_model("autoencoder", set_size=N, set_channels=C, dim=8, latent=8, input_shape=(N, C))
    assert model.set_scaling is None and "normalize_sets" not in model.get_config()


def test_a_normalised_model_is_scale_equivariant(rng):
    """The same weights adapted on data x 10 score the same losses and predict sets x 10 (call, predict, losses)."""
    inputs, sets, mask = pairs_of(rng, 24, 1.0)
    small, large = vector_model(), vector_model()
    large.set_weights(small.get_weights())
    small.adapt((inputs, {"set": sets, "mask": mask}))
    large.adapt(tf.data.Dataset.from_tensor_slices((inputs, {"set": sets * 10, "mask": mask})).batch(10))
    np.testing.assert_allclose(large.set_scaling.mean.numpy(), 10 * small.set_scaling.mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(large.set_scaling.std.numpy(), 10 * small.set_scaling.std.numpy(), rtol=1e-5)
    np.testing.assert_allclose(large(inputs)["sets"], 10 * small(inputs)["sets"].numpy(), rtol=1e-4, atol=1e-4)
    settings = LossSettings(set_key="set", loss="hungarian", solver="scipy")
    _, small_losses = per_sample_losses(small, {"inputs": inputs, "set": sets, "mask": mask}, settings, training=False)
    _, large_losses = per_sample_losses(
        large, {"inputs": inputs, "set": sets * 10, "mask": mask}, settings, training=False
    )
    np.testing.assert_allclose(large_losses["loss"], small_losses["loss"], rtol=1e-4)
    # The losses compare the normalised outputs with the normalised target.
    out = large(inputs, normalized=True)
    target = large.to_model_units(sets * 10, mask)
    expected = losses.hungarian_loss(
        out["sets"], out["masks"], target, mask, all_steps=True, reduction="none", solver="scipy"
    )
    np.testing.assert_allclose(large_losses["set_loss"], expected, rtol=1e-6)
    # Calling returns the data's units: exactly the normalised outputs, denormalised.
    np.testing.assert_array_equal(large(inputs)["sets"].numpy(), large.to_original_units(out["sets"]).numpy())
    predicted = large.predict(inputs, verbose=0)
    np.testing.assert_allclose(predicted["set"], large.to_original_units(out["sets"][-1]), rtol=1e-5, atol=1e-4)


def test_fit_on_sets_x10_predicts_in_their_units(rng, tmp_path):
    inputs, sets, mask = pairs_of(rng, 256, 10.0)
    data = tf.data.Dataset.from_tensor_slices((inputs, {"set": sets, "mask": mask})).batch(32)
    model = vector_model()
    stats = model.adapt(data)
    assert stats.sets == 256 and stats.elements == int(mask.sum())
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(data, epochs=4, verbose=0).history["loss"]
    assert history[-1] < history[0]
    predicted = model.predict(inputs, verbose=0)["set"]
    # The predictions lie where the targets do (means about 50, -50, 150; stds 10, 20, 5), not near 0.
    valid, target = predicted[mask > 0], sets[mask > 0]
    assert np.all(np.abs(valid.mean(axis=0) - target.mean(axis=0)) < target.std(axis=0))
    assert np.all(np.abs(valid.mean(axis=0)) > 25)

    # .keras keeps the statistics (and the config flag).
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_config()["normalize_sets"] is True
    np.testing.assert_array_equal(loaded.set_scaling.mean.numpy(), model.set_scaling.mean.numpy())
    np.testing.assert_array_equal(loaded.set_scaling.std.numpy(), model.set_scaling.std.numpy())
    np.testing.assert_allclose(loaded(inputs[:8])["sets"], model(inputs[:8])["sets"], rtol=1e-5, atol=1e-4)

    # So does a tf.train.Checkpoint, restored into a fresh model.
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    fresh = vector_model()
    tf.train.Checkpoint(model=fresh).read(prefix).expect_partial().assert_existing_objects_matched()
    np.testing.assert_array_equal(fresh.set_scaling.std.numpy(), model.set_scaling.std.numpy())

    # Every exported signature returns sets in the data's units.
    loaded = tf.saved_model.load(export_model(model, str(tmp_path / "export"), all_steps=True, save_keras=False))
    expected = model(inputs[:8], iters=5)
    served = loaded.signatures["serving_default"](inputs=tf.constant(inputs[:8]), iters=tf.constant(5))
    np.testing.assert_allclose(served["set"], expected["sets"][-1], rtol=1e-4, atol=1e-3)
    decoded = loaded.signatures["decode"](z=expected["z"], iters=tf.constant(5))
    np.testing.assert_allclose(decoded["set"], expected["sets"][-1], rtol=1e-4, atol=1e-3)
    every = loaded.signatures["serving_all_steps"](inputs=tf.constant(inputs[:8]), iters=tf.constant(5))
    np.testing.assert_allclose(every["sets"], np.transpose(expected["sets"], [1, 0, 2, 3]), rtol=1e-4, atol=1e-3)


def test_autoencoder_normalises_its_input_and_exports(rng, tmp_path):
    sets, mask = padded_sets(rng, 16, scale=50.0, offset=300.0, junk=0.0)
    model = SetAutoEncoder(DSPN(FSEncoder(dim=8, latent=8), N, C, iters=2), normalize_sets=True).build_on_zeros()
    model.adapt({"set": sets, "mask": mask})
    normalized = model.to_model_units(sets, mask)
    np.testing.assert_allclose(model.embed(sets, mask), model.encoder(normalized, mask), rtol=1e-6)
    loaded = tf.saved_model.load(export_model(model, str(tmp_path / "export"), save_keras=False))
    z = loaded.signatures["encode"](set=tf.constant(sets), mask=tf.constant(mask))["z"]
    np.testing.assert_allclose(z, model.encoder(normalized, mask), rtol=1e-5, atol=1e-5)
    served = loaded.signatures["serving_default"](set=tf.constant(sets), mask=tf.constant(mask), iters=tf.constant(2))
    np.testing.assert_allclose(served["set"], model({"set": sets, "mask": mask})["sets"][-1], rtol=1e-4, atol=1e-2)
    assert np.abs(served["set"].numpy()).mean() > 100  # In the data's units (about 300), not normalised ones.
    # dspn_tf.evaluation (train/'s AP and Chamfer) compares in the data's units too.
    batches = tf.data.Dataset.from_tensor_slices({"set": sets, "mask": mask}).batch(8)
    found = evaluation.collect_predictions(model, batches, set_key="set", iters_list=[2])
    np.testing.assert_allclose(found["pred"][2], model({"set": sets, "mask": mask})["sets"][-1], rtol=1e-4, atol=1e-2)
    np.testing.assert_array_equal(found["target"], sets)


def test_a_baseline_decoder_normalises_too(rng):
    inputs, sets, mask = pairs_of(rng, 32, 10.0)
    model = vector_model(decoder="mlp")
    model.adapt((inputs, {"set": sets, "mask": mask}))
    out = model(inputs, normalized=True)
    np.testing.assert_array_equal(model(inputs)["sets"], model.to_original_units(out["sets"]))


def test_spread_warning_names_the_features_outside_the_range():
    stats = feature_statistics((np.array([[[0.0, 1.0, 5.0, 2.0], [100.0, 1.01, 5.0, 2.2]]]), np.ones([1, 2])))
    warning = train_scaling.spread_warning(stats)
    assert "feature(s) 0 (50), 1 (0.005)" in warning and "--normalize_sets" in warning
    assert " 2 (" not in warning and " 3 (" not in warning  # Constant (2) and in range (3, std 0.1).
    assert train_scaling.spread_warning(stats, (1e-3, 100)) is None


def scaling_in_checkpoint(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    names = sorted(k for k in reader.get_variable_to_shape_map() if "set_scaling" in k)
    return {name: reader.get_tensor(name) for name in names}


def test_train_normalize_sets_adapts_a_fresh_run_only(tmp_path, capsys, monkeypatch):
    config = os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_dspn.cfg")
    model_dir = str(tmp_path / "run")
    common = [f"--flagfile={config}", *TINY, f"--cache_dir={tmp_path / 'cache'}", f"--model_dir={model_dir}"]
    run([*common, "--normalize_sets", "--train_steps=2", "--noevaluate_at_end", "--image_every=0"])
    out = capsys.readouterr().out
    assert "Set normalisation (--normalize_sets): mean and std of each feature over" in out
    assert "of the first 24 training examples" in out
    saved = scaling_in_checkpoint(model_dir)
    assert len(saved) == 2 and all(value.shape == (18,) for value in saved.values())
    assert not any(
        np.array_equal(value, np.zeros(18)) or np.array_equal(value, np.ones(18)) for value in saved.values()
    )

    def no_adapt(self, *args, **kwargs):
        raise AssertionError("a resumed run adapted again")

    monkeypatch.setattr(SetModel, "adapt", no_adapt)
    run([*common, "--normalize_sets", "--train_steps=3"])
    out = capsys.readouterr().out
    assert "Resumed from" in out and "mean and std restored from the checkpoint" in out
    for name, value in scaling_in_checkpoint(model_dir).items():
        np.testing.assert_array_equal(value, saved[name])
    results = __import__("json").load(open(os.path.join(model_dir, "eval_results.json")))["results"]
    assert all(np.isfinite(row["ap_inf"]) for row in results.values())
    # Evaluating it without the flag would ignore the statistics: refused, naming the flag.
    with pytest.raises(checkpoints.CheckpointMismatchError, match="--normalize_sets"):
        run(common, entry=evaluate_main)


def test_train_without_the_flag_does_not_warn_on_the_quick_start_data(tmp_path, capsys):
    config = os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_dspn.cfg")
    model_dir = str(tmp_path / "run")
    run(
        [
            f"--flagfile={config}",
            *TINY,
            f"--cache_dir={tmp_path / 'cache'}",
            f"--model_dir={model_dir}",
            "--train_steps=1",
            "--noevaluate_at_end",
            "--image_every=0",
        ]
    )
    out = capsys.readouterr().out
    assert "Set normalisation" not in out and "feature scale is far from" not in out
    assert scaling_in_checkpoint(model_dir) == {}
