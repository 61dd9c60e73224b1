"""Inner-loop flags are checked by `InnerLoopConfig.check` when parsed: refused with their name, before any data."""

import dataclasses
import os
import subprocess
import sys

import pytest
from absl import flags as absl_flags

from dspn_tf.inner.config import InnerLoopConfig
from train import config as config_lib
from train import flags as train_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_dspn.cfg")


@pytest.mark.parametrize("flag", ["--inner_lr=0", "--inner_tolerance=0"])
def test_a_value_dspn_refuses_stops_the_run_before_any_data(tmp_path, flag):
    cache, model_dir = tmp_path / "cache", tmp_path / "run"
    cache.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.train",
            f"--flagfile={CONFIG}",
            flag,
            f"--cache_dir={cache}",
            f"--model_dir={model_dir}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr[-3000:]
    assert f"flag {flag.split('=')[0]}=" in proc.stderr, proc.stderr[-3000:]
    assert os.listdir(cache) == []  # No scene generated, no image cached.
    assert not model_dir.exists()  # Not even flags.txt.


@pytest.mark.parametrize(
    "override, field",
    [
        ("--inner_lr=0", "lr"),
        ("--inner_lr=nan", "lr"),
        ("--inner_tolerance=0", "tolerance"),
        ("--inner_momentum=1", "momentum"),
        ("--inner_clip=0", "clip"),
        ("--start_regularizer=-1", "start_regularizer"),
        ("--iters=-1", "iters"),
    ],
)
def test_each_inner_flag_is_refused_by_the_inner_loop_rule(override, field):
    with pytest.raises(absl_flags.IllegalFlagValueError) as info:
        config_lib.load(CONFIG, override)
    message = str(info.value)
    assert message.startswith(f"flag {override.split('=')[0]}="), message
    assert f"`{field}`" in message, message


def test_the_flags_accept_what_the_inner_loop_accepts():
    config = config_lib.load(
        CONFIG, "--inner_lr=0.5", "--inner_tolerance=1e-3", "--starting_set=mlp", "--inner_clip=10", "--iters=0"
    )
    inner = config.model.inner
    assert (inner.lr, inner.tolerance, inner.starting_set, inner.clip) == (0.5, 1e-3, "mlp", 10.0)
    assert inner.iters == 0  # As DSPN(iters=0): training moves the starting set alone.


def test_every_inner_loop_field_has_its_flag():
    assert sorted(train_flags.INNER_LOOP_FLAGS.values()) == sorted(f.name for f in dataclasses.fields(InnerLoopConfig))
