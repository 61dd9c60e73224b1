"""The DSPN inner-loop options through the entry points: flagfile → model config, the
inner-step schedule, the learning-rate drops and the implicit-gradient loss rule."""

import json
import os

import keras
import pytest
from absl import flags

from tests.test_train import ROOT, TINY, run, scalars, write_idx_mnist
from train import config as config_lib

FLAGS = flags.FLAGS


def parsed(argv):
    FLAGS.unparse_flags()
    FLAGS(["train"] + argv)


@pytest.fixture(autouse=True)
def _clean_flags():
    yield
    FLAGS.unparse_flags()


def test_idspn_flagfile_reaches_the_model_config():
    parsed(
        [
            f"--flagfile={os.path.join(ROOT, 'configs/clevr_state_idspn.cfg')}",
            "--dim=16",
            "--latent=16",
            "--image_size=64",
            "--seed=5",
        ]
    )
    model = config_lib.build_model(config_lib.from_flags())
    config = model.decoder.get_config()
    expected = {
        "gradient": "implicit",
        "momentum": 0.9,
        "nesterov": True,
        "clip": 10.0,
        "inner_loss": "mse",
        "starting_set": "random",
        "start_regularizer": 0.0,
        "tolerance": None,
        "seed": 5,
        "lr": 1.0,
        "iters": 40,
    }
    assert {key: config[key] for key in expected} == expected
    assert type(model.image_encoder).__name__ == "ResNet18Encoder"
    run_config = config_lib.from_flags()
    assert config_lib.parse_iters_schedule(
        run_config.optimization.iters_schedule, 1000, run_config.model.inner.iters
    ) == [(0, 20), (500, 40)]
    rate = config_lib.learning_rate(run_config, 1000)
    assert float(rate(899)) == pytest.approx(1e-3) and float(rate(901)) == pytest.approx(1e-4)


def test_each_inner_flag_reaches_the_model():
    parsed(
        [
            "--dataset=set_mnist",
            "--dim=8",
            "--latent=8",
            "--inner_gradient=implicit",
            "--inner_momentum=0.5",
            "--noinner_nesterov",
            "--inner_clip=3",
            "--inner_loss=mse",
            "--starting_set=random",
            "--start_regularizer=0.25",
            "--inner_tolerance=0.001",
            "--inner_lr=2",
        ]
    )
    config = config_lib.build_model(config_lib.from_flags()).decoder.get_config()
    assert (
        config["gradient"],
        config["momentum"],
        config["nesterov"],
        config["clip"],
        config["inner_loss"],
        config["starting_set"],
        config["start_regularizer"],
        config["tolerance"],
        config["lr"],
    ) == ("implicit", 0.5, False, 3.0, "mse", "random", 0.25, 0.001, 2.0)
    # Implicit gradients score the final step by default, even for Chamfer.
    assert not config_lib.loss_settings(config_lib.from_flags()).all_steps


def test_iters_schedule_parsing():
    assert config_lib.parse_iters_schedule([], 100, 10) == [(0, 10)]
    schedule = config_lib.parse_iters_schedule(["0:20", "50%:40", "90:5"], 100, 10)
    assert schedule == [(0, 20), (50, 40), (90, 5)]
    assert [config_lib.iters_at(schedule, s) for s in (0, 49, 50, 89, 90, 99)] == [20, 20, 40, 40, 5, 5]
    for bad in ["20", "x:20", "10:-1", "-5:3", "150%:3", "10:2.5", ":"]:
        with pytest.raises(ValueError, match="--iters_schedule"):
            config_lib.parse_iters_schedule([bad], 100, 10)


def test_bad_learning_rate_drops():
    parsed(["--learning_rate_drops=90%,abc"])
    with pytest.raises(ValueError, match="--learning_rate_drops"):
        config_lib.learning_rate(config_lib.from_flags(), 100)


def test_implicit_training_with_a_schedule_through_the_entry_point(tmp_path, capsys):
    data = write_idx_mnist(str(tmp_path / "mnist"), 24)
    model_dir = str(tmp_path / "run")
    run(
        [
            f"--flagfile={os.path.join(ROOT, 'configs/set_mnist_dspn.cfg')}",
            *TINY,
            f"--data_source={data}",
            f"--model_dir={model_dir}",
            "--train_steps=4",
            "--inner_gradient=implicit",
            "--inner_momentum=0.9",
            "--inner_clip=1",
            "--iters_schedule=0:1,50%:3",
            "--eval_iters=2,4",
            "--checkpoint_every=4",
            "--noloss_all_steps",
        ]
    )
    # One trace per step count of the schedule.
    assert "2 trace(s) of the train step" in capsys.readouterr().out
    acc = scalars(model_dir, "train")
    steps_of_tag = {tag: [e.step for e in acc.Tensors(tag)] for tag in ("inner/loss_step_0", "inner/loss_step_2")}
    assert steps_of_tag["inner/loss_step_0"] == [1, 2, 3, 4]
    assert steps_of_tag["inner/loss_step_2"] == [3, 4]  # Only steps with 3 inner steps have a step 2.
    results = json.load(open(os.path.join(model_dir, "eval_results.json")))["results"]
    assert set(results) == {"2", "4"}
    assert all(row["chamfer"] >= 0 for row in results.values())


def test_implicit_refuses_a_loss_over_all_steps(tmp_path):
    data = write_idx_mnist(str(tmp_path / "mnist"), 24)
    with pytest.raises(ValueError, match="final step only"):
        run(
            [
                f"--flagfile={os.path.join(ROOT, 'configs/set_mnist_dspn.cfg')}",
                *TINY,
                f"--data_source={data}",
                f"--model_dir={tmp_path / 'run'}",
                "--train_steps=1",
                "--inner_gradient=implicit",
                "--loss_all_steps",
            ]
        )
    keras.mixed_precision.set_global_policy("float32")


def test_idspn_cpu_config_trains_through_the_entry_point(tmp_path):
    config = os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_idspn.cfg")
    model_dir = str(tmp_path / "run")
    run(
        [
            f"--flagfile={config}",
            *TINY,
            f"--cache_dir={tmp_path / 'cache'}",
            f"--model_dir={model_dir}",
            "--train_steps=2",
        ]
    )
    results = json.load(open(os.path.join(model_dir, "eval_results.json")))
    assert results["step"] == 2 and set(results["results"]) == {"1", "2"}
    flags_text = open(os.path.join(model_dir, "flags.txt")).read()
    for flag in ("--inner_gradient=implicit", "--inner_momentum=0.9", "--inner_clip=0.3", "--noloss_all_steps"):
        assert flag in flags_text, flag
