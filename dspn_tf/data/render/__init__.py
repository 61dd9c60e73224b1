"""The CLEVR-format renderer: procedurally generated scenes in the `CLEVR_v1.0` layout.

Renders scenes of 3-10 CLEVR objects (3 shapes, 8 colours, 2 sizes, 2
materials) on a ground plane with a vectorised NumPy ray caster, and writes
them in the `CLEVR_v1.0` layout and scene-JSON schema so that
`dspn_tf.data.clevr` reads them unchanged:

    OUT/CLEVR_v1.0/images/{split}/CLEVR_{split}_{index:06d}.png   480x320 RGB
    OUT/CLEVR_v1.0/scenes/CLEVR_{split}_scenes.json

Scene `directions` are derived from the same camera, so the CLEVR box formula
(docs/algorithm.md, "Data") lands on the rendered objects. The modules:
`properties` (CLEVR's vocabulary), `camera`, `raycast`, `shading`, `scenes`
(placement and scene dicts) and `png`; this module writes whole folders
(`generate`) and keeps them in a cache (`ensure_generated`).

Output is a pure function of the seed: each scene draws from its own
`(seed, split, index)` random stream, so the worker count does not matter.
"""

import json
import multiprocessing
import os
import shutil
import tempfile

import numpy as np

from dspn_tf.data import disk_full_error, is_disk_full
from dspn_tf.data.render.camera import CAMERA_LOCATION, FOCAL_PX, HEIGHT, WIDTH, Camera  # noqa: F401
from dspn_tf.data.render.png import encode_png
from dspn_tf.data.render.properties import COLORS, CUBE_HALF_SIDE, CYLINDER_RADIUS, MATERIALS, SHAPES, SIZES  # noqa: F401
from dspn_tf.data.render.scenes import (  # noqa: F401
    MARGIN,
    MAX_OBJECTS,
    MIN_DIST,
    MIN_OBJECTS,
    MIN_PIXELS,
    RELATION_EPS,
    generate_scenes,
    make_scene,
    worker_count,
)
from dspn_tf.data.render.shading import render_scene, renderer  # noqa: F401


def _render_chunk(args):
    seed, split, start, stop, image_dir = args
    scenes = []
    for index in range(start, stop):
        scene, image = make_scene(seed, split, index)
        with open(os.path.join(image_dir, scene["image_filename"]), "wb") as f:
            f.write(encode_png(image))
        scenes.append(scene)
    return scenes


def generate(out_dir, *, num_train, num_val, seed=0, workers=None, chunk_size=50, overwrite=False):
    """Writes `out_dir/CLEVR_v1.0` with `num_train` + `num_val` generated scenes.

    The folder is built under a temporary name next to its destination and
    renamed when complete, so an interrupted run never leaves a
    `CLEVR_v1.0` that looks finished.

    Args:
      out_dir: parent folder (created if needed).
      num_train, num_val: scene counts (>= 0, not both 0).
      seed: non-negative integer; output is byte-identical for a seed.
      workers: processes (default: all CPUs); does not affect the output.
      chunk_size: scenes per task handed to a worker.
      overwrite: replace an existing `out_dir/CLEVR_v1.0`.
    Returns:
      Path of the `CLEVR_v1.0` folder.
    Raises:
      dspn_tf.data.DiskFullError: the file system is full (naming `out_dir`); the
        partial folder is removed and an existing `CLEVR_v1.0` is untouched.
    """
    workers = _checked_arguments(num_train, num_val, seed, workers, chunk_size)
    final = os.path.join(out_dir, "CLEVR_v1.0")
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True (--overwrite) to replace it")
    os.makedirs(out_dir, exist_ok=True)
    tmp_root = tempfile.mkdtemp(prefix=".CLEVR_v1.0.partial-", dir=out_dir)
    try:
        root = os.path.join(tmp_root, "CLEVR_v1.0")
        os.makedirs(os.path.join(root, "scenes"))
        tasks = {}
        for split, count in (("train", num_train), ("val", num_val)):
            if count == 0:
                continue
            image_dir = os.path.join(root, "images", split)
            os.makedirs(image_dir)
            tasks[split] = [
                (seed, split, s, min(s + chunk_size, count), image_dir) for s in range(0, count, chunk_size)
            ]
        all_tasks = [t for split in tasks for t in tasks[split]]
        if workers == 1:
            results = list(map(_render_chunk, all_tasks))
        else:
            # Fork keeps start-up cheap; the renderer's tables are rebuilt per
            # process only if not already built in the parent.
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers) as pool:
                results = pool.map(_render_chunk, all_tasks, chunksize=1)
        _write_scene_files(root, tasks, results, seed)
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=".CLEVR_v1.0.old-", dir=out_dir)
            os.rename(final, os.path.join(old, "CLEVR_v1.0"))
            os.rename(root, final)
            shutil.rmtree(old)
        else:
            os.rename(root, final)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error("generated CLEVR scenes (images and scene JSON)", out_dir, e) from e
        raise
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def _checked_arguments(num_train, num_val, seed, workers, chunk_size):
    """`generate`'s worker count (default: all CPUs) once its arguments are checked; ValueError names the bad one."""
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer; received {value!r}")
    if num_train + num_val == 0:
        raise ValueError("num_train and num_val are both 0: nothing to generate")
    return worker_count(workers, chunk_size)


def _write_scene_files(root, tasks, results, seed):
    """One `CLEVR_{split}_scenes.json` per split from the rendered chunks (in task order)."""
    done = 0
    for split, split_tasks in tasks.items():
        scenes = [s for r in results[done : done + len(split_tasks)] for s in r]
        done += len(split_tasks)
        payload = {
            "info": {
                "split": split,
                "license": "CC0 (procedurally generated)",
                "version": "1.0",
                "generator": "dspn_tf.data.clevr_mini",
                "seed": int(seed),
            },
            "scenes": scenes,
        }
        with open(os.path.join(root, "scenes", f"CLEVR_{split}_scenes.json"), "w") as f:
            json.dump(payload, f)


def generated_folder(cache_dir, *, seed, num_train, num_val):
    """Where `ensure_generated` keeps the scenes of these settings: `<cache_dir>/clevr_mini_seed.._train.._val..`."""
    return os.path.join(cache_dir, f"clevr_mini_seed{seed}_train{num_train}_val{num_val}")


def ensure_generated(cache_dir, *, seed, num_train, num_val, workers=None):
    """The `CLEVR_v1.0` folder of generated scenes under `cache_dir`, rendered on first use.

    The folder is named after the settings, so other settings get their own
    scenes and a later call with the same ones reuses them.

    Returns:
      Path of the `CLEVR_v1.0` folder.
    """
    parent = generated_folder(cache_dir, seed=seed, num_train=num_train, num_val=num_val)
    folder = os.path.join(parent, "CLEVR_v1.0")
    if not os.path.isdir(folder):
        print(f"Generating {num_train} + {num_val} CLEVR-format scenes in {parent} ...", flush=True)
        generate(parent, num_train=num_train, num_val=num_val, seed=seed, workers=workers)
    return folder
