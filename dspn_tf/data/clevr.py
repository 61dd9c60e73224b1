"""CLEVR v1.0 for set prediction: images with object states and boxes.

docs/algorithm.md §8. Each example is

    {"image": float32 [S, S, 3] in [0, 1],   # S = image_size, 128 in the paper
     "state": float32 [10, 18],              # 3d_coords / 3, then one-hots
     "boxes": float32 [10, 4],               # xmin, ymin, xmax, ymax / (480, 320)
     "mask":  float32 [10]}                  # 1 for real objects, scene order

from a `CLEVR_v1.0` folder (`scenes/CLEVR_{split}_scenes.json`,
`images/{split}/<image_filename>`) or from TFDS `clevr` 3.x.

Decoding a 480x320 PNG costs far more than a training step's share of input
work, so the images are decoded and resized once into a uint8 TFRecord cache
(`dspn_tf.data.image_cache`); labels are recomputed from the scene JSON on
every run (cheap, and it keeps the cache to one kind of content). The state
layout is `dspn_tf.data.clevr_layout`.

The NumPy functions `object_state`, `object_box`, `scene_state` and
`scene_boxes` implement the formulas and can be checked by hand.
"""

import collections.abc
import json
import os

import numpy as np
import tensorflow as tf
from absl import logging

from dspn_tf.data import image_cache
from dspn_tf.data.clevr_layout import ATTRIBUTES, COLORS, COORD_SCALE, COORDS, MATERIALS, SHAPES, SIZES, STATE_DIM  # noqa: F401  (re-exported: the layout is part of this module's API)

MAX_OBJECTS = 10
IMAGE_SIZE = 128
# CLEVR renders 480x320; boxes are divided by these even for other sizes.
WIDTH, HEIGHT = 480, 320

BOX_DIM = 4

# The camera's `directions.right` in CLEVR v1.0. The renderer jitters the
# camera's position, not its orientation, so every scene we have seen (all 32
# of the shared sample) carries exactly this vector; TFDS drops `directions`,
# and this is the value the approximate TFDS boxes use. It also equals the
# ground-plane right vector of CLEVR's base camera location
# (7.48113, -6.50764) looking at the origin, to 1e-6.
NOMINAL_RIGHT = (0.6563112735748291, 0.7544902563095093, 0.0)


# --------------------------------------------------------------------------
# Labels: pure NumPy, one object or one scene at a time.


def _field(obj, name):
    try:
        return obj[name]
    except (KeyError, TypeError, IndexError):
        raise ValueError(f"missing field {name!r}") from None


def _coords(obj, name, size):
    value = _field(obj, name)
    try:
        array = np.asarray(value, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"field {name!r} is not numeric: {value!r}") from None
    if array.size < size:
        raise ValueError(f"field {name!r} has {array.size} values, expected {size}")
    if not np.all(np.isfinite(array[:size])):
        raise ValueError(f"field {name!r} is not finite: {value!r}")
    return array


def object_state(obj):
    """The 18 state features of one CLEVR object (docs/algorithm.md §8).

    Args:
      obj: a scene-JSON object dict with `3d_coords`, `material`, `color`,
        `shape` and `size`.

    Returns:
      float32 [18]: 3d_coords / 3 (x, y, z), then one-hots of material
      [rubber, metal], color [cyan, blue, yellow, purple, red, green, gray,
      brown], shape [sphere, cube, cylinder], size [large, small].

    Raises:
      ValueError: a missing field or an unknown attribute value (named).
    """
    parts = [_coords(obj, "3d_coords", 3)[:3] / COORD_SCALE]
    for name, vocabulary in ATTRIBUTES:
        value = _field(obj, name)
        if value not in vocabulary:
            raise ValueError(f"unknown {name} {value!r} (expected one of {', '.join(vocabulary)})")
        one_hot = np.zeros(len(vocabulary))
        one_hot[vocabulary.index(value)] = 1.0
        parts.append(one_hot)
    with np.errstate(over="ignore"):  # Reported below.
        state = np.concatenate(parts).astype(np.float32)
    if not np.all(np.isfinite(state)):  # A coordinate beyond float32's range.
        raise ValueError(f"field '3d_coords' is too large for float32: {obj['3d_coords']!r}")
    return state


def _right_vector(directions):
    if isinstance(directions, collections.abc.Mapping):
        directions = _field(directions, "right")
    right = np.asarray(directions, np.float64).reshape(-1)
    if right.size < 2 or not np.all(np.isfinite(right[:2])):
        raise ValueError(f"directions.right must have 2 or 3 finite values; received {right!r}")
    return right[0], right[1]


def object_box(obj, directions):
    """The bounding box of one CLEVR object (docs/algorithm.md §8, the reference's formula).

    Args:
      obj: a scene-JSON object dict with `pixel_coords`, `3d_coords`, `shape`.
      directions: the scene's `directions` dict, or its `right` vector
        (cos, sin, _).

    Returns:
      float32 [4]: (xmin / 480, ymin / 320, xmax / 480, ymax / 320), not clipped.
    """
    x, y = _coords(obj, "pixel_coords", 2)[:2]
    x1, y1, z1 = _coords(obj, "3d_coords", 3)[:3]
    shape = _field(obj, "shape")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")
    cos, sin = _right_vector(directions)
    with np.errstate(all="ignore"):  # Overflow or 0 / 0 of absurd coordinates is reported below.
        x1r = x1 * cos + y1 * sin
        # The reference rotates y with the already-rotated x; kept so that boxes
        # match the paper's numbers (docs/algorithm.md §8).
        y1r = x1r * (-sin) + y1 * cos
        h_d = 6.9 * z1 * (15 - y1r) / 2
        h_u = w_l = w_r = h_d
        if shape == "cylinder":
            d = 9.4 + y1r
            h = 6.4
            s = z1
            h_u *= (s * (h / d + 1)) / ((s * (h / d + 1)) - (s * (h - s) / d))
            h_d = h_u * (h - s + d) / (h + s + d)
            w_l *= 11 / (10 + y1r)
            w_r = w_l
        elif shape == "cube":
            h_u *= 1.3 * 10 / (10 + y1r)
            h_d = w_l = w_r = h_u
        box = np.array([(x - w_l) / WIDTH, (y - h_d) / HEIGHT, (x + w_r) / WIDTH, (y + h_u) / HEIGHT], np.float32)
    if not np.all(np.isfinite(box)):
        raise ValueError(f"the box of this object is not finite (3d_coords {x1, y1, z1}, pixel_coords {x, y})")
    return box


def scene_name(scene, index=None):
    """How errors refer to a scene: its image file name, else its index."""
    name = scene.get("image_filename") if isinstance(scene, dict) else None
    if index is None:
        return f"scene {name}" if name else "scene"
    return f"scene {index} ({name})" if name else f"scene {index}"


def _objects(scene, where, max_objects):
    objects = _field(scene, "objects") if isinstance(scene, dict) else None
    if not isinstance(objects, list):
        raise ValueError(f"{where}: field 'objects' is missing or not a list")
    if len(objects) > max_objects:
        raise OversizedSceneError(
            f"{where} has {len(objects)} objects, more than max_objects="
            f"{max_objects} (pass skip_oversized=True to skip such scenes)"
        )
    return objects


def _per_object(scene, fn, dim, max_objects, index):
    where = scene_name(scene, index)
    objects = _objects(scene, where, max_objects)
    out = np.zeros([max_objects, dim], np.float32)
    mask = np.zeros([max_objects], np.float32)
    for i, obj in enumerate(objects):
        try:
            out[i] = fn(obj)
        except ValueError as e:
            raise ValueError(f"{where}, object {i}: {e}") from None
        mask[i] = 1.0
    return out, mask


def scene_state(scene, *, max_objects=MAX_OBJECTS, index=None):
    """States of a scene's objects, zero-padded in scene order.

    Args:
      scene: a scene-JSON dict with `objects`.
      max_objects: padded size; more objects raise `OversizedSceneError`.
      index: the scene's position in its file, for error messages.

    Returns:
      (state float32 [max_objects, 18], mask float32 [max_objects]).
    """
    return _per_object(scene, object_state, STATE_DIM, max_objects, index)


def scene_boxes(scene, *, max_objects=MAX_OBJECTS, directions=None, index=None):
    """Boxes of a scene's objects, zero-padded in scene order.

    Args:
      scene: a scene-JSON dict with `objects` and `directions`.
      max_objects: padded size; more objects raise `OversizedSceneError`.
      directions: overrides the scene's own `directions` (e.g. NOMINAL_RIGHT).
      index: the scene's position in its file, for error messages.

    Returns:
      (boxes float32 [max_objects, 4], mask float32 [max_objects]).
    """
    if directions is None:
        try:
            directions = _field(scene, "directions")
            _right_vector(directions)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{scene_name(scene, index)}: directions: {e}") from None
    return _per_object(scene, lambda obj: object_box(obj, directions), BOX_DIM, max_objects, index)


class OversizedSceneError(ValueError):
    """A scene has more objects than the padded set size."""


# --------------------------------------------------------------------------
# Scene files.


def _split_name(split):
    # CLEVR's files say "val", TFDS says "validation"; accept both everywhere.
    return {"validation": "val"}.get(split, split)


def load_scenes(source, split, *, max_objects=MAX_OBJECTS, skip_oversized=False):
    """Reads a CLEVR scene file and computes every scene's labels.

    Returns:
      A dict with "scene_file", "image_paths" (list, scene order), "state"
      [n, max_objects, 18], "boxes" [n, max_objects, 4], "mask" [n, max_objects]
      and "skipped" (how many oversized scenes were dropped).
    """
    split = _split_name(split)
    scene_file = os.path.join(source, "scenes", f"CLEVR_{split}_scenes.json")
    if not os.path.isfile(scene_file):
        raise FileNotFoundError(f"CLEVR scene file {scene_file} does not exist.")
    try:
        with open(scene_file, "rb") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # Recursion: nested too deep.
        raise ValueError(f"Malformed scene JSON {scene_file}: {e}") from e
    scenes = data.get("scenes") if isinstance(data, dict) else None
    if not isinstance(scenes, list):
        raise ValueError(f"Malformed scene JSON {scene_file}: no 'scenes' list.")

    image_dir = os.path.join(source, "images", split)
    paths, states, boxes, masks = [], [], [], []
    skipped = 0
    for index, scene in enumerate(scenes):
        where = scene_name(scene if isinstance(scene, dict) else {}, index)
        try:
            filename = _field(scene, "image_filename")
            if not isinstance(filename, str) or not filename:
                raise ValueError(f"field 'image_filename' is not a file name: {filename!r}")
            state, mask = scene_state(scene, max_objects=max_objects, index=index)
            box, _ = scene_boxes(scene, max_objects=max_objects, index=index)
        except OversizedSceneError as e:
            if not skip_oversized:
                raise OversizedSceneError(f"{scene_file}: {e}") from None
            skipped += 1
            continue
        except ValueError as e:
            message = str(e)
            if not message.startswith("scene"):
                message = f"{where}: {message}"
            raise ValueError(f"{scene_file}: {message}") from None
        paths.append(os.path.join(image_dir, filename))
        states.append(state)
        boxes.append(box)
        masks.append(mask)
    if skipped:
        logging.warning(
            "CLEVR %s: skipped %d of %d scenes with more than %d objects.", split, skipped, len(scenes), max_objects
        )
    n = len(paths)
    return {
        "scene_file": scene_file,
        "image_paths": paths,
        "state": np.stack(states) if n else np.zeros([0, max_objects, STATE_DIM], np.float32),
        "boxes": np.stack(boxes) if n else np.zeros([0, max_objects, BOX_DIM], np.float32),
        "mask": np.stack(masks) if n else np.zeros([0, max_objects], np.float32),
        "skipped": skipped,
    }


# --------------------------------------------------------------------------
# Images and the cache.


def resize_image(image, image_size):
    """uint8 [H, W, C>=3] -> uint8 [S, S, 3]: alpha dropped, bilinear, antialiased."""
    image = image[..., :3]
    image = tf.image.resize(
        image, [image_size, image_size], method="bilinear", antialias=True
    )  # Shape: [S, S, 3], float in [0, 255].
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def _decode_file(path, image_size):
    # channels=4 makes RGB, grey and RGBA files alike before alpha is dropped.
    image = tf.io.decode_png(tf.io.read_file(path), channels=4)
    return resize_image(image, image_size)


# --------------------------------------------------------------------------
# Datasets.


def _finish(images, labels):
    ds = tf.data.Dataset.zip((images, labels))

    def to_example(image, label):
        return {"image": tf.cast(image, tf.float32) / 255.0, **label}

    return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _folder_dataset(source, split, *, image_size, use_cache, cache_dir, max_objects, skip_oversized):
    if not os.path.isdir(source):
        raise FileNotFoundError(f"CLEVR folder {source} does not exist.")
    scenes = load_scenes(source, split, max_objects=max_objects, skip_oversized=skip_oversized)
    paths = scenes["image_paths"]
    labels = tf.data.Dataset.from_tensor_slices({k: scenes[k] for k in ("state", "boxes", "mask")})

    def make_images():
        return tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string)).map(
            lambda p: _decode_file(p, image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    if not use_cache:
        for path in paths:  # Name a missing file now rather than mid-epoch.
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CLEVR image {path} does not exist.")
        return make_images(), labels
    key = image_cache.folder_key(scenes["scene_file"], paths, image_size, skip_oversized)
    source_id = image_cache.key_of(os.path.abspath(scenes["scene_file"]))[:10]
    prefix = f"{_split_name(split)}-{image_size}px-{source_id}-"
    images, _ = image_cache.cached_images(
        make_images,
        paths,
        cache_dir=cache_dir,
        prefix=prefix,
        key=key,
        image_size=image_size,
        expected_count=len(paths),
        extra_meta={"scene_file": os.path.abspath(scenes["scene_file"])},
    )
    return images, labels


def _tfds_remaps(builder):
    """For each attribute, TFDS's value index -> our one-hot index (TFDS numbers values in its own order)."""
    object_features = builder.info.features["objects"]
    remaps = []
    for name, vocabulary in ATTRIBUTES:
        names = object_features[name].names
        unknown = [v for v in names if v not in vocabulary]
        if unknown:
            raise ValueError(f"TFDS clevr has unknown {name} values {unknown}.")
        remaps.append(np.array([vocabulary.index(v) for v in names], np.int64))
    return remaps


def _tfds_labels(split, remaps, *, max_objects, with_boxes):
    """The map from a TFDS example to its `state`, `mask` (and `boxes`) labels."""

    def compute(file_name, coords, pixels, material, color, shape, size):
        where = f"TFDS clevr {split} scene {file_name.decode()}"
        n = coords.shape[0]
        if n > max_objects:
            raise ValueError(f"{where} has {n} objects, more than max_objects={max_objects} (pass skip_oversized=True)")
        state = np.zeros([max_objects, STATE_DIM], np.float32)
        boxes = np.zeros([max_objects, BOX_DIM], np.float32)
        mask = np.zeros([max_objects], np.float32)
        for i in range(n):
            obj = {"3d_coords": coords[i], "pixel_coords": pixels[i]}
            for (name, vocabulary), remap, value in zip(ATTRIBUTES, remaps, (material, color, shape, size)):
                obj[name] = vocabulary[remap[value[i]]]
            state[i] = object_state(obj)
            if with_boxes:
                boxes[i] = object_box(obj, NOMINAL_RIGHT)
            mask[i] = 1.0
        return state, boxes, mask

    def labels_of(example):
        objects = example["objects"]
        state, boxes, mask = tf.numpy_function(
            compute,
            [
                example["file_name"],
                objects["3d_coords"],
                objects["pixel_coords"],
                objects["material"],
                objects["color"],
                objects["shape"],
                objects["size"],
            ],
            [tf.float32, tf.float32, tf.float32],
            stateful=False,
        )
        state.set_shape([max_objects, STATE_DIM])
        boxes.set_shape([max_objects, BOX_DIM])
        mask.set_shape([max_objects])
        out = {"state": state, "mask": mask}
        if with_boxes:
            out["boxes"] = boxes
        return out

    return labels_of


def _tfds_dataset(
    split, *, image_size, use_cache, cache_dir, data_dir, max_objects, skip_oversized, with_boxes, tfds_name
):
    import tensorflow_datasets as tfds  # Deferred: slow to import, optional path.

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    split = {"val": "validation"}.get(split, split)
    labels_of = _tfds_labels(split, _tfds_remaps(builder), max_objects=max_objects, with_boxes=with_boxes)

    def small_enough(example):
        return tf.shape(example["objects"]["shape"])[0] <= max_objects

    def examples(decode_images):
        decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
        if skip_oversized:
            ds = ds.filter(small_enough)
        return ds

    labels = examples(False).map(labels_of, num_parallel_calls=tf.data.AUTOTUNE)

    def make_images():
        return examples(True).map(
            lambda e: resize_image(e["image"], image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    if not use_cache:
        return make_images(), labels
    info = builder.info
    num_examples = info.splits[split].num_examples if split in info.splits else None
    key = image_cache.key_of(
        image_cache.CACHE_VERSION,
        info.full_name,
        split,
        os.path.abspath(builder.data_dir),
        num_examples,
        image_size,
        skip_oversized,
        max_objects,
    )
    prefix = f"tfds-{split}-{image_size}px-{image_cache.key_of(info.full_name, builder.data_dir)[:10]}-"
    images, _ = image_cache.cached_images(
        make_images, [], cache_dir=cache_dir, prefix=prefix, key=key, image_size=image_size, expected_count=None
    )
    return images, labels


_APPROXIMATE_BOXES = (
    "TFDS clevr records no camera `directions`, which the box formula needs, so its boxes can only be "
    "approximate. Pass allow_approximate_boxes=True to compute them with CLEVR's nominal camera "
    "(NOMINAL_RIGHT), or with_boxes=False for state only."
)


def build_dataset(
    source,
    split,
    *,
    image_size=IMAGE_SIZE,
    cache_dir=None,
    use_cache=True,
    skip_oversized=False,
    allow_approximate_boxes=False,
    with_boxes=True,
    data_dir=None,
    tfds_name="clevr",
    max_objects=MAX_OBJECTS,
):
    """The CLEVR `tf.data.Dataset` (unbatched), in scene-file order (shuffle it as you like).

    Args:
      source: a `CLEVR_v1.0` folder, or "tfds" for TFDS `clevr` 3.x.
      split: "train", "val" (or "validation"); "test" has no scenes.
      image_size: side S of the square images (128 in the paper).
      cache_dir: where the decoded, resized uint8 images are cached; default
        `image_cache.default_dir()`. A cache entry is keyed on the scene file's size
        and mtime, every image's name, size and mtime, and `image_size`, so a
        changed source or size builds a new entry (and prunes the stale one).
      use_cache: False decodes the PNGs on every pass instead.
      skip_oversized: drop scenes with more than `max_objects` objects (their
        count is logged) instead of raising `OversizedSceneError`.
      allow_approximate_boxes: TFDS only (it drops the camera `directions`):
        True computes boxes with `NOMINAL_RIGHT`, CLEVR v1.0's camera right
        vector; False (default) with `with_boxes` raises ValueError.
      with_boxes: include "boxes" (from TFDS: False, or allow_approximate_boxes=True).
      data_dir: TFDS data directory.
      tfds_name: TFDS name, with a version if wanted ("clevr:3.0.0" skips the
        question/answer text of 3.1.0).
      max_objects: padded set size.

    Returns:
      Dataset of {"image": float32 [S, S, 3] in [0, 1], "state": float32
      [max_objects, 18], "boxes": float32 [max_objects, 4], "mask": float32
      [max_objects]}.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, received {image_size}.")
    options = {
        "image_size": image_size,
        "use_cache": use_cache,
        "cache_dir": cache_dir or image_cache.default_dir(),
        "max_objects": max_objects,
        "skip_oversized": skip_oversized,
    }
    if source == "tfds":
        if with_boxes and not allow_approximate_boxes:
            raise ValueError(_APPROXIMATE_BOXES)
        images, labels = _tfds_dataset(split, data_dir=data_dir, with_boxes=with_boxes, tfds_name=tfds_name, **options)
    else:
        images, labels = _folder_dataset(source, split, **options)
    if not with_boxes:
        labels = labels.map(lambda d: {k: v for k, v in d.items() if k != "boxes"})
    return _finish(images, labels)
