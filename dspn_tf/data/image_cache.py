"""The decoded-image cache of CLEVR datasets: key, atomic write, read, prune, default folder.

Decoding a 480x320 PNG costs far more than a training step's share of input
work, so `dspn_tf.data.clevr` decodes and resizes the images once into uint8
TFRecord shards. An entry is a folder `<prefix><key>` holding the shards and a
`meta.json`; it is written under a temporary name and renamed when complete,
so a killed run never leaves an entry that looks valid.
"""

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time

import tensorflow as tf
from absl import logging

from dspn_tf.data import disk_full_error, is_disk_full

CACHE_VERSION = 1  # Bump when the cache layout or the image pipeline changes.
SHARD_SIZE = 1024


def default_root():
    """$DSPN_TF_CACHE, else ~/.cache/dspn_tf: the root of every dspn_tf data cache."""
    return os.environ.get("DSPN_TF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dspn_tf")


def default_dir():
    """The CLEVR image cache under `default_root()` (data folders are often read-only)."""
    return os.path.join(default_root(), "clevr")


def key_of(*parts):
    """A hex digest of `parts` (their reprs), for cache entry names."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def folder_key(scene_file, image_paths, image_size, skip_oversized):
    """Changes when the scene file, any image file or the image size changes."""
    st = os.stat(scene_file)
    stats = []
    for path in image_paths:
        try:
            s = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"CLEVR image {path} does not exist.") from None
        stats.append((os.path.basename(path), s.st_size, s.st_mtime_ns))
    return key_of(CACHE_VERSION, st.st_size, st.st_mtime_ns, image_size, skip_oversized, stats)


def read(entry, image_size):
    """The cached images, in order, or None when `entry` is not a finished cache."""
    try:
        with open(os.path.join(entry, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION or meta.get("image_size") != image_size:
        return None
    shards = [os.path.join(entry, s) for s in meta["shards"]]
    if not all(os.path.isfile(s) for s in shards):
        return None
    # One file at a time keeps the scene order (parallel reads would interleave
    # shards); fixed-size raw records make this read cheap anyway.
    ds = tf.data.TFRecordDataset(shards, buffer_size=8 << 20)

    def parse(record):
        image = tf.io.decode_raw(record, tf.uint8)
        return tf.reshape(image, [image_size, image_size, 3])

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE), meta


def write(entry, images, names, image_size, extra_meta):
    """Writes `images` (a dataset of uint8 [S, S, 3]) to `entry` atomically.

    The shards go to a temporary sibling directory that is renamed into place
    only once complete, so a killed run never leaves a cache that looks valid.
    `names[k]` names example k in decode errors.

    Raises:
      dspn_tf.data.DiskFullError: the file system is full (naming the folder); the
        temporary directory is removed and existing entries are untouched.
    """
    root = os.path.dirname(entry)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(entry) + ".tmp-", dir=root)
    try:
        shards, count, writer = [], 0, None
        iterator = iter(images.prefetch(tf.data.AUTOTUNE))
        start = time.time()
        while True:
            try:
                image = next(iterator)
            except StopIteration:
                break
            except tf.errors.OpError as e:
                # The map is deterministic, so the failing example is the next one.
                culprit = names[count] if count < len(names) else f"example {count}"
                raise ValueError(f"Cannot read or decode CLEVR image {culprit}: {e.message}") from None
            if count % SHARD_SIZE == 0:
                if writer:
                    writer.close()
                shards.append(f"images-{len(shards):05d}.tfrecord")
                writer = tf.io.TFRecordWriter(os.path.join(tmp, shards[-1]))
            writer.write(image.numpy().tobytes())
            count += 1
        if writer:
            writer.close()
        meta = {"version": CACHE_VERSION, "image_size": image_size, "count": count, "shards": shards, **extra_meta}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        try:
            os.rename(tmp, entry)
        except OSError:
            # Another process finished the same cache first; theirs is as good.
            if read(entry, image_size) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        logging.info("Cached %d CLEVR images at %dpx in %s (%.1fs).", count, image_size, entry, time.time() - start)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(f"the CLEVR image cache entry {os.path.basename(entry)}", root, e) from e
        raise


def prune_stale(entry, prefix):
    """Deletes caches of the same source and size made from an older version of it."""
    root = os.path.dirname(entry)
    for other in glob.glob(os.path.join(root, glob.escape(prefix) + "*")):
        if other == entry:
            continue
        if ".tmp-" in other and time.time() - os.path.getmtime(other) < 24 * 3600:
            continue  # Possibly another process still writing.
        shutil.rmtree(other, ignore_errors=True)


def cached_images(make_images, names, *, cache_dir, prefix, key, image_size, expected_count, extra_meta=None):
    """The cached images of `prefix` + `key` in `cache_dir`, written from `make_images()` on first use.

    Returns:
      `(images, meta)`: a dataset of uint8 [S, S, 3] in order, and the entry's metadata.
    """
    entry = os.path.join(cache_dir, f"{prefix}{key[:20]}")
    found = read(entry, image_size)
    if found is None:
        write(entry, make_images(), names, image_size, extra_meta or {})
        prune_stale(entry, prefix)
        found = read(entry, image_size)
        if found is None:
            raise RuntimeError(f"CLEVR image cache {entry} unreadable right after writing.")
    images, meta = found
    if expected_count is not None and meta["count"] != expected_count:
        raise ValueError(
            f"CLEVR image cache {entry} holds {meta['count']} images, the labels "
            f"{expected_count}; delete it to rebuild."
        )
    return images, meta
