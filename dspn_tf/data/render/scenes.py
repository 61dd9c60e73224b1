"""Scene sampling with CLEVR's placement rules, and scene dicts in CLEVR's schema.

Output is a pure function of the seed: each scene draws from its own
`(seed, split, index)` random stream, so the worker count does not matter.
"""

import math
import multiprocessing
import os

import numpy as np

from dspn_tf.data.render.properties import COLORS, MATERIALS, SHAPES, SIZES
from dspn_tf.data.render.raycast import object_centres, visibility
from dspn_tf.data.render.shading import compose, renderer

# Placement rules copied in spirit from CLEVR's generator: objects in
# [-3, 3]^2, surfaces at least MIN_DIST apart, and every pair separated by at
# least MARGIN along left/right and front/behind so spatial relations are
# unambiguous; every object must keep MIN_PIXELS visible pixels.
MIN_OBJECTS, MAX_OBJECTS = 3, 10
MIN_DIST = 0.25
MARGIN = 0.4
MIN_PIXELS = 200
RELATION_EPS = 0.2


SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _relationships(objects, directions):
    coords = np.array([o["3d_coords"] for o in objects])
    rel = {}
    for name in ("right", "behind", "front", "left"):
        dots = (coords[None, :, :] - coords[:, None, :]) @ np.array(directions[name])
        rel[name] = [
            [j for j in range(len(objects)) if j != i and dots[i, j] > RELATION_EPS] for i in range(len(objects))
        ]
    return rel


def _sample_objects(rng, directions):
    """CLEVR-style rejection sampling of object positions; None if stuck."""
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    rx, ry = directions["right"][:2]
    bx, by = directions["behind"][:2]
    size_names, color_names = list(SIZES), list(COLORS)
    placed = []
    # Plain floats: this loop is called thousands of times per scene batch and
    # NumPy's per-call overhead dominated it.
    for _ in range(count):
        size = size_names[int(rng.integers(len(size_names)))]
        r = SIZES[size]
        for _attempt in range(50):
            x, y = (float(v) for v in rng.uniform(-3, 3, size=2))
            ok = True
            for ox, oy, orad in ((o["3d_coords"][0], o["3d_coords"][1], SIZES[o["size"]]) for o in placed):
                dx, dy = x - ox, y - oy
                if (
                    math.hypot(dx, dy) - r - orad < MIN_DIST
                    or abs(dx * rx + dy * ry) < MARGIN
                    or abs(dx * bx + dy * by) < MARGIN
                ):
                    ok = False
                    break
            if ok:
                break
        else:
            return None
        placed.append(
            {
                "color": color_names[int(rng.integers(len(color_names)))],
                "size": size,
                "rotation": float(rng.uniform(0, 360)),
                "shape": SHAPES[int(rng.integers(len(SHAPES)))],
                "3d_coords": [x, y, r],
                "material": MATERIALS[int(rng.integers(len(MATERIALS)))],
            }
        )
    return placed


def make_scene(seed, split, index, *, render=True):
    """Samples and renders one scene.

    Args:
      seed, split, index: the scene's random stream.
      render: False skips shading the image (the visibility pass that CLEVR's
        placement rules need still runs); the scene dict is the same.

    Returns:
      (scene dict in CLEVR's schema, uint8 image [320, 480, 3], or None when
      `render=False`). The result depends only on (seed, split, index).
    """
    rd = renderer()
    rng = np.random.default_rng([seed, SPLIT_IDS.get(split, 3), index])
    while True:
        objects = _sample_objects(rng, rd.directions)
        if objects is None:
            continue
        proj = rd.camera.project(np.array([o["3d_coords"] for o in objects]))
        for obj, p in zip(objects, proj):
            obj["pixel_coords"] = [int(round(p[0])), int(round(p[1])), float(p[2])]
        centres = object_centres(objects)
        ids, depth, boxes = visibility(rd, objects, centres)
        counts = np.bincount(ids[ids >= 0], minlength=len(objects))
        # Like CLEVR, resample scenes where an object is mostly hidden (before
        # spending time on shading them).
        if counts.min() >= MIN_PIXELS:
            break
    image = compose(rd, objects, centres, ids, depth, boxes) if render else None
    scene = {"image_index": index, "objects": objects}
    scene["relationships"] = _relationships(objects, rd.directions)
    scene["image_filename"] = image_name(split, index)
    scene["split"] = split
    scene["directions"] = rd.directions
    return scene, image


def image_name(split, index):
    return f"CLEVR_{split}_{index:06d}.png"


def _scene_chunk(args):
    seed, split, start, stop = args
    return [make_scene(seed, split, index, render=False)[0] for index in range(start, stop)]


def generate_scenes(count, *, split, seed=0, workers=None, chunk_size=500):
    """Scene dicts of `count` generated scenes, without rendering their images.

    Scene `i` is exactly the scene that `generate` renders as image `i` of the
    same split and seed (same random stream), so labels computed from these
    dicts are those of the rendered dataset. About 1 ms of CPU per scene.

    Args:
      count: number of scenes (>= 0).
      split: "train", "val" or "test" (each split has its own random streams).
      seed: non-negative integer.
      workers: processes (default: all CPUs); does not affect the output.
      chunk_size: scenes per task handed to a worker.
    Returns:
      A list of `count` scene dicts in CLEVR's schema, in index order.
    """
    for name, value in (("count", count), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer; received {value!r}")
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_IDS)}; received {split!r}")
    workers = worker_count(workers, chunk_size)
    tasks = [(seed, split, s, min(s + chunk_size, count)) for s in range(0, count, chunk_size)]
    if workers == 1 or len(tasks) <= 1:
        results = list(map(_scene_chunk, tasks))
    else:
        renderer()  # Built once here and inherited by the forked workers.
        with multiprocessing.get_context("fork").Pool(min(workers, len(tasks))) as pool:
            results = pool.map(_scene_chunk, tasks, chunksize=1)
    return [scene for chunk in results for scene in chunk]


def worker_count(workers, chunk_size):
    """The processes to use (None: all CPUs) once `workers` and `chunk_size` are checked; ValueError names the bad one."""
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; received {workers!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; received {chunk_size!r}")
    return workers
