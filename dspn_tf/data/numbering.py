"""Class-specific numbering (iDSPN, Zhang et al., ICLR 2022, section 4.1): generated, seeded, no download.

A sample is a multiset of `positions` elements, each the one-hot of its class
(`classes` features). Per sample `classes_per_set` distinct classes are drawn,
and every element's class is drawn uniformly among them. The target numbers
the elements within their class: the elements of a class, in the order of
their positions, get the numbers 0, 1, 2, ..., each as a one-hot over
`positions` numbers. Equal elements are interchangeable, so which of them
gets which number is arbitrary: models are scored after an optimal matching
within classes (`dspn_tf.losses.numbering_loss`, `dspn_tf.metrics.numbering_accuracy`).

Examples are dicts: `classes` `[positions, classes]` (the input set),
`numbers` `[positions, positions]` (the target set) and `mask` `[positions]`
(all ones), float32.
"""

import numpy as np
import tensorflow as tf

INPUT_KEY = "classes"
SET_KEY = "numbers"
SPLITS = ("train", "eval")


def _check(positions, classes, classes_per_set, num_sets):
    for name, value in (("positions", positions), ("classes", classes), ("classes_per_set", classes_per_set)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"numbering: `{name}` must be an integer >= 1; received {name}={value!r}.")
    if classes_per_set > classes:
        raise ValueError(
            f"numbering: `classes_per_set` ({classes_per_set}) cannot exceed `classes` ({classes}): "
            "the classes of a set are distinct."
        )
    if not isinstance(num_sets, (int, np.integer)) or isinstance(num_sets, bool) or num_sets < 1:
        raise ValueError(f"numbering: `num_sets` must be an integer >= 1; received num_sets={num_sets!r}.")


def generate(num_sets, positions, classes, classes_per_set, seed):
    """The class labels and numbers of `num_sets` samples, as integers.

    Args:
        num_sets: Number of samples.
        positions: Elements per sample (and numbers per class at most).
        classes: Number of classes (the input one-hot size).
        classes_per_set: Distinct classes drawn per sample (at most `classes`).
        seed: Seed of NumPy's generator (an int, or a sequence of ints).

    Returns:
        `(labels, numbers)`, int64 `[num_sets, positions]` each: every
        element's class, and its number within its class (0-based, in the
        order of the positions).

    Raises:
        ValueError: naming the argument out of range.
    """
    _check(positions, classes, classes_per_set, num_sets)
    rng = np.random.default_rng(seed)
    # A random subset of classes per sample: the first `classes_per_set` of a random permutation.
    chosen = np.argsort(rng.random((num_sets, classes)), axis=1)[:, :classes_per_set]
    which = rng.integers(0, classes_per_set, size=(num_sets, positions))
    labels = np.take_along_axis(chosen, which, axis=1)
    same = labels[:, :, None] == np.arange(classes)  # Shape: [num_sets, positions, classes].
    numbers = (np.cumsum(same, axis=1) * same).sum(axis=2) - 1
    return labels.astype(np.int64), numbers.astype(np.int64)


def split_seed(seed, split):
    """The generator seed of a split: the train and eval sets are drawn from different streams."""
    if split not in SPLITS:
        raise ValueError(f"numbering: `split` must be one of {SPLITS}; received {split!r}.")
    return [int(seed), SPLITS.index(split)]


def build_dataset(split, *, num_sets, positions=64, classes=4, classes_per_set=4, seed=0):
    """The unbatched `tf.data.Dataset` of a split ("train" or "eval"), drawn once from `seed`.

    Args:
        split: "train" or "eval" (held-out sets: another random stream of the same seed).
        num_sets: Samples in the split.
        positions: Elements per sample (iDSPN: 64).
        classes: Number of classes (iDSPN: 4).
        classes_per_set: Distinct classes per sample (iDSPN: 4).
        seed: Integer seed.

    Returns:
        A dataset of `{"classes", "numbers", "mask"}` dicts (see the module docstring).

    Raises:
        ValueError: naming the argument out of range.
    """
    labels, numbers = generate(num_sets, positions, classes, classes_per_set, split_seed(seed, split))

    def one_hot(label, number):
        # Stored as integers, one-hot per example: a checkpointed input pipeline holds the small arrays.
        return {
            INPUT_KEY: tf.one_hot(label, classes, dtype=tf.float32),
            SET_KEY: tf.one_hot(number, positions, dtype=tf.float32),
            "mask": tf.ones([positions], tf.float32),
        }

    ds = tf.data.Dataset.from_tensor_slices((labels.astype(np.int32), numbers.astype(np.int32)))
    return ds.map(one_hot)
