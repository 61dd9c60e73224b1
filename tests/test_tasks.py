"""The task registry (train/tasks.py): one record per --dataset, asked by every entry point."""

import pytest

from train import tasks


def test_every_dataset_flag_value_is_a_registered_task():
    from absl import flags

    from train import flags as train_flags  # noqa: F401  (defines --dataset)

    assert flags.FLAGS["dataset"].parser.enum_values == tasks.names()
    assert tasks.names()[:4] == ["set_mnist", "clevr_state", "clevr_boxes", "clevr_state_autoencoder"]
    assert "numbering" in tasks.names()


def test_an_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Unknown task 'clevr_stat'; the registered tasks are set_mnist, "):
        tasks.get("clevr_stat")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        tasks.register(tasks.get("set_mnist"))


@pytest.mark.parametrize(
    "name, kind, set_key, loss, metric",
    [
        ("set_mnist", "autoencoder", "set", "chamfer", "Chamfer"),
        ("clevr_state", "image", "state", "hungarian", "AP"),
        ("clevr_boxes", "image", "boxes", "hungarian", "AP"),
        ("clevr_state_autoencoder", "autoencoder", "state", "hungarian", "AP"),
        ("random_sets", "autoencoder", "set", "hungarian", "Hungarian"),
    ],
)
def test_the_records(name, kind, set_key, loss, metric):
    task = tasks.get(name)
    assert (task.kind, task.set_key, task.default_loss, task.metric) == (kind, set_key, loss, metric)
    shape = task.input_shape(32)
    assert shape == ((task.set_size, task.set_channels) if kind == "autoencoder" else (32, 32, 3))
