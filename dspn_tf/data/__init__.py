"""Input pipelines: set-MNIST (`set_mnist`), CLEVR (`clevr`, `clevr_states`) and the renderer (`render`).

Each module's `build_dataset(source, split, **options)` returns an unbatched
`tf.data.Dataset` of dicts (conventions in docs/algorithm.md, section 8);
`batches` batches one the way the training loop does.
"""

import errno

import tensorflow as tf


class DiskFullError(OSError):
    """A cache or generated dataset could not be written: its file system is full. Nothing partial is left behind."""


def is_disk_full(error):
    """ENOSPC as a Python OSError, or TensorFlow's file-system error carrying the OS message."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return isinstance(error, (OSError, tf.errors.OpError)) and "No space left on device" in str(error)


def disk_full_error(what, where, error):
    """The `DiskFullError` saying the disk is full, what was being written and where."""
    return DiskFullError(
        errno.ENOSPC,
        f"No space left on the device while writing {what} in {where}; the partial files were removed and "
        f"nothing that was there before was touched. Free space there (or point the cache elsewhere, e.g. "
        f"--cache_dir or $DSPN_TF_CACHE) and run again. ({error})",
    )


def batches(dataset, batch_size, *, shuffle_buffer=None, seed=None):
    """Batched and prefetched; with `shuffle_buffer`, shuffled (reshuffled each pass) and repeated.

    Shuffled (training) batches drop the last partial batch, so every step has
    the same shape and a `tf.function` train step traces once.
    """
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=bool(shuffle_buffer))
    return dataset.prefetch(tf.data.AUTOTUNE)
