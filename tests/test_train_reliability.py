"""Reliability drills of the training entry point: SIGTERM, damaged checkpoints, a full disk (issue 13)."""

import glob
import os
import re
import signal
import subprocess
import sys
import threading

import tensorflow as tf

from tests.test_train import ROOT, TINY, loss_by_step, run
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
