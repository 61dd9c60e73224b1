"""Reliability drills of the training entry point: SIGTERM, damaged checkpoints, a full disk (issue 13)."""

import errno
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder, export
from dspn_tf.models import SetAutoEncoder
from tests.test_train import ROOT, TINY, loss_by_step, run
from train import checkpoints
from train import evaluate as evaluate_main
from train import export as export_main
from train import loop as loop_lib

CONFIG = os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_mlp.cfg")


def _argv(model_dir, cache, *extra):
    return [
        f"--flagfile={CONFIG}",
        *TINY,
        f"--cache_dir={cache}",
        f"--model_dir={model_dir}",
        "--image_every=0",
        "--noevaluate_at_end",
        *extra,
    ]


def _checkpoint_steps(model_dir):
    names = glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index"))
    return sorted(int(re.search(r"ckpt-(\d+)\.index$", n).group(1)) for n in names)


def _saved_step(prefix):
    return int(tf.train.load_checkpoint(prefix).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_sigterm_checkpoints_the_last_completed_step_and_resumes(tmp_path, capsys):
    model_dir, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    # --progress prints "<step>/<total>" as the steps complete; no periodic checkpoints.
    argv = _argv(model_dir, cache, "--train_steps=100000", "--checkpoint_every=100000")
    argv = [a for a in argv if a != "--noprogress"] + ["--progress"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "train.train", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, seen = [], threading.Event()

    def read():
        for line in proc.stdout:
            output.append(line)
            match = re.search(r"(\d+)/100000", line)
            if match and int(match.group(1)) >= 3:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(timeout=180), "".join(output)[-3000:]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(output)
    assert code == loop_lib.PREEMPTED_EXIT_CODE == 143, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    steps = _checkpoint_steps(model_dir)
    assert len(steps) == 1, steps
    stopped = steps[0]
    assert f"stopped after step {stopped} of 100000" in text
    # The last step logged (every completed step logs its loss) is the checkpoint's step.
    logged = loss_by_step(model_dir)
    assert max(logged) == stopped >= 3 and sorted(logged) == list(range(1, stopped + 1))
    assert _saved_step(os.path.join(model_dir, "checkpoints", f"ckpt-{stopped}")) == stopped
    # Restarting resumes at that step and finishes.
    capsys.readouterr()
    run(_argv(model_dir, cache, f"--train_steps={stopped + 3}"))
    out = capsys.readouterr().out
    assert f"ckpt-{stopped} at step {stopped}." in out
    assert "Trained 3 steps" in out
    assert _checkpoint_steps(model_dir)[-1] == stopped + 3


DSPN_CONFIG = os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_dspn.cfg")


def _dspn_argv(model_dir, cache, *extra):
    return [a.replace(CONFIG, DSPN_CONFIG) for a in _argv(model_dir, cache, *extra)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DSPN run directory with ckpt-2 and ckpt-4 (copy it before damaging it)."""
    root = tmp_path_factory.mktemp("trained")
    model_dir, cache = str(root / "run"), str(root / "cache")
    run(_dspn_argv(model_dir, cache, "--train_steps=4", "--checkpoint_every=2", "--deterministic"))
    assert _checkpoint_steps(model_dir) == [2, 4]
    return model_dir, cache


def _copy(trained, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(trained[0], model_dir)
    return model_dir, trained[1]


def _damage(prefix, how):
    """Truncates or corrupts a file of checkpoint `prefix`; returns the damaged file's path."""
    data = glob.glob(prefix + ".data-*")[0]
    if how == "truncate_index":
        target, size = prefix + ".index", os.path.getsize(prefix + ".index")
        with open(target, "r+b") as f:
            f.truncate(size // 2)
        return target
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        if how == "truncate_data":
            f.truncate(size // 2)
        else:  # Same size, flipped bytes in the middle: only the checksums can tell.
            f.seek(size // 2)
            chunk = f.read(64)
            f.seek(size // 2)
            f.write(bytes(b ^ 0xFF for b in chunk))
    return data


@pytest.mark.parametrize("how", ["truncate_data", "corrupt_data", "truncate_index"])
def test_resume_falls_back_to_the_newest_readable_checkpoint(trained, tmp_path, capsys, how):
    model_dir, cache = _copy(trained, tmp_path)
    bad_file = _damage(os.path.join(model_dir, "checkpoints", "ckpt-4"), how)
    capsys.readouterr()
    run(_dspn_argv(model_dir, cache, "--train_steps=5", "--checkpoint_every=2", "--deterministic"))
    out = capsys.readouterr().out
    assert f"Skipping unreadable checkpoint {os.path.join(model_dir, 'checkpoints', 'ckpt-4')}" in out
    assert bad_file in out  # The message names the damaged file itself.
    assert "ckpt-2 at step 2." in out and "Trained 3 steps" in out
    assert _saved_step(os.path.join(model_dir, "checkpoints", "ckpt-5")) == 5


def test_every_checkpoint_unreadable_is_an_error(trained, tmp_path):
    model_dir, cache = _copy(trained, tmp_path)
    for step in (2, 4):
        _damage(os.path.join(model_dir, "checkpoints", f"ckpt-{step}"), "truncate_data")
    with pytest.raises(checkpoints.CheckpointUnreadableError, match="Every checkpoint in .*ckpt-4.*ckpt-2"):
        run(_dspn_argv(model_dir, cache, "--train_steps=5"))


@pytest.mark.parametrize("entry", [evaluate_main, export_main], ids=["evaluate", "export"])
def test_explicit_unreadable_checkpoint_is_an_error_naming_it(trained, tmp_path, entry):
    model_dir, cache = _copy(trained, tmp_path)
    prefix = os.path.join(model_dir, "checkpoints", "ckpt-4")
    bad_file = _damage(prefix, "corrupt_data")
    with pytest.raises(checkpoints.CheckpointUnreadableError) as info:
        run(_dspn_argv(model_dir, cache, f"--checkpoint={prefix}", "--noexport_keras"), entry=entry)
    assert f"--checkpoint={prefix} is unreadable" in str(info.value) and bad_file in str(info.value)
    assert not os.path.exists(os.path.join(model_dir, "export"))
    # The undamaged older one still works explicitly.
    run(_dspn_argv(model_dir, cache, f"--checkpoint={prefix[:-1]}2", "--noexport_keras"), entry=entry)


@pytest.mark.parametrize("flags", [["--dim=24"], ["--inner_gradient=implicit", "--noloss_all_steps"]], ids=str)
def test_resume_with_another_configuration_names_the_run_directory(trained, tmp_path, flags):
    model_dir, cache = _copy(trained, tmp_path)
    with pytest.raises(checkpoints.CheckpointMismatchError) as info:
        run(_dspn_argv(model_dir, cache, "--train_steps=6", *flags))
    message = str(info.value)
    assert f"Cannot resume the run directory {model_dir}" in message and "ckpt-4" in message
    assert "fresh --model_dir" in message
    assert _checkpoint_steps(model_dir) == [2, 4]  # Nothing was overwritten.


def test_evaluate_with_another_configuration_is_a_clear_error(trained, tmp_path):
    model_dir, cache = _copy(trained, tmp_path)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="ckpt-4 does not fit the model built from these"):
        run(_dspn_argv(model_dir, cache, "--dim=24"), entry=evaluate_main)


@pytest.mark.parametrize("kind", ["oserror", "tf_error"])
def test_disk_full_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys, kind):
    model_dir, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    original = tf.train.Checkpoint._write
    calls = []

    def write(self, prefix, *args, **kwargs):
        calls.append(prefix)
        if len(calls) < 2:
            return original(self, prefix, *args, **kwargs)
        # Half a file in TF's temporary folder, as a real ENOSPC mid-write leaves it.
        os.makedirs(prefix + "_temp", exist_ok=True)
        with open(os.path.join(prefix + "_temp", "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
            f.write(b"\0" * 100)
        if kind == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", prefix)
        raise tf.errors.UnknownError(None, None, f"{prefix}_temp/part-00000-of-00001.data: No space left on device")

    monkeypatch.setattr(tf.train.Checkpoint, "_write", write)
    with pytest.raises(loop_lib.DiskFullError) as info:
        run(_argv(model_dir, cache, "--train_steps=6", "--checkpoint_every=2"))
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "No space left" in message and os.path.join(model_dir, "checkpoints") in message
    assert "step 4" in message and "ckpt-2 is kept" in message
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-2")
    monkeypatch.setattr(tf.train.Checkpoint, "_write", original)
    capsys.readouterr()
    run(_argv(model_dir, cache, "--train_steps=6", "--checkpoint_every=2"))
    assert "ckpt-2 at step 2." in capsys.readouterr().out
    assert _checkpoint_steps(model_dir) == [2, 4, 6]


def test_disk_full_export_keeps_the_previous_versions(tmp_path, monkeypatch):
    model = SetAutoEncoder(DSPN(FSEncoder(dim=8, latent=4), set_size=3, set_channels=2, iters=2))
    model({"set": tf.zeros([1, 3, 2]), "mask": tf.ones([1, 3])})
    base = str(tmp_path / "export")
    first = export.export_model(model, base, save_keras=False)
    original = tf.saved_model.save

    def save(obj, export_dir, *args, **kwargs):
        original(obj, export_dir, *args, **kwargs)
        with open(os.path.join(export_dir, "variables", "variables.data-00000-of-00001"), "r+b") as f:
            f.truncate(10)  # What a full disk leaves of the last file.
        raise OSError(errno.ENOSPC, "No space left on device", export_dir)

    monkeypatch.setattr(tf.saved_model, "save", save)
    with pytest.raises(export.DiskFullError) as info:
        export.export_model(model, base, save_keras=False)
    message = str(info.value)
    assert "no space left" in message and base in message and "version 2" in message and "[1]" in message
    assert sorted(os.listdir(base)) == ["1"]  # No version 2, no temporary directory left.
    loaded = tf.saved_model.load(first)
    assert loaded.signatures["serving_default"](set=tf.zeros([1, 3, 2]), mask=tf.ones([1, 3]), iters=tf.constant(2))[
        "set"
    ].shape == (1, 3, 2)
