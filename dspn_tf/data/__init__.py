"""Input pipelines: set-MNIST (`set_mnist`), CLEVR (`clevr`, `clevr_states`) and the renderer (`render`).

Each module's `build_dataset(source, split, **options)` returns an unbatched
`tf.data.Dataset` of dicts (conventions in docs/algorithm.md, section 8);
`batches` batches one the way the training loop does.
"""

import tensorflow as tf


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
