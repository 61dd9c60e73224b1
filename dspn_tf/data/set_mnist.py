"""Set-MNIST: each MNIST digit as the set of its bright pixels' coordinates.

docs/algorithm.md §8: a pixel is kept when value / 255 is above the MNIST mean 0.1307,
i.e. uint8 >= 34; an element is (row, col) / 27 (channel 0 is the row); the
elements are shuffled, zero-padded to 342 (the largest train set) and masked.

    ds = build_dataset("/data/mnist", "train", seed=0)
    ds = ds.shuffle(10_000).batch(32)   # {"set": [32, 342, 2], "mask": [32, 342]}
"""

import gzip
import math
import os
import zlib

import numpy as np
import tensorflow as tf

# uint8 threshold equivalent to value / 255 > 0.1307 (33 / 255 = 0.1294).
THRESHOLD = 34
MAX_SET_SIZE = 342
IMAGE_SIZE = 28

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.

_FILE_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path, expected_magic):
    """Reads an IDX file of unsigned bytes (gzipped if `path` ends in .gz).

    Args:
      path: the file.
      expected_magic: 2051 for an image file, 2049 for a label file.

    Returns:
      A uint8 array whose shape is the file's dimensions.

    Raises:
      ValueError: wrong magic number, or a file shorter or longer than its header
        says. The message names the file.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip raises these on a damaged stream.
        raise ValueError(f"Cannot read IDX file {path}: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, no header.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"IDX file {path} has magic number {magic}, expected {expected_magic}.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header.")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)  # Python ints: huge dimensions must not wrap around.
    if len(raw) < expected:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, header {dims} needs {expected}.")
    if len(raw) > expected:
        raise ValueError(f"IDX file {path} has {len(raw) - expected} bytes after the data its header {dims} describes.")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx(source, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(source, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"Neither {stem} nor {stem}.gz found in the MNIST folder {source}.")


def load_idx_split(source, split, *, include_label=False):
    """Reads a split of the standard IDX files in the folder `source`.

    Returns:
      (images uint8 [n, 28, 28], labels uint8 [n] or None).
    """
    if split not in _FILE_PREFIX:
        raise ValueError(f"split must be 'train' or 'test'; received {split!r}.")
    prefix = _FILE_PREFIX[split]
    images_path = _find_idx(source, f"{prefix}-images-idx3-ubyte")
    images = read_idx(images_path, IMAGES_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"IDX file {images_path} holds images of shape {images.shape[1:]}, expected ({IMAGE_SIZE}, {IMAGE_SIZE})."
        )
    labels = None
    if include_label:
        labels_path = _find_idx(source, f"{prefix}-labels-idx1-ubyte")
        labels = read_idx(labels_path, LABELS_MAGIC)
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"IDX file {labels_path} has {labels.shape[0]} labels but {images_path} has {images.shape[0]} images."
            )
    return images, labels


def _check_set_sizes(images, max_set_size, threshold, where):
    sizes = (images >= threshold).sum(axis=(1, 2))
    too_big = np.flatnonzero(sizes > max_set_size)
    if too_big.size:
        i = int(too_big[0])
        raise ValueError(
            f"{where}: image {i} has {int(sizes[i])} pixels >= {threshold}, more "
            f"than max_set_size={max_set_size} ({too_big.size} such images; raise "
            f"max_set_size)."
        )


def _load_tfds(split, data_dir, include_label):
    import tensorflow_datasets as tfds  # Deferred: slow to import, optional path.

    ds = tfds.load("mnist", split=split, data_dir=data_dir, shuffle_files=False)

    def strip(example):
        out = {"image": tf.squeeze(example["image"], -1)}  # Shape: [28, 28].
        if include_label:
            out["label"] = tf.cast(example["label"], tf.int64)
        return out

    return ds.map(strip, num_parallel_calls=tf.data.AUTOTUNE)


def build_dataset(
    source,
    split,
    *,
    shuffle_elements=True,
    seed=None,
    data_dir=None,
    max_set_size=MAX_SET_SIZE,
    threshold=THRESHOLD,
    include_label=False,
):
    """The set-MNIST `tf.data.Dataset` (unbatched).

    Args:
      source: a folder with the standard IDX files (`train-images-idx3-ubyte`,
        `t10k-images-idx3-ubyte`, each optionally `.gz`), or "tfds" for TFDS
        `mnist`.
      split: "train" or "test" (for "tfds", any TFDS split string).
      shuffle_elements: shuffle each set's elements, with a new order on every
        pass over the dataset (deterministic given `seed`). The reference
        shuffles; off gives row-major order, handy for debugging.
      seed: int or None (None: nondeterministic).
      data_dir: TFDS data directory, for source="tfds".
      max_set_size: padded size. An image with more kept pixels is an error that
        names its index (raised here for IDX sources; for "tfds", while
        iterating).
      threshold: smallest kept uint8 pixel value.
      include_label: add the digit as "label" (int64).

    Returns:
      Dataset of {"set": float32 [max_set_size, 2], "mask": float32
      [max_set_size]} (+ "label": int64 []).
    """
    if max_set_size < 1:
        raise ValueError(f"max_set_size must be positive, received {max_set_size}.")
    ds = _images(
        source, split, data_dir=data_dir, include_label=include_label, max_set_size=max_set_size, threshold=threshold
    )
    # One random seed per example, rerandomised on every iteration of the
    # dataset: the elements get a fresh order each epoch, yet the whole stream
    # is reproducible from `seed` (a stateless shuffle inside a parallel map).
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds.enumerate(), seeds.batch(2)))
    to_set = _to_set(
        split,
        shuffle_elements=shuffle_elements,
        max_set_size=max_set_size,
        threshold=threshold,
        include_label=include_label,
    )
    ds = ds.map(to_set, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _images(source, split, *, data_dir, include_label, max_set_size, threshold):
    """A dataset of `{"image": uint8 [28, 28]}` (+ "label") from IDX files or TFDS."""
    if source == "tfds":
        return _load_tfds(split, data_dir, include_label)
    if not os.path.isdir(source):
        raise FileNotFoundError(f"MNIST folder {source} does not exist.")
    images, labels = load_idx_split(source, split, include_label=include_label)
    # Checked here, vectorised, so the error names the image before any
    # training starts; the in-graph assert of `_to_set` covers the TFDS path.
    _check_set_sizes(images, max_set_size, threshold, f"MNIST {split} in {source}")
    tensors = {"image": images}
    if include_label:
        tensors["label"] = labels.astype(np.int64)
    return tf.data.Dataset.from_tensor_slices(tensors)


def _to_set(split, *, shuffle_elements, max_set_size, threshold, include_label):
    """The map from `((index, example), seed)` to the padded set of the image's bright pixels."""

    def to_set(indexed, example_seed):
        index, example = indexed
        coords = tf.where(example["image"] >= threshold)  # Shape: [n, 2], int64.
        n = tf.shape(coords)[0]
        tf.debugging.Assert(
            n <= max_set_size,
            [
                f"set-MNIST {split}: more than max_set_size={max_set_size} pixels >= {threshold} in image index",
                index,
                "set size",
                n,
            ],
        )
        elements = tf.cast(coords, tf.float32) / float(IMAGE_SIZE - 1)
        if shuffle_elements:
            elements = tf.random.experimental.stateless_shuffle(elements, seed=example_seed)
        pad = max_set_size - n
        out = {
            "set": tf.pad(elements, [[0, pad], [0, 0]]),  # Shape: [342, 2].
            "mask": tf.pad(tf.ones([n], tf.float32), [[0, pad]]),  # Shape: [342].
        }
        out["set"].set_shape([max_set_size, 2])
        out["mask"].set_shape([max_set_size])
        if include_label:
            out["label"] = example["label"]
        return out

    return to_set
