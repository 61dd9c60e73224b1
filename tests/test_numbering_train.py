"""--dataset=numbering through train.train: its configs train, evaluate held-out sets and log both accuracies."""

import json
import os

import numpy as np
import pytest
from absl import flags
from entry_points import run

from train import config as config_lib

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--numbering_positions=6",
    "--numbering_classes=3",
    "--numbering_classes_per_set=2",
    "--numbering_train_sets=32",
    "--numbering_eval_sets=12",
    "--dim=16",
    "--latent=16",
    "--decoder_dim=16",
    "--iters=3",
    "--batch_size=8",
    "--train_steps=2",
    "--eval_iters=3",
    "--log_every=1",
    "--noprogress",
]


@pytest.mark.parametrize("family", ["idspn", "dspn", "deepsets"])
def test_each_numbering_config_trains_and_reports_both_accuracies(tmp_path, family, capsys):
    model_dir = str(tmp_path / family)
    run([f"--flagfile={ROOT}/configs/numbering_{family}.cfg", *TINY, f"--model_dir={model_dir}"])
    saved = json.load(open(os.path.join(model_dir, "eval_results.json")))
    assert saved["dataset"] == "numbering" and saved["step"] == 2
    row = saved["results"]["3"]
    assert row["num_examples"] == 12
    assert 0.0 <= row["set_accuracy"] <= row["element_accuracy"] <= 1.0 and np.isfinite(row["element_accuracy"])
    printed = capsys.readouterr().out
    assert "set_accuracy" in printed and "element_accuracy" in printed and "accuracy in %" in printed


def test_the_task_takes_its_sizes_from_the_flags():
    config = config_lib.load(f"{ROOT}/configs/numbering_idspn.cfg", *TINY)
    task = config_lib.task(config)
    assert (task.set_size, task.set_channels, task.input_shape(0)) == (6, 6, (6, 3))
    settings = config_lib.loss_settings(config)
    assert (settings.set_key, settings.loss, settings.all_steps, settings.repr_lambda) == (
        "numbers",
        "numbering",
        False,
        0,
    )


@pytest.mark.parametrize(
    "override, flag",
    [
        ("--numbering_positions=0", "--numbering_positions"),
        ("--numbering_eval_sets=0", "--numbering_eval_sets"),
        ("--numbering_classes_per_set=5", "--numbering_classes_per_set"),
    ],
)
def test_bad_numbering_sizes_are_refused_with_the_flag_name(override, flag):
    with pytest.raises(flags.IllegalFlagValueError, match=flag):
        config_lib.load(f"{ROOT}/configs/numbering_idspn.cfg", override)
