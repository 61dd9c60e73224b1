"""A run's settings on TensorBoard's HParams dashboard, and its final metrics as the run's results.

Each run writes, into its own `--model_dir/hparams` folder, the HParams plugin's
session-start record (every flag of the run's `RunConfig`, `as_flags()`, that changes what is
trained, as the plugin's bool / number / string values) and, at the end, its
results as scalars `results/<metric>/iters_<n>` (the final evaluation) and
`results/train_loss` in the same folder. No experiment config (`hparams_config`) is
written: TensorBoard takes the one of the first run that has one, so runs with other
metrics would lose theirs; without it the dashboard lists the union of the sessions'
settings and takes the metrics from the scalars under each session's folder, which
holds just these results. So `tensorboard --logdir runs` shows every run under
`runs/` as a row (DSPN vs MLP, inner-loop options side by side).
"""

import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

# The session's folder in the run directory (a TensorBoard run of its own).
RUN = "hparams"

# Flags that do not change what is trained: paths, logging cadences and the options of
# the evaluate / export / pictures entry points.
_NOT_SETTINGS = frozenset(
    {
        "tfds_data_dir",
        "cache_dir",
        "model_dir",
        "checkpoint_every",
        "log_every",
        "image_every",
        "eval_every",
        "keep_checkpoints",
        "progress",
        "evaluate_at_end",
        "checkpoint",
        "output",
        "checkpoint_dir",
        "export_base",
        "keep_versions",
        "all_steps",
        "export_keras",
        "max_iters",
        "picture_examples",
    }
)


def _value(value):
    """An HParams value (bool, int, float or str) of a config value; None stays None (left out)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return ",".join(":".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v) for v in value)
    return str(value)


def settings_of(config, loss_settings, *, total_steps, train_examples):
    """The run's settings as HParams values: `config`'s training flags, the resolved loss and the budget.

    Args:
        config: The run's `RunConfig`.
        loss_settings: Its `LossSettings` (the loss, steps scored and representation
            weight the run really uses, where the config leaves them to the task's default).
        total_steps: Steps of the whole run.
        train_examples: Training examples.

    Returns:
        A dict of setting name to bool, int, float or str (settings that are None are left out).
    """
    values = {flag: _value(value) for flag, value in config.as_flags().items() if flag not in _NOT_SETTINGS}
    values.update(
        loss=loss_settings.loss,
        loss_all_steps=loss_settings.all_steps,
        repr_lambda=float(loss_settings.repr_lambda),
        total_steps=int(total_steps),
        train_examples=int(train_examples),
    )
    return {name: value for name, value in values.items() if value is not None}


def _write(model_dir, fn):
    writer = tf.summary.create_file_writer(os.path.join(model_dir, RUN))
    try:
        with writer.as_default():
            fn()
    finally:
        writer.close()


def log_settings(model_dir, settings):
    """Writes the session-start record of the run (its settings) to `model_dir/hparams`.

    The session is named after the run directory, so every run under one `--logdir` is a row.
    """
    trial = os.path.basename(os.path.normpath(model_dir))
    _write(model_dir, lambda: hp.hparams(settings, trial_id=trial))


def log_results(model_dir, results, *, step, train_loss=None):
    """Writes the run's final metrics (`results/<metric>/iters_<n>`, `results/train_loss`) next to its settings.

    Args:
        model_dir: The run directory.
        results: `{iters: {metric: value}}` from `dspn_tf.evaluation.evaluate` (may be empty).
        step: The training step the results belong to.
        train_loss: The final (running-mean) training loss, if known.
    """

    def write():
        for iters, row in results.items():
            for name, value in row.items():
                if name != "num_examples":
                    tf.summary.scalar(f"results/{name}/iters_{iters}", value, step=step)
        if train_loss is not None:
            tf.summary.scalar("results/train_loss", train_loss, step=step)

    _write(model_dir, write)
