"""Set-feature scale in train.train: --normalize_sets adapts a fresh run's model; without it a run checks the spread.

With --normalize_sets the model (`dspn_tf.models`, `normalize_sets=True`)
learns each target-set feature's mean and std from the valid elements of the
first `ADAPT_EXAMPLES` training examples, in the split's order, before the
first step; a resumed run takes them from its checkpoint instead. Without it,
the run reads the first `CHECK_EXAMPLES` training examples and warns when a
feature's std lies outside `SPREAD_RANGE`, the range the defaults are made
for: the inner step (--inner_lr=25), the starting set's initialisation and the
Huber cost of the set losses assume features of order 1, as in the paper's tasks. A
constant feature (`dspn_tf.scaling.FeatureStatistics.constant`) is not
checked: its scale does not matter.
"""

import numpy as np
from absl import logging

from dspn_tf import scaling
from train import config as config_lib

# Training examples a --normalize_sets run adapts on.
ADAPT_EXAMPLES = 4096
# Training examples a run without --normalize_sets checks the spread of.
CHECK_EXAMPLES = 1024
# Per-feature std (over valid elements) outside which a run without --normalize_sets warns.
SPREAD_RANGE = (0.05, 2.0)


def prepare(config, model, *, resumed):
    """Adapts the model (--normalize_sets, fresh run) or checks the data's spread; returns what to print.

    Args:
        config: The run's `RunConfig`.
        model: The run's model, built with `normalize_sets` as --normalize_sets says.
        resumed: Whether the run restored a checkpoint (whose statistics are kept).

    Returns:
        A line saying where the statistics come from, a warning, or None.

    Raises:
        ValueError: naming --normalize_sets if the training sets have no valid element.
    """
    if config.model.normalize_sets:
        if resumed:
            return "Set normalisation (--normalize_sets): mean and std restored from the checkpoint."
        try:
            batches = config_lib.target_set_batches(config, ADAPT_EXAMPLES)
            stats = model.adapt(batches, set_key=config_lib.task(config).set_key)
        except ValueError as e:
            raise ValueError(
                f"--normalize_sets: cannot learn the set statistics from the training split: {e}"
            ) from None
        return (
            f"Set normalisation (--normalize_sets): mean and std of each feature over {stats.elements:,} elements "
            f"of the first {stats.sets:,} training examples; std {_values(stats.std)}."
        )
    key = config_lib.task(config).set_key
    batches = config_lib.target_set_batches(config, CHECK_EXAMPLES)
    stats = scaling.feature_statistics((batch[key], batch["mask"]) for batch in batches)
    warning = spread_warning(stats)
    if warning:
        logging.warning("%s", warning)
    return warning


def spread_warning(stats, spread_range=SPREAD_RANGE):
    """The warning for features whose std is outside `spread_range`, or None if every one is inside.

    Args:
        stats: `dspn_tf.scaling.FeatureStatistics` of the training sets.
        spread_range: `(low, high)` bounds of a feature's std.
    """
    low, high = spread_range
    outside = ~stats.constant() & ((stats.std < low) | (stats.std > high))
    if not outside.any():
        return None
    features = ", ".join(f"{i} ({stats.std[i]:.3g})" for i in np.flatnonzero(outside))
    return (
        f"Warning: the target sets' feature scale is far from what the defaults assume. Over the valid elements "
        f"of the first {stats.sets:,} training examples, the std of feature(s) {features} is outside "
        f"[{low:g}, {high:g}]; the inner step (--inner_lr) and the losses' Huber costs are made for features of "
        "order 1. Train with --normalize_sets (or rescale the data)."
    )


def _values(array):
    return np.array2string(np.asarray(array), precision=3, separator=", ", max_line_width=10_000)
