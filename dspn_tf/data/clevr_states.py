"""Object-state sets of CLEVR scenes, for the set auto-encoder (state -> z -> state).

The auto-encoder isolates the set decoder the way set-MNIST does in the paper:
the input is the scene's set of object states itself, so no image has to be
rendered or decoded. Each example is

    {"state": float32 [10, 18], "mask": float32 [10]}

with the state features of `clevr.object_state` (docs/algorithm.md §8 order:
coords / 3, material, colour, shape, size), zero-padded in scene order.

`source` is "generated" (scenes of `dspn_tf.data.render`, the same ones it
draws, made without rendering: about 1 ms of CPU each) or a `CLEVR_v1.0`
folder (the states of its scene JSON; images are not read).
"""

import hashlib
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from dspn_tf.data import clevr, disk_full_error, is_disk_full, render

# Bump when generated scenes or the state features change, so stale caches are not read.
_CACHE_VERSION = 1


def scene_states(scenes, *, max_objects=clevr.MAX_OBJECTS):
    """Stacks `clevr.scene_state` of every scene.

    Returns:
      (state float32 [n, max_objects, 18], mask float32 [n, max_objects]).
    """
    states = np.zeros([len(scenes), max_objects, clevr.STATE_DIM], np.float32)
    masks = np.zeros([len(scenes), max_objects], np.float32)
    for i, scene in enumerate(scenes):
        states[i], masks[i] = clevr.scene_state(scene, max_objects=max_objects, index=i)
    return states, masks


def _cache_path(cache_dir, split, num_scenes, seed):
    key = hashlib.sha256(f"v{_CACHE_VERSION}-{split}-{num_scenes}-{seed}".encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"clevr_states_{split}_{num_scenes}_seed{seed}_{key}.npz")


def generated_states(split, *, num_scenes, seed=0, cache_dir=None, workers=None):
    """States of `num_scenes` generated scenes of a split, cached as one .npz.

    Args:
      split: "train", "val" or "test"; splits draw from disjoint random
        streams, so held-out scenes are never training scenes.
      num_scenes: number of scenes (> 0).
      seed: the generator's seed.
      cache_dir: folder of the cache file (None: no cache).
      workers: generator processes (default: all CPUs).

    Returns:
      (state float32 [num_scenes, 10, 18], mask float32 [num_scenes, 10]).
    """
    if not isinstance(num_scenes, (int, np.integer)) or isinstance(num_scenes, bool) or num_scenes < 1:
        raise ValueError(f"clevr_states: `num_scenes` must be a positive integer; received {num_scenes!r}.")
    path = _cache_path(cache_dir, split, num_scenes, seed) if cache_dir else None
    if path and os.path.isfile(path):
        with np.load(path) as data:
            return data["state"], data["mask"]
    scenes = render.generate_scenes(num_scenes, split=split, seed=seed, workers=workers)
    states, masks = scene_states(scenes)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        _remove_stale_temporaries(cache_dir)
        # Written under a temporary name and renamed, so a partial file is never read.
        fd, tmp = tempfile.mkstemp(prefix=".clevr_states-", suffix=".npz", dir=cache_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, state=states, mask=masks)
                f.flush()
                os.fsync(f.fileno())  # On disk before the rename makes it the cache.
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is readable like any output.
            os.replace(tmp, path)
        except OSError as e:
            if is_disk_full(e):
                raise disk_full_error(
                    f"the generated {split} states cache {os.path.basename(path)}", cache_dir, e
                ) from e
            raise
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return states, masks


def _remove_stale_temporaries(cache_dir, age=24 * 3600):
    """Deletes temporary cache files a killed run left (older than `age` s: a younger one may still be written)."""
    for name in os.listdir(cache_dir):
        full = os.path.join(cache_dir, name)
        if name.startswith(".clevr_states-"):
            try:
                if time.time() - os.path.getmtime(full) > age:
                    os.remove(full)
            except FileNotFoundError:
                pass


def build_dataset(
    source, split, *, num_scenes=None, seed=0, cache_dir=None, workers=None, shuffle=False, shuffle_seed=None
):
    """Unbatched dataset of object-state sets.

    Args:
      source: "generated" or a `CLEVR_v1.0` folder.
      split: "train" or "val" (or "test" for generated scenes).
      num_scenes: scenes to generate (required for "generated"; for a folder,
        at most this many scenes are used, in file order).
      seed: the generator's seed ("generated" only).
      cache_dir: cache folder of generated states (None: regenerate every time).
      workers: generator processes.
      shuffle: shuffle the examples, reshuffled every pass.
      shuffle_seed: seed of that shuffle.

    Returns:
      A `tf.data.Dataset` of `{"state": [10, 18], "mask": [10]}`.
    """
    if source == "generated":
        if num_scenes is None:
            raise ValueError("clevr_states: `num_scenes` is required for source='generated'.")
        states, masks = generated_states(split, num_scenes=num_scenes, seed=seed, cache_dir=cache_dir, workers=workers)
    else:
        if not isinstance(source, str) or not os.path.isdir(source):
            raise ValueError(f"clevr_states: `source` must be 'generated' or a CLEVR_v1.0 folder; received {source!r}.")
        labels = clevr.load_scenes(source, split)
        states, masks = labels["state"][:num_scenes], labels["mask"][:num_scenes]
        if not len(states):
            raise ValueError(f"clevr_states: {labels['scene_file']} has no scenes.")
    ds = tf.data.Dataset.from_tensor_slices({"state": states, "mask": masks})
    if shuffle:
        ds = ds.shuffle(len(states), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds
