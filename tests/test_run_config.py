"""RunConfig: one section per component, every flag in exactly one place, and a task added by one registration."""

import copy
import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import flags

from dspn_tf.inner.config import InnerLoopConfig
from train import config as config_lib
from train import flags as train_flags
from train import loop, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_idspn.cfg")


def test_sections_at_the_top_and_the_inner_loop_in_the_model():
    names = [field.name for field in dataclasses.fields(config_lib.RunConfig)]
    assert names == [
        "data",
        "model",
        "optimization",
        "evaluation",
        "pictures",
        "export",
        "run",
        "flagfile",
        "overrides",
        "flags_text",
    ]
    config = config_lib.load(CONFIG, "--seed=4", "--inner_lr=2")
    assert isinstance(config.model.inner, InnerLoopConfig)
    assert config.model.inner == InnerLoopConfig(
        iters=10, lr=2.0, gradient="implicit", momentum=0.9, nesterov=True, clip=0.3, seed=4
    )
    assert config.run.seed == 4 and config.model.iterative


def test_every_flag_has_one_place_and_reads_back_by_name():
    defined = {flag.name for flag in flags.FLAGS.get_flags_for_module(train_flags)}
    assert set(config_lib.FLAG_FIELDS) == defined
    flag_values = copy.deepcopy(flags.FLAGS)
    flag_values.unparse_flags()
    argv = ["train", f"--flagfile={CONFIG}", "--iters_schedule=0:2,50%:4", "--inner_tolerance=0.01"]
    flag_values(argv)
    values = config_lib.from_flags(flag_values, argv=argv).as_flags()
    for name in defined:
        value = getattr(flag_values, name)
        assert values[name] == (tuple(value) if isinstance(value, list) else value), name
    assert values["iters_schedule"] == ("0:2", "50%:4")
    assert values["inner_tolerance"] == 0.01 and values["inner_gradient"] == "implicit"


def _toy_split(data, split, seed):
    """Sets of 2-D points in [0, 1), 3..5 of 5 slots, as a tf.data dataset."""
    rng = np.random.default_rng(seed + (split == "eval"))
    count = data.generated_train if split == "train" else data.generated_val
    sizes = rng.integers(3, 6, size=count)
    mask = (np.arange(5)[None] < sizes[:, None]).astype(np.float32)
    points = rng.random((count, 5, 2), dtype=np.float32) * mask[..., None]
    return tf.data.Dataset.from_tensor_slices({"points": points, "mask": mask})


def test_a_task_is_one_registration():
    toy = tasks.Task(
        name="toy_points",
        description="2-D points",
        kind="autoencoder",
        set_key="points",
        set_size=5,
        set_channels=2,
        build_split=_toy_split,
        default_loss="chamfer",
        metric="Chamfer",
        pictures=tasks.Pictures(tag="points", row=tasks.get("set_mnist").pictures.row),
    )
    tasks.register(toy)
    try:
        config = config_lib.load(
            os.path.join(ROOT, "configs/set_mnist_dspn.cfg"),
            "--dim=8",
            "--latent=8",
            "--iters=2",
            "--batch_size=4",
            "--generated_train=12",
            "--generated_val=4",
            "--train_steps=1",
        )
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset="toy_points"))
        train_ds, size = config_lib.train_batches(config, tf.distribute.get_strategy())
        assert size == 12
        settings = config_lib.loss_settings(config)
        assert (settings.set_key, settings.loss, settings.all_steps) == ("points", "chamfer", True)
        model = config_lib.build_model(config)
        batch = next(iter(config_lib.eval_batches(config)))
        out = model(model.inputs_of(batch, toy.set_key), training=False)
        assert out["sets"].shape == (3, 4, 5, 2)  # The start and 2 inner steps.
        rows = loop.progression_rows(out["sets"].numpy(), out["masks"].numpy(), batch, toy, 2)
        assert len(rows) == 2 and rows[0].dtype == np.uint8
        assert next(iter(train_ds))["points"].shape == (4, 5, 2)
    finally:
        tasks._TASKS.pop("toy_points")
