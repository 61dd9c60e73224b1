"""Offline generator of CLEVR-format scenes (`python -m dspn_tf.data.clevr_mini`).

Renders procedurally generated scenes of 3–10 CLEVR objects (3 shapes, 8
colours, 2 sizes, 2 materials) on a ground plane with a vectorised NumPy ray
caster, and writes them in the `CLEVR_v1.0` layout and scene-JSON schema so
that `dspn_tf.data.clevr` reads them unchanged:

    OUT/CLEVR_v1.0/images/{split}/CLEVR_{split}_{index:06d}.png   480×320 RGB
    OUT/CLEVR_v1.0/scenes/CLEVR_{split}_scenes.json

The camera is CLEVR's, fitted to the `3d_coords` → `pixel_coords` pairs of real
CLEVR scenes (sub-pixel residuals): a 525-pixel focal length (Blender's 35 mm
lens on a 32 mm sensor at 480 px), principal point at the image centre, level
horizon, looking at the world origin from CLEVR's mean camera position. Scene
`directions` are derived from the same camera, so the SPEC section 7 box
formula lands on the rendered objects.

Output is a pure function of the seed: each scene draws from its own
`(seed, split, index)` random stream, so the worker count does not matter.
"""

import argparse
import json
import math
import multiprocessing
import os
import shutil
import struct
import tempfile
import zlib

import numpy as np

WIDTH, HEIGHT = 480, 320
FOCAL_PX = 525.0
CAMERA_LOCATION = np.array([7.49, -6.52, 5.34])

SHAPES = ("cube", "sphere", "cylinder")
# CLEVR's properties.json colours (sRGB, 0..255).
COLORS = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SIZES = {"large": 0.7, "small": 0.35}
MATERIALS = ("rubber", "metal")

# Placement rules copied in spirit from CLEVR's generator: objects in
# [-3, 3]^2, surfaces at least MIN_DIST apart, and every pair separated by at
# least MARGIN along left/right and front/behind so spatial relations are
# unambiguous; every object must keep MIN_PIXELS visible pixels.
MIN_OBJECTS, MAX_OBJECTS = 3, 10
MIN_DIST = 0.25
MARGIN = 0.4
MIN_PIXELS = 200
RELATION_EPS = 0.2

# Shape extents relative to the CLEVR "radius" r (= centre height), measured on
# real CLEVR renders with the fitted camera: cubes and cylinders are a little
# narrower than 2r, all objects are 2r tall and rest on the ground.
CUBE_HALF_SIDE = 0.9
CYLINDER_RADIUS = 0.88

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


# ----------------------------------------------------------------------------
# Camera and lights.


def _normalize(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class _Camera:
    """Pinhole camera looking at the origin with a level horizon."""

    def __init__(self, location=CAMERA_LOCATION, focal=FOCAL_PX):
        self.location = np.asarray(location, np.float64)
        forward = _normalize(-self.location)
        right = _normalize(np.cross(forward, [0.0, 0.0, 1.0]))
        down = np.cross(forward, right)
        # Rows map world offsets to camera (right, down, forward) coordinates.
        self.rotation = np.stack([right, down, forward])
        self.focal = focal
        self.right, self.forward = right, forward
        ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
        # Pixel centres; pixel_coords round the projection, like CLEVR's.
        cam = np.stack(
            [(xs + 0.5 - WIDTH / 2) / focal, (ys + 0.5 - HEIGHT / 2) / focal,
             np.ones_like(xs)], axis=-1)
        # Shape: [HEIGHT, WIDTH, 3], unit world-space ray directions.
        self.rays = _normalize(cam @ self.rotation).astype(np.float32)

    def project(self, points):
        """World points [n, 3] -> [n, 3] of (x pixel, y pixel, depth)."""
        c = (np.asarray(points, np.float64) - self.location) @ self.rotation.T
        return np.stack([WIDTH / 2 + self.focal * c[:, 0] / c[:, 2],
                         HEIGHT / 2 + self.focal * c[:, 1] / c[:, 2], c[:, 2]], 1)

    def directions(self):
        """CLEVR's scene `directions`: camera axes projected on the ground."""
        right = self.right.copy()
        right[2] = 0.0
        right = _normalize(right)
        behind = self.forward.copy()
        behind[2] = 0.0
        behind = _normalize(behind)
        as_list = lambda v: [float(x) for x in v]
        return {
            "above": [0.0, 0.0, 1.0], "behind": as_list(behind),
            "below": [0.0, 0.0, -1.0], "front": as_list(-behind),
            "left": as_list(-right), "right": as_list(right),
        }


def _lights(camera):
    # Key light from the camera's right, above and slightly in front (CLEVR's
    # key light sits there too), so shadows fall back-left; a dimmer fill
    # from the left keeps the unlit sides readable.
    key = _normalize(0.75 * camera.right - 0.45 * camera.forward + np.array([0, 0, 1.0]))
    fill = _normalize(-0.9 * camera.right - 0.3 * camera.forward + np.array([0, 0, 0.6]))
    return key, fill


def _srgb_to_linear(c):
    return np.power(np.asarray(c, np.float64) / 255.0, 2.2)


class _Renderer:
    """Holds everything that is the same for every scene."""

    def __init__(self):
        self.camera = _Camera()
        self.key, self.fill = _lights(self.camera)
        rays = self.camera.rays
        origin = self.camera.location
        # Every ray hits the ground (the horizon is above the image), so the
        # background is a precomputed shaded plane.
        t = -origin[2] / rays[..., 2]
        self.ground = origin + t[..., None] * rays  # Shape: [H, W, 3].
        # Key light is an area light: a nearby point light gives the gradual
        # falloff of CLEVR's floor, brighter near the camera.
        key_pos = 11.0 * self.key + np.array([1.5, -1.5, 0.0])
        to_light = key_pos - self.ground
        dist2 = np.sum(to_light ** 2, axis=-1)
        falloff = 110.0 * to_light[..., 2] / dist2 ** 1.5
        self.ground_key = (0.16 * falloff).astype(np.float32)  # Linear radiance from the key light.
        self.ground_ambient = np.full(falloff.shape, 0.085, np.float32)
        lin = self.ground_key + self.ground_ambient
        self.background = _to_display(lin[..., None] * np.ones(3)).astype(np.uint8)
        self.directions = self.camera.directions()


def _to_display(linear):
    return np.clip(np.power(np.clip(linear, 0.0, None), 1 / 2.2) * 255.0 + 0.5, 0, 255)


_RENDERER = None


def _renderer():
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = _Renderer()
    return _RENDERER


# ----------------------------------------------------------------------------
# Ray-object intersection, vectorised over rays.


def _local_frame(obj):
    """Centre and rotation (world->local about z) of an object."""
    x, y, z = obj["3d_coords"]
    if obj["shape"] == "cube":
        # CLEVR records z = r for cubes too, but the cube rests on the floor.
        z = CUBE_HALF_SIDE * z
    theta = np.radians(obj["rotation"])
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    return np.array([x, y, z]), rot


def _intersect(obj, origins, dirs, normals=True):
    """Nearest hit distance (and world normal) of rays with one object.

    Args:
      origins: [n, 3] or [3] ray origins; dirs: [n, 3] unit directions.
      normals: also return normals (shadow rays only need the distance).
    Returns:
      t: float32 [n], inf where missed; normal: [n, 3] world-space unit
      normals (zero where missed), or None.
    """
    centre, rot = _local_frame(obj)
    r = SIZES[obj["size"]]
    # float32 halves memory traffic; geometry errors stay far below a pixel.
    rot = rot.astype(np.float32)
    o = ((origins - centre) @ rot.T).astype(np.float32)
    d = (dirs @ rot.T).astype(np.float32)
    o = np.broadcast_to(o, d.shape)
    ox, oy, oz = o[:, 0], o[:, 1], o[:, 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    shape = obj["shape"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if shape == "sphere":
            b = ox * dx + oy * dy + oz * dz
            c = ox * ox + oy * oy + oz * oz - r * r
            disc = b * b - c
            t = -b - np.sqrt(disc)  # NaN where missed.
            t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
        elif shape == "cube":
            s = CUBE_HALF_SIDE * r
            tmin = np.full(len(d), -np.inf, np.float32)
            tmax = np.full(len(d), np.inf, np.float32)
            for oo, dd in ((ox, dx), (oy, dy), (oz, dz)):
                inv = 1.0 / dd
                t1 = (-s - oo) * inv
                t2 = (s - oo) * inv
                np.maximum(tmin, np.minimum(t1, t2), out=tmin)
                np.minimum(tmax, np.maximum(t1, t2), out=tmax)
            t = np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)
        else:  # cylinder with a vertical axis
            rc, h = CYLINDER_RADIUS * r, r
            a = dx * dx + dy * dy
            b = ox * dx + oy * dy
            c = ox * ox + oy * oy - rc * rc
            disc = b * b - a * c
            ts = (-b - np.sqrt(disc)) / a
            zs = oz + ts * dz
            ts = np.where((disc >= 0) & (ts > 1e-6) & (np.abs(zs) <= h), ts, np.inf)
            # Caps: rays from above (the camera) enter through the top, rays
            # from the ground (shadows) leave through it; the bottom cap rests
            # on the floor and is never needed.
            tc = (h - oz) / dz
            xc = ox + tc * dx
            yc = oy + tc * dy
            tc = np.where((tc > 1e-6) & (xc * xc + yc * yc <= rc * rc), tc, np.inf)
            t = np.minimum(ts, tc)
    t = t.astype(np.float32)
    if not normals:
        return t, None
    normal = np.zeros(d.shape, np.float32)
    hit = np.isfinite(t)
    p = o[hit] + t[hit, None] * d[hit]
    if shape == "sphere":
        normal[hit] = p / r
    elif shape == "cube":
        # The face hit is the axis where the point lies on the surface.
        axis = np.argmax(np.abs(p), axis=1)
        rows = np.nonzero(hit)[0]
        normal[rows, axis] = np.sign(p[np.arange(len(rows)), axis])
    else:
        rc, h = CYLINDER_RADIUS * r, r
        on_cap = p[:, 2] >= h - 1e-4
        n = np.zeros_like(p)
        n[:, 0] = np.where(on_cap, 0, p[:, 0] / rc)
        n[:, 1] = np.where(on_cap, 0, p[:, 1] / rc)
        n[:, 2] = on_cap
        normal[hit] = n
    # Local -> world normals (rot is orthonormal).
    return t, normal @ rot


def _object_corners(obj, grow=1.0):
    """World corners [8, 3] of a box enclosing the object (its projection
    bounds the silhouette more tightly than a bounding sphere's)."""
    centre, rot = _local_frame(obj)
    r = SIZES[obj["size"]]
    half = {"cube": (CUBE_HALF_SIDE * r,) * 3, "sphere": (r, r, r),
            "cylinder": (CYLINDER_RADIUS * r, CYLINDER_RADIUS * r, r)}[obj["shape"]]
    local = _UNIT_CORNERS * np.array(half) * grow
    return centre + local @ rot


_UNIT_CORNERS = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)


def _screen_box(renderer, points, pad=2):
    """Integer pixel box [x0, x1) × [y0, y1) covering projected points, or None."""
    q = renderer.camera.project(points)
    x0 = max(int(np.floor(q[:, 0].min())) - pad, 0)
    x1 = min(int(np.ceil(q[:, 0].max())) + pad, WIDTH)
    y0 = max(int(np.floor(q[:, 1].min())) - pad, 0)
    y1 = min(int(np.ceil(q[:, 1].max())) + pad, HEIGHT)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, x1, y0, y1


_SHADOW_BLUR = 2


def _box_blur(a, radius):
    """Separable box filter (zero outside), via cumulative sums."""
    k = 2 * radius + 1
    h, w = a.shape
    c = np.zeros((h + k, w), np.float32)
    np.cumsum(a, axis=0, out=c[radius + 1:h + radius + 1])
    c[h + radius + 1:] = c[h + radius]
    a = (c[k:] - c[:h]) / k
    c = np.zeros((h, w + k), np.float32)
    np.cumsum(a, axis=1, out=c[:, radius + 1:w + radius + 1])
    c[:, w + radius + 1:] = c[:, w + radius:w + radius + 1]
    return (c[:, k:] - c[:, :w]) / k


# ----------------------------------------------------------------------------
# Rendering.


def _shade(renderer, obj, normal, view):
    """Linear RGB of surface points: Lambert (+ reflections and highlight for metal)."""
    base = _srgb_to_linear(COLORS[obj["color"]])
    key, fill = renderer.key, renderer.fill
    n_key = np.clip(normal @ key, 0, None)
    n_fill = np.clip(normal @ fill, 0, None)
    # Sky light from above plus a little bounce from the floor.
    hemi = 0.5 + 0.5 * normal[:, 2]
    diffuse = 0.85 * n_key + 0.3 * n_fill + 0.22 * hemi + 0.06
    half = _normalize(key + view)
    n_half = np.clip(np.sum(normal * half, axis=1), 0, None)
    if obj["material"] == "metal":
        # Mirror-like: the colour is carried by reflections of a bright sky and
        # a grey floor, giving CLEVR metal's strong contrast, plus a sharp
        # white highlight.
        n_v = np.clip(np.sum(normal * view, axis=1), 0, 1)
        refl = 2 * n_v[:, None] * normal - view
        sky = np.clip((refl[:, 2] + 0.05) * 3.0, 0, 1) ** 1.5
        env = 0.05 + 0.95 * sky
        fresnel = 0.04 + 0.35 * (1 - n_v) ** 4
        col = base[None] * (0.25 * diffuse + 1.1 * env)[:, None]
        col += (fresnel * env)[:, None] * 0.5
        col += (1.6 * n_half ** 120)[:, None]
        return col
    col = base[None] * diffuse[:, None]
    col += (0.05 * n_half ** 8)[:, None]
    return col


def render_scene(scene):
    """Renders a scene dict (CLEVR schema) with the default camera.

    Returns:
      image: uint8 [320, 480, 3].
      object_ids: int8 [320, 480], index of the object seen at each pixel or -1.
    """
    rd = _renderer()
    objects = scene["objects"]
    image = rd.background.copy()  # Shape: [H, W, 3], uint8 display space.
    # Soft ground shadows, darkening only the key light's contribution: one
    # shadow ray per 2x2 ground pixels, then a box blur for the penumbra
    # (9 rays per pixel looked the same and cost 20x more).
    lit = np.ones((HEIGHT, WIDTH), np.float32)
    region = None  # Union of the shadow boxes.
    for obj in objects:
        # The shadow lies between the object's footprint and where its
        # corners' shadows land; the box pad leaves room for the blur.
        corners = _object_corners(obj, grow=1.1)
        pts = np.concatenate([corners, corners - rd.key * (corners[:, 2:] / rd.key[2])])
        pts[:, 2] = 0.0
        box = _screen_box(rd, pts, pad=4 * _SHADOW_BLUR + 2)
        if box is None:
            continue
        x0, x1, y0, y1 = box
        ground = rd.ground[y0:y1:2, x0:x1:2]
        gh, gw = ground.shape[:2]
        ground = ground.reshape(-1, 3)
        t, _ = _intersect(obj, ground, np.broadcast_to(rd.key, ground.shape), normals=False)
        hard = np.isfinite(t).reshape(gh, gw).astype(np.float32)
        # Blurring at half resolution: a tent of radius ~2 * 2 * _SHADOW_BLUR px.
        soft = _box_blur(_box_blur(hard, _SHADOW_BLUR), _SHADOW_BLUR)
        soft = np.repeat(np.repeat(soft, 2, axis=0), 2, axis=1)[:y1 - y0, :x1 - x0]
        lit[y0:y1, x0:x1] = np.minimum(lit[y0:y1, x0:x1], 1.0 - soft)
        region = box if region is None else (min(region[0], x0), max(region[1], x1),
                                             min(region[2], y0), max(region[3], y1))
    if region is not None:
        x0, x1, y0, y1 = region
        sub = lit[y0:y1, x0:x1]
        shadowed = sub < 1.0
        lin = (rd.ground_ambient[y0:y1, x0:x1][shadowed]
               + rd.ground_key[y0:y1, x0:x1][shadowed] * sub[shadowed])
        image[y0:y1, x0:x1][shadowed] = _to_display(lin)[:, None]

    depth = np.full((HEIGHT, WIDTH), np.inf, np.float32)
    ids = np.full((HEIGHT, WIDTH), -1, np.int8)
    for index, obj in enumerate(objects):
        box = _screen_box(rd, _object_corners(obj))
        if box is None:
            continue
        x0, x1, y0, y1 = box
        dirs = rd.camera.rays[y0:y1, x0:x1].reshape(-1, 3)
        t, normal = _intersect(obj, rd.camera.location, dirs)
        t = t.reshape(y1 - y0, x1 - x0)
        zbuf = depth[y0:y1, x0:x1]
        front = t < zbuf  # Z-buffer: nearer objects win regardless of order.
        if not front.any():
            continue
        flat = front.reshape(-1)
        zbuf[front] = t[front]
        ids[y0:y1, x0:x1][front] = index
        image[y0:y1, x0:x1][front] = _to_display(_shade(rd, obj, normal[flat], -dirs[flat]))
    return image, ids


# ----------------------------------------------------------------------------
# Scene sampling.


def _relationships(objects, directions):
    coords = np.array([o["3d_coords"] for o in objects])
    rel = {}
    for name in ("right", "behind", "front", "left"):
        dots = (coords[None, :, :] - coords[:, None, :]) @ np.array(directions[name])
        rel[name] = [[j for j in range(len(objects)) if j != i and dots[i, j] > RELATION_EPS]
                     for i in range(len(objects))]
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
            for ox, oy, orad in ((o["3d_coords"][0], o["3d_coords"][1], SIZES[o["size"]])
                                 for o in placed):
                dx, dy = x - ox, y - oy
                if (math.hypot(dx, dy) - r - orad < MIN_DIST
                        or abs(dx * rx + dy * ry) < MARGIN or abs(dx * bx + dy * by) < MARGIN):
                    ok = False
                    break
            if ok:
                break
        else:
            return None
        placed.append({
            "color": color_names[int(rng.integers(len(color_names)))],
            "size": size,
            "rotation": float(rng.uniform(0, 360)),
            "shape": SHAPES[int(rng.integers(len(SHAPES)))],
            "3d_coords": [x, y, r],
            "material": MATERIALS[int(rng.integers(len(MATERIALS)))],
        })
    return placed


def make_scene(seed, split, index):
    """Samples and renders one scene.

    Returns:
      (scene dict in CLEVR's schema, uint8 image [320, 480, 3]). The result
      depends only on (seed, split, index).
    """
    rd = _renderer()
    rng = np.random.default_rng([seed, _SPLIT_IDS.get(split, 3), index])
    while True:
        objects = _sample_objects(rng, rd.directions)
        if objects is None:
            continue
        proj = rd.camera.project(np.array([o["3d_coords"] for o in objects]))
        for obj, p in zip(objects, proj):
            obj["pixel_coords"] = [int(round(p[0])), int(round(p[1])), float(p[2])]
        scene = {"image_index": index, "objects": objects}
        image, ids = render_scene(scene)
        counts = np.bincount(ids[ids >= 0], minlength=len(objects))
        # Like CLEVR, resample scenes where an object is mostly hidden.
        if counts.min() >= MIN_PIXELS:
            break
    scene["relationships"] = _relationships(objects, rd.directions)
    scene["image_filename"] = _image_name(split, index)
    scene["split"] = split
    scene["directions"] = rd.directions
    return scene, image


def _image_name(split, index):
    return f"CLEVR_{split}_{index:06d}.png"


# ----------------------------------------------------------------------------
# Output.


def encode_png(image):
    """Fast PNG of a uint8 [h, w, 3] image.

    zlib level 1 with the "up" filter: CLEVR-like images are smooth
    vertically, so this is ~3x faster than PIL's default for similar size.
    """
    h, w, _ = image.shape
    rows = image.reshape(h, w * 3)
    up = np.empty((h, w * 3 + 1), np.uint8)
    up[:, 0] = 2  # PNG filter type 2: difference with the row above.
    up[0, 1:] = rows[0]
    up[1:, 1:] = rows[1:] - rows[:-1]  # uint8 wraps, as PNG's filter does.
    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(up.tobytes(), 1)) + chunk(b"IEND", b""))


def _render_chunk(args):
    seed, split, start, stop, image_dir = args
    scenes = []
    for index in range(start, stop):
        scene, image = make_scene(seed, split, index)
        with open(os.path.join(image_dir, scene["image_filename"]), "wb") as f:
            f.write(encode_png(image))
        scenes.append(scene)
    return scenes


def generate(out_dir, *, num_train, num_val, seed=0, workers=None, chunk_size=50,
             overwrite=False):
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
    """
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if num_train + num_val == 0:
        raise ValueError("num_train and num_val are both 0: nothing to generate")
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    final = os.path.join(out_dir, "CLEVR_v1.0")
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True (--overwrite) "
                              "to replace it")
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
            tasks[split] = [(seed, split, s, min(s + chunk_size, count), image_dir)
                            for s in range(0, count, chunk_size)]
        all_tasks = [t for split in tasks for t in tasks[split]]
        if workers == 1:
            results = list(map(_render_chunk, all_tasks))
        else:
            # Fork keeps start-up cheap; the renderer's tables are rebuilt per
            # process only if not already built in the parent.
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers) as pool:
                results = pool.map(_render_chunk, all_tasks, chunksize=1)
        done = 0
        for split, split_tasks in tasks.items():
            scenes = [s for r in results[done:done + len(split_tasks)] for s in r]
            done += len(split_tasks)
            payload = {"info": {"split": split, "license": "CC0 (procedurally generated)",
                                "version": "1.0", "generator": "dspn_tf.data.clevr_mini",
                                "seed": int(seed)},
                       "scenes": scenes}
            with open(os.path.join(root, "scenes", f"CLEVR_{split}_scenes.json"), "w") as f:
                json.dump(payload, f)
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=".CLEVR_v1.0.old-", dir=out_dir)
            os.rename(final, os.path.join(old, "CLEVR_v1.0"))
            os.rename(root, final)
            shutil.rmtree(old)
        else:
            os.rename(root, final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dspn_tf.data.clevr_mini",
        description="Render procedurally generated scenes in the CLEVR v1.0 layout.")
    parser.add_argument("--out", required=True, help="parent folder of CLEVR_v1.0")
    parser.add_argument("--train", type=int, default=0, help="number of train scenes")
    parser.add_argument("--val", type=int, default=0, help="number of val scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="processes (default: all CPUs); output does not depend on it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT/CLEVR_v1.0")
    args = parser.parse_args(argv)
    try:
        path = generate(args.out, num_train=args.train, num_val=args.val, seed=args.seed,
                        workers=args.workers, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    print(f"wrote {args.train} train and {args.val} val scenes to {path}")


if __name__ == "__main__":
    main()
