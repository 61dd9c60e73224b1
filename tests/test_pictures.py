"""train.pictures: the PNG of a trained run's progression, one row per held-out example."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.test_train import ROOT, TINY, run, write_idx_mnist
from train import pictures as pictures_main


@pytest.mark.parametrize("config", ["clevr_mini_state_autoencoder_dspn", "set_mnist_dspn", "clevr_mini_boxes_dspn"])
def test_pictures_of_a_trained_run(tmp_path, config):
    model_dir, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    argv = [
        f"--flagfile={os.path.join(ROOT, 'configs', config + '.cfg')}",
        *TINY,
        f"--cache_dir={cache}",
        f"--model_dir={model_dir}",
    ]
    if config.startswith("set_mnist"):
        argv.append(f"--data_source={write_idx_mnist(str(tmp_path / 'mnist'), 24)}")
    run([*argv, "--train_steps=2", "--noevaluate_at_end"])
    output = str(tmp_path / "pictures" / "p.png")
    run([*argv, f"--output={output}", "--picture_examples=2"], entry=pictures_main)
    picture = tf.io.decode_png(tf.io.read_file(output)).numpy()
    # Two rows, each with the start, the 2 inner steps of --eval_iters=1,2 and the truth.
    row_heights = {"clevr_mini_state_autoencoder_dspn": 160, "set_mnist_dspn": 128}
    if config in row_heights:
        assert picture.shape[0] == 2 * row_heights[config] + 4
        assert picture.shape[1] > 4 * row_heights[config]
    assert picture.shape[2] == 3 and np.ptp(picture) > 0


def test_pictures_with_a_baseline_panel_before_the_truth(tmp_path):
    """The paper's Figure 1: DSPN's steps, then the MLP baseline's prediction, then the target."""
    mnist = write_idx_mnist(str(tmp_path / "mnist"), 24)
    dirs = {}
    for decoder in ("dspn", "mlp"):
        dirs[decoder] = str(tmp_path / decoder)
        argv = [f"--flagfile={os.path.join(ROOT, 'configs', f'set_mnist_{decoder}.cfg')}", *TINY]
        run([*argv, f"--data_source={mnist}", f"--model_dir={dirs[decoder]}", "--train_steps=2", "--noevaluate_at_end"])
    argv = [
        f"--flagfile={os.path.join(ROOT, 'configs', 'set_mnist_dspn.cfg')}",
        *TINY,
        f"--data_source={mnist}",
        f"--model_dir={dirs['dspn']}",
        "--picture_examples=1",
    ]
    widths = {}
    for name, extra in (("plain", []), ("baseline", [f"--baseline_model_dir={dirs['mlp']}"])):
        output = str(tmp_path / f"{name}.png")
        run([*argv, f"--output={output}", *extra], entry=pictures_main)
        picture = tf.io.decode_png(tf.io.read_file(output)).numpy()
        widths[name] = picture.shape[1]
        if name == "baseline":
            # The extra panel (128 px + a 2 px gap) sits between the last step and the target.
            panel = picture[:, widths["plain"] - 128 - 2 : widths["plain"] - 2]
            assert np.ptp(panel) > 0
    assert widths["baseline"] == widths["plain"] + 128 + 2
    with pytest.raises(FileNotFoundError, match="flags.txt"):
        run([*argv, f"--output={tmp_path / 'x.png'}", f"--baseline_model_dir={tmp_path}"], entry=pictures_main)
