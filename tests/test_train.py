"""The training entry point, run in-process through its absl flags on tiny data."""

import glob
import gzip
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from entry_points import run
from tensorboard.backend.event_processing import event_accumulator

from dspn_tf.training import Trainer
from train import evaluate as evaluate_main
from train import train as train_main

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny model and data: every config family runs a few steps in seconds.
TINY = [
    "--image_size=32",
    "--dim=16",
    "--latent=16",
    "--decoder_dim=16",
    "--iters=2",
    "--batch_size=8",
    "--eval_iters=1,2",
    "--generated_train=24",
    "--generated_val=8",
    "--log_every=1",
    "--noprogress",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def write_idx_mnist(folder, count, seed=0):
    """A tiny MNIST in the standard IDX layout (train and t10k, gzipped)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for prefix in ("train", "t10k"):
        images = np.zeros((count, 28, 28), np.uint8)
        for i in range(count):
            r, c = rng.integers(4, 20, size=2)
            images[i, r : r + 6, c : c + 4] = 200  # 24 pixels: a small blob per image.
        with gzip.open(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
            f.write(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        with gzip.open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(struct.pack(">II", 2049, count) + np.zeros(count, np.uint8).tobytes())
    return folder


def scalars(model_dir, sub):
    files = glob.glob(os.path.join(model_dir, sub, "events.out.tfevents.*"))
    acc = event_accumulator.EventAccumulator(
        files[0] if len(files) == 1 else os.path.join(model_dir, sub),
        size_guidance={event_accumulator.TENSORS: 0, event_accumulator.IMAGES: 0},
    )
    acc.Reload()
    return acc


def loss_by_step(model_dir):
    acc = scalars(model_dir, "train")
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("train/loss")}


def test_clevr_state_dspn_trains_evaluates_and_logs(tmp_path, cache, capsys):
    model_dir = str(tmp_path / "run")
    run(
        [
            "--flagfile=" + os.path.join(ROOT, "configs/clevr_mini_state_dspn.cfg"),
            *TINY,
            f"--cache_dir={cache}",
            f"--model_dir={model_dir}",
            "--train_steps=3",
            "--checkpoint_every=2",
            "--image_every=2",
        ]
    )
    # The train step is traced once and reused by every step.
    assert "1 trace(s) of the train step" in capsys.readouterr().out
    results = json.load(open(os.path.join(model_dir, "eval_results.json")))
    assert results["step"] == 3
    assert set(results["results"]) == {"1", "2"}
    row = results["results"]["2"]
    assert set(row) == {"ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125", "num_examples"}
    assert row["num_examples"] == 8
    assert all(0.0 <= row[k] <= 1.0 for k in row if k.startswith("ap_"))
    train_tags = scalars(model_dir, "train").Tags()
    for tag in (
        "train/loss",
        "train/set_loss",
        "train/repr_loss",
        "train/learning_rate",
        "inner/loss_step_0",
        "inner/loss_step_1",
        "inner/grad_norm_step_1",
        "progression/states",
        "progression/state_tables",
    ):
        assert tag in train_tags["tensors"], tag
    eval_tags = scalars(model_dir, "eval").Tags()["tensors"]
    assert "eval/ap_0.5/iters_2" in eval_tags and "eval/ap_inf/iters_1" in eval_tags
    # Checkpoints every 2 steps and at the end.
    assert os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-2.index"))
    assert os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-3.index"))
    # The evaluation entry point restores the final checkpoint and reproduces
    # the numbers of the in-memory model at the end of training.
    run(
        [
            "--flagfile=" + os.path.join(ROOT, "configs/clevr_mini_state_dspn.cfg"),
            *TINY,
            f"--cache_dir={cache}",
            f"--model_dir={model_dir}",
        ],
        entry=evaluate_main,
    )
    restored = json.load(open(os.path.join(model_dir, "eval_results_3.json")))
    assert restored["step"] == 3 and restored["checkpoint"].endswith("ckpt-3")
    assert restored["results"] == results["results"]


@pytest.mark.parametrize("config", ["clevr_mini_state_mlp", "clevr_mini_boxes_dspn"])
def test_clevr_config_families_train(tmp_path, cache, config):
    model_dir = str(tmp_path / "run")
    run(
        [
            "--flagfile=" + os.path.join(ROOT, f"configs/{config}.cfg"),
            *TINY,
            f"--cache_dir={cache}",
            f"--model_dir={model_dir}",
            "--train_steps=2",
        ]
    )
    results = json.load(open(os.path.join(model_dir, "eval_results.json")))["results"]
    if "boxes" in config:
        assert set(results["2"]) >= {"ap_0.5", "ap_0.95"}
        assert "progression/boxes" in scalars(model_dir, "train").Tags()["tensors"]
    else:
        # A one-shot decoder is evaluated once, whatever the step counts.
        assert set(results) == {"1"}


@pytest.mark.parametrize("decoder", ["dspn", "mlp"])
def test_clevr_state_autoencoder_trains_evaluates_and_exports(tmp_path, capsys, monkeypatch, decoder):
    from train import export as export_main

    config = os.path.join(ROOT, f"configs/clevr_mini_state_autoencoder_{decoder}.cfg")
    model_dir, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    argv = [f"--flagfile={config}", *TINY, f"--cache_dir={cache}", f"--model_dir={model_dir}"]
    # The hints printed at the end name the flagfile of the command line.
    monkeypatch.setattr(sys, "argv", ["train", *argv])
    run([*argv, "--train_steps=3", "--image_every=2"])
    out = capsys.readouterr().out
    results = json.load(open(os.path.join(model_dir, "eval_results.json")))
    assert results["dataset"] == "clevr_state_autoencoder" and results["step"] == 3
    assert set(results["results"]) == ({"1", "2"} if decoder == "dspn" else {"1"})
    for row in results["results"].values():
        assert set(row) == {"ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125", "num_examples"}
        assert row["num_examples"] == 8
    assert f"tensorboard --logdir {model_dir}" in out
    assert f"python -m train.export --flagfile={config}" in out
    baseline = "MLP baseline with the same budget: python -m train.train --flagfile="
    assert (baseline + config.replace("_dspn.cfg", "_mlp.cfg") in out) == (decoder == "dspn")
    tags = scalars(model_dir, "train").Tags()["tensors"]
    assert "progression/states" in tags and "progression/state_tables" in tags
    # No image anywhere: the auto-encoder reads scene states only.
    assert os.listdir(cache) == ["clevr_states"]
    # Export the checkpoint and serve a state set through the SavedModel.
    run([*argv, "--noexport_keras"], entry=export_main)
    loaded = tf.saved_model.load(os.path.join(model_dir, "export", "1"))
    state = np.zeros([2, 10, 18], np.float32)
    state[:, :3, 3] = 1.0
    served = loaded.signatures["serving_default"](
        set=state,
        mask=(state[..., 3] > 0).astype(np.float32),
        **({"iters": tf.constant(2)} if decoder == "dspn" else {}),
    )
    assert served["set"].shape == (2, 10, 18) and served["mask"].shape == (2, 10)


@pytest.mark.parametrize("decoder", ["dspn", "mlp", "lstm"])
def test_set_mnist_families_train(tmp_path, decoder):
    data = write_idx_mnist(str(tmp_path / "mnist"), 16)
    model_dir = str(tmp_path / "run")
    run(
        [
            "--flagfile=" + os.path.join(ROOT, f"configs/set_mnist_{decoder}.cfg"),
            *TINY,
            f"--data_source={data}",
            f"--model_dir={model_dir}",
            "--train_steps=2",
            "--epochs=0",
        ]
    )
    results = json.load(open(os.path.join(model_dir, "eval_results.json")))["results"]
    assert all(np.isfinite(r["chamfer"]) and r["chamfer"] > 0 for r in results.values())
    if decoder == "dspn":
        assert "progression/sets" in scalars(model_dir, "train").Tags()["tensors"]


def test_resume_continues_exactly(tmp_path, cache):
    common = [
        "--flagfile=" + os.path.join(ROOT, "configs/clevr_mini_state_dspn.cfg"),
        *TINY,
        f"--cache_dir={cache}",
        "--deterministic",
        "--checkpoint_every=2",
        "--noevaluate_at_end",
        "--image_every=0",
    ]
    straight = str(tmp_path / "straight")
    run([*common, f"--model_dir={straight}", "--train_steps=4"])
    resumed = str(tmp_path / "resumed")
    run([*common, f"--model_dir={resumed}", "--train_steps=2"])  # The "killed" run: stops after a checkpoint.
    run([*common, f"--model_dir={resumed}", "--train_steps=4"])
    a, b = loss_by_step(straight), loss_by_step(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # Steps 3 and 4 of the resumed run start from the restored weights,
    # optimizer state and input position: identical to the straight run.
    for step in (3, 4):
        assert a[step] == b[step], (step, a[step], b[step])


def _nan_loss_at_call(monkeypatch, bad_call):
    """Makes the Trainer's train step report a NaN loss on its `bad_call`-th call (after its update)."""
    original_init = Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        step, calls = self.train_step, []

        def train_step(batch, iters=None):
            values = step(batch, iters=iters)
            calls.append(None)
            if len(calls) == bad_call:
                values = {**values, "train/loss": tf.constant(float("nan"))}
            return values

        self.train_step = train_step

    monkeypatch.setattr(Trainer, "__init__", init)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, cache, monkeypatch):
    model_dir = str(tmp_path / "run")
    argv = [
        "--flagfile=" + os.path.join(ROOT, "configs/clevr_mini_state_mlp.cfg"),
        *TINY,
        f"--cache_dir={cache}",
        f"--model_dir={model_dir}",
        "--train_steps=6",
        "--checkpoint_every=2",
    ]
    _nan_loss_at_call(monkeypatch, 5)
    with pytest.raises(train_main.NonFiniteLossError, match="step 5.*ckpt-4"):
        run(argv)
    ckpts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index")))
    assert ckpts == ["ckpt-2.index", "ckpt-4.index"]
    assert not os.path.exists(os.path.join(model_dir, "eval_results.json"))


def test_all_configs_parse():
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg"))):
        FLAGS.unparse_flags()
        try:
            FLAGS(["train", f"--flagfile={path}"])
        finally:
            FLAGS.unparse_flags()


MIRRORED_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from dspn_tf.models import build_model
    from dspn_tf.training import LossSettings, Trainer
    from dspn_tf.training import split_for_replicas

    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(size=(8, 16, 16, 3)).astype("float32"),
             "state": rng.uniform(size=(8, 4, 18)).astype("float32"),
             "mask": (rng.uniform(size=(8, 4)) > 0.3).astype("float32")}
    settings = LossSettings(set_key="state", loss="hungarian", all_steps=False, repr_lambda=0.1)

    def one_step(strategy):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = build_model("image", decoder="dspn", set_size=4, set_channels=18, dim=8, latent=8,
                                image_encoder="conv", iters=2, input_shape=(16, 16, 3))
            # SGD: the update is proportional to the summed gradient (Adam's
            # normalisation would blow float round-off in tiny gradients up).
            opt = keras.optimizers.SGD(0.1)
            opt.build(model.trainable_variables)
        trainer = Trainer(model, opt, settings, global_batch_size=8, strategy=strategy)
        # The entry point's own input path: a plain iterator split per replica.
        data = next(iter(tf.data.Dataset.from_tensors(batch)))
        out = trainer.train_step(split_for_replicas(strategy, data, 8))
        return float(out["train/loss"]), [v.numpy() for v in model.trainable_variables]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    loss_1, weights_1 = one_step(tf.distribute.get_strategy())
    loss_2, weights_2 = one_step(mirrored)
    print("losses", loss_1, loss_2)
    assert abs(loss_1 - loss_2) < 1e-6 * max(1.0, abs(loss_1)), (loss_1, loss_2)
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(weights_1, weights_2))
    print("max weight difference", worst)
    assert worst < 1e-6, worst
    print("OK")
""")


def test_mirrored_two_devices_equals_one_device():
    # Covers the loss scaling across replicas, the summed gradients and the
    # image encoder's synchronised BatchNorm (per-replica batch statistics
    # would make the two runs differ).
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_commands_printed_at_the_end_repeat_the_users_flags():
    """The baseline and export hints carry the flags given after the flagfile, not the run's own
    --model_dir (the baseline would overwrite the DSPN run), so they train on the same data
    and budget and rebuild the same model."""
    from train import config as config_lib

    flagfile = os.path.join(ROOT, "configs/set_mnist_dspn.cfg")
    config = config_lib.load(flagfile, "--data_source=/data/my mnist", "--epochs=2", "--model_dir=/tmp/dspn")
    assert config.overrides == ("--data_source=/data/my mnist", "--epochs=2", "--model_dir=/tmp/dspn")
    baseline, tensorboard, export = train_main.next_steps(config).split("\n")
    mlp = flagfile.replace("_dspn.cfg", "_mlp.cfg")
    assert baseline.endswith(f"--flagfile={mlp} '--data_source=/data/my mnist' --epochs=2")
    assert "Chamfer" in tensorboard and "AP" not in tensorboard
    assert export.endswith(f"--flagfile={flagfile} '--data_source=/data/my mnist' --epochs=2 --model_dir=/tmp/dspn")
    # Flags written with a space before their value keep it; --model_dir goes in either form.
    config = config_lib.load(flagfile, "--model_dir", "/tmp/dspn", "--epochs", "2", "-model_dir=/tmp/other")
    baseline, _, export = train_main.next_steps(config).split("\n")
    assert baseline.endswith(f"--flagfile={mlp} --epochs 2")
    assert export.endswith(f"--flagfile={flagfile} --epochs 2 --model_dir=/tmp/other")
    # Without overrides the commands are the flagfile's own.
    config = config_lib.load(flagfile)
    assert config.overrides == () and train_main.next_steps(config).split("\n")[0].endswith(f"--flagfile={mlp}")


def test_float64_run_trains_checkpoints_and_evaluates_in_float64(tmp_path, capsys):
    """--mixed_precision=float64: float64 variables in the checkpoint, and train.evaluate restores them (same score)."""
    import keras

    data = write_idx_mnist(str(tmp_path / "mnist"), 16)
    model_dir = str(tmp_path / "run")
    common = [
        "--flagfile=" + os.path.join(ROOT, "configs/set_mnist_dspn.cfg"),
        *TINY,
        f"--data_source={data}",
        f"--model_dir={model_dir}",
        "--mixed_precision=float64",
    ]
    try:
        run([*common, "--train_steps=2", "--epochs=0"])
        keras.mixed_precision.set_global_policy("float32")  # train.train leaves the run's policy set.
        reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
        dtypes = {name: dtype for name, dtype in reader.get_variable_to_dtype_map().items() if "model" in name}
        assert dtypes and set(dtypes.values()) == {tf.float64}, dtypes
        trained = json.load(open(os.path.join(model_dir, "eval_results.json")))["results"]
        run(common, entry=evaluate_main)  # Under the float32 global policy.
        evaluated = json.load(open(sorted(glob.glob(os.path.join(model_dir, "eval_results_*.json")))[-1]))["results"]
        for iters, row in trained.items():
            np.testing.assert_allclose(evaluated[iters]["chamfer"], row["chamfer"], rtol=1e-12)
    finally:
        keras.mixed_precision.set_global_policy("float32")
