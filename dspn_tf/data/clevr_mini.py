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


# Base colours in linear RGB, as plain floats (they scale float32 arrays).
_LINEAR_COLORS = {name: tuple(float(v) for v in _srgb_to_linear(rgb))
                  for name, rgb in COLORS.items()}
_GROUND_AMBIENT = 0.085  # Linear radiance of the floor without the key light.


def _to_display_exact(linear):
    return np.clip(np.power(np.clip(linear, 0.0, None), 1 / 2.2) * 255.0 + 0.5, 0, 255)


# Linear -> sRGB-ish display bytes by table lookup, indexed by sqrt(linear):
# the square root spreads the table's steps evenly over the display range,
# so each entry spans < 0.15 display levels (the value is rounded to one level
# anyway) at a fraction of the cost of a float64 power per channel.
_DISPLAY_STEPS = 4096
_DISPLAY_TABLE = _to_display_exact(
    ((np.arange(_DISPLAY_STEPS + 1) + 0.5) / _DISPLAY_STEPS) ** 2).astype(np.uint8)


def _to_display(linear):
    """uint8 display values of positive linear radiance (float32 array)."""
    s = np.minimum(linear, 1.0)
    s *= _DISPLAY_STEPS ** 2
    np.sqrt(s, out=s)
    return _DISPLAY_TABLE[s.astype(np.int32)]


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
        ground = origin + t[..., None] * rays  # Shape: [H, W, 3].
        # Key light is an area light: a nearby point light gives the gradual
        # falloff of CLEVR's floor, brighter near the camera.
        key_pos = 11.0 * self.key + np.array([1.5, -1.5, 0.0])
        to_light = key_pos - ground
        dist2 = np.sum(to_light ** 2, axis=-1)
        falloff = 110.0 * to_light[..., 2] / dist2 ** 1.5
        self.ground_key = (0.16 * falloff).astype(np.float32)  # Linear radiance from the key light.
        # Its 2x2 block means, for shading shadows at half resolution.
        self.ground_key2 = self.ground_key.reshape(HEIGHT // 2, 2, WIDTH // 2, 2).mean(axis=(1, 3))
        lin = self.ground_key + np.float32(_GROUND_AMBIENT)
        self.background = _to_display_exact(lin.astype(np.float64)).astype(np.uint8)  # Grey: one channel.
        self.directions = self.camera.directions()
        # Contiguous float32 planes per component: a box sliced out of them is
        # a view, and arithmetic on separate components avoids [n, 3] reductions.
        self.ray_x, self.ray_y, self.ray_z = (np.ascontiguousarray(rays[..., k]) for k in range(3))
        # Ground points of every other pixel and row, for shadow rays.
        self.ground_x2, self.ground_y2 = (ground[::2, ::2, k].astype(np.float32) for k in range(2))
        self.key_xyz = tuple(float(v) for v in self.key)
        self.fill_xyz = tuple(float(v) for v in self.fill)


_RENDERER = None


def _renderer():
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = _Renderer()
    return _RENDERER


# ----------------------------------------------------------------------------
# Ray-object intersection, vectorised over rays.


def _centre(obj):
    """World centre of an object."""
    x, y, z = obj["3d_coords"]
    if obj["shape"] == "cube":
        # CLEVR records z = r for cubes too, but the cube rests on the floor.
        z = CUBE_HALF_SIDE * z
    return [x, y, z]


def _hit_distance(obj, ox, oy, oz, dx, dy, dz):
    """Nearest hit distance of rays with one object.

    Args:
      ox, oy, oz: ray origins relative to the object's centre (world axes);
        dx, dy, dz: unit ray directions. Each is a Python float or a float32
        array; they broadcast together (float32 geometry errors stay far
        below a pixel).
    Returns:
      float32 array of distances, inf where missed.
    """
    r = SIZES[obj["size"]]
    shape = obj["shape"]
    inf = np.float32(np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if shape == "sphere":
            b = ox * dx + oy * dy + oz * dz
            c = ox * ox + oy * oy + oz * oz - r * r
            disc = b * b - c
            t = -b - np.sqrt(disc)  # NaN where missed.
            return np.where((disc >= 0) & (t > 1e-6), t, inf)
        if shape == "cube":
            # Slabs in the cube's frame (a rotation about z).
            theta = math.radians(obj["rotation"])
            c, s = math.cos(theta), math.sin(theta)
            half = CUBE_HALF_SIDE * r
            tmin = tmax = None
            for oo, dd in ((c * ox + s * oy, c * dx + s * dy),
                           (c * oy - s * ox, c * dy - s * dx), (oz, dz)):
                inv = np.divide(1.0, dd, dtype=np.float32)
                t1 = (-half - oo) * inv
                t2 = (half - oo) * inv
                near, far = np.minimum(t1, t2), np.maximum(t1, t2)
                tmin = near if tmin is None else np.maximum(tmin, near)
                tmax = far if tmax is None else np.minimum(tmax, far)
            return np.where((tmax >= tmin) & (tmin > 1e-6), tmin, inf)
        # Cylinder with a vertical axis (symmetric about it, so no rotation).
        rc, h = CYLINDER_RADIUS * r, r
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - rc * rc
        disc = b * b - a * c
        ts = (-b - np.sqrt(disc)) / a
        zs = oz + ts * dz
        ts = np.where((disc >= 0) & (ts > 1e-6) & (np.abs(zs) <= h), ts, inf)
        # Caps: rays from above (the camera) enter through the top, rays
        # from the ground (shadows) leave through it; the bottom cap rests
        # on the floor and is never needed.
        tc = np.divide(h - oz, dz, dtype=np.float32)
        xc = ox + tc * dx
        yc = oy + tc * dy
        tc = np.where((tc > 1e-6) & (xc * xc + yc * yc <= rc * rc), tc, inf)
        return np.minimum(ts, tc)


def _normals(obj, px, py, pz):
    """World unit normals (float32 components) at surface points given
    relative to the object's centre."""
    r = SIZES[obj["size"]]
    shape = obj["shape"]
    if shape == "sphere":
        return px * (1 / r), py * (1 / r), pz * (1 / r)
    if shape == "cylinder":
        rc, h = CYLINDER_RADIUS * r, r
        on_cap = pz >= h - 1e-4
        return (np.where(on_cap, 0.0, px * (1 / rc)), np.where(on_cap, 0.0, py * (1 / rc)),
                on_cap.astype(np.float32))
    # Cube: the face hit is the local axis where the point lies on the surface.
    theta = math.radians(obj["rotation"])
    c, s = math.cos(theta), math.sin(theta)
    lx, ly = c * px + s * py, c * py - s * px
    ax, ay, az = np.abs(lx), np.abs(ly), np.abs(pz)
    on_x = (ax >= ay) & (ax >= az)
    on_y = ~on_x & (ay >= az)
    sx, sy = np.sign(lx), np.sign(ly)
    # Local face normals back in world axes: x -> (c, s, 0), y -> (-s, c, 0).
    nx = np.where(on_x, sx * c, np.where(on_y, sy * -s, 0.0))
    ny = np.where(on_x, sx * s, np.where(on_y, sy * c, 0.0))
    nz = np.where(on_x | on_y, 0.0, np.sign(pz))
    return nx, ny, nz


# Half extents of each shape's enclosing box, in units of its radius r.
_HALF_EXTENTS = {"cube": (CUBE_HALF_SIDE,) * 3, "sphere": (1.0, 1.0, 1.0),
                 "cylinder": (CYLINDER_RADIUS, CYLINDER_RADIUS, 1.0)}
_UNIT_CORNERS = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)


def _centres(objects):
    """World centres [n, 3] of the objects."""
    return np.array([_centre(obj) for obj in objects], np.float64)


def _corners(objects, centres, grow=1.0):
    """World corners [n, 8, 3] of boxes enclosing the objects (their
    projection bounds a silhouette more tightly than a bounding sphere's)."""
    half = np.array([_HALF_EXTENTS[o["shape"]] for o in objects]) * grow
    half *= np.array([SIZES[o["size"]] for o in objects])[:, None]
    theta = np.radians([o["rotation"] for o in objects])[:, None]
    local = _UNIT_CORNERS * half[:, None, :]
    lx, ly = local[..., 0], local[..., 1]
    c, s = np.cos(theta), np.sin(theta)
    # Local -> world: a rotation about z.
    return centres[:, None, :] + np.stack([lx * c - ly * s, lx * s + ly * c, local[..., 2]], -1)


def _screen_boxes(renderer, points, pad=2):
    """Per object, the integer pixel box (x0, x1, y0, y1) = [x0, x1) × [y0, y1)
    covering its projected points [n, m, 3], or None if off screen."""
    n, m, _ = points.shape
    q = renderer.camera.project(points.reshape(-1, 3)).reshape(n, m, 3)
    x0 = np.maximum(np.floor(q[..., 0].min(1)).astype(int) - pad, 0).tolist()
    x1 = np.minimum(np.ceil(q[..., 0].max(1)).astype(int) + pad, WIDTH).tolist()
    y0 = np.maximum(np.floor(q[..., 1].min(1)).astype(int) - pad, 0).tolist()
    y1 = np.minimum(np.ceil(q[..., 1].max(1)).astype(int) + pad, HEIGHT).tolist()
    return [box if box[0] < box[1] and box[2] < box[3] else None
            for box in zip(x0, x1, y0, y1)]


_SHADOW_BLUR = 2


def _tent_blur(mask, radius):
    """A box filter of `radius` applied twice along each axis (a tent) to a
    boolean mask with a margin of 2 * radius on every side, which the result
    [h - 4 * radius, w - 4 * radius] drops: float32 in [0, 1]. Integer sums
    of shifted slices, cheaper than cumulative sums for small radii."""
    k = 2 * radius + 1
    a = mask.view(np.uint8).astype(np.int16)  # Sums reach k ** 4 = 625 for radius 2.
    for axis in (0, 1, 0, 1):
        n = a.shape[axis] - 2 * radius
        part = (lambda i: a[i:i + n]) if axis == 0 else (lambda i: a[:, i:i + n])
        total = part(0) + part(1)
        for i in range(2, k):
            total += part(i)
        a = total
    return a.astype(np.float32) * np.float32(1 / k ** 4)


# ----------------------------------------------------------------------------
# Rendering.


def _shade(renderer, obj, normal, view):
    """Display colours uint8 [3, n] of surface points: Lambert (+ reflections
    and highlight for metal). `normal` and `view` are (x, y, z) tuples of
    float32 [n] arrays in world axes."""
    nx, ny, nz = normal
    vx, vy, vz = view
    kx, ky, kz = renderer.key_xyz
    fx, fy, fz = renderer.fill_xyz
    n_key = np.maximum(nx * kx + ny * ky + nz * kz, 0.0)
    n_fill = np.maximum(nx * fx + ny * fy + nz * fz, 0.0)
    # Sky light from above plus a little bounce from the floor:
    # 0.22 * hemi + 0.06 with hemi = 0.5 + 0.5 * nz.
    diffuse = 0.85 * n_key + 0.3 * n_fill + 0.11 * nz + 0.17
    hx, hy, hz = vx + kx, vy + ky, vz + kz  # Half vector, before normalising.
    n_half = np.maximum((nx * hx + ny * hy + nz * hz) / np.sqrt(hx * hx + hy * hy + hz * hz), 0.0)
    if obj["material"] == "metal":
        # Mirror-like: the colour is carried by reflections of a bright sky and
        # a grey floor, giving CLEVR metal's strong contrast, plus a sharp
        # white highlight.
        n_v = np.clip(nx * vx + ny * vy + nz * vz, 0.0, 1.0)
        refl_z = 2 * n_v * nz - vz
        sky = np.clip((refl_z + 0.05) * 3.0, 0.0, 1.0)
        env = 0.05 + 0.95 * (sky * np.sqrt(sky))  # sky ** 1.5
        grazing = 1 - n_v
        grazing *= grazing
        fresnel = 0.04 + 0.35 * (grazing * grazing)  # 0.35 * (1 - n_v) ** 4
        scale = 0.25 * diffuse + 1.1 * env
        # n_half ** 120 by squaring; below 0.5 it is < 1e-36 anyway (and the
        # floor keeps the products out of the slow subnormal range).
        h8 = np.maximum(n_half, 0.5)
        h8 *= h8
        h8 *= h8
        h8 *= h8
        h16 = h8 * h8
        h32 = h16 * h16
        h120 = h8 * h16 * h32 * (h32 * h32)
        add = 0.5 * fresnel * env + 1.6 * h120
    else:
        scale = diffuse
        h8 = n_half * n_half
        h8 *= h8
        h8 *= h8
        add = 0.05 * h8
    # Channels first: broadcasting along a length-3 last axis is slow.
    base = np.array(_LINEAR_COLORS[obj["color"]], np.float32)[:, None]
    return _to_display(base * scale + add)


def _visibility(rd, objects, centres):
    """Z-buffer pass over camera rays.

    Returns:
      ids: int8 [H, W], index of the object seen at each pixel or -1;
      depth: float32 [H, W] hit distances (inf on the floor);
      boxes: each object's screen box (or None).
    """
    depth = np.full((HEIGHT, WIDTH), np.inf, np.float32)
    ids = np.full((HEIGHT, WIDTH), -1, np.int8)
    boxes = _screen_boxes(rd, _corners(objects, centres))
    for index, (obj, box, centre) in enumerate(zip(objects, boxes, centres)):
        if box is None:
            continue
        x0, x1, y0, y1 = box
        ox, oy, oz = (rd.camera.location - centre).tolist()
        t = _hit_distance(obj, ox, oy, oz, rd.ray_x[y0:y1, x0:x1], rd.ray_y[y0:y1, x0:x1],
                          rd.ray_z[y0:y1, x0:x1])
        zbuf = depth[y0:y1, x0:x1]
        front = t < zbuf  # Z-buffer: nearer objects win regardless of order.
        np.copyto(zbuf, t, where=front)
        np.copyto(ids[y0:y1, x0:x1], index, where=front)
    return ids, depth, boxes


def _floor(rd, objects, centres):
    """The grey floor in display values, uint8 [H, W], with soft shadows
    darkening the key light's contribution."""
    floor = rd.background.copy()
    # One shadow ray per 2x2 ground pixels (pixel (2i, 2j) stands for its
    # block), then one tent blur of all objects' hard shadows for the
    # penumbra (9 rays per pixel looked the same and cost 20x more).
    margin = 2 * _SHADOW_BLUR  # Lets the blur run on plain slices.
    hard = np.zeros((HEIGHT // 2 + 2 * margin, WIDTH // 2 + 2 * margin), bool)
    kx, ky, kz = rd.key_xyz
    # The shadow lies between the object's footprint and where its corners'
    # shadows land; the box pad leaves room for the blur.
    corners = _corners(objects, centres, grow=1.1)
    pts = np.concatenate([corners, corners - rd.key * (corners[..., 2:] / rd.key[2])], axis=1)
    pts[..., 2] = 0.0
    region = None  # Union of the shadow boxes, in half-resolution pixels.
    for obj, box, (cx, cy, cz) in zip(objects, _screen_boxes(rd, pts, pad=4 * _SHADOW_BLUR + 2),
                                      centres.tolist()):
        if box is None:
            continue
        x0, x1, y0, y1 = box[0] // 2, (box[1] + 1) // 2, box[2] // 2, (box[3] + 1) // 2
        gx = rd.ground_x2[y0:y1, x0:x1] - cx
        gy = rd.ground_y2[y0:y1, x0:x1] - cy
        sub = hard[y0 + margin:y1 + margin, x0 + margin:x1 + margin]
        sub |= np.isfinite(_hit_distance(obj, gx, gy, -cz, kx, ky, kz))
        region = (x0, x1, y0, y1) if region is None else (
            min(region[0], x0), max(region[1], x1), min(region[2], y0), max(region[3], y1))
    if region is None:
        return floor
    x0, x1, y0, y1 = region
    # A tent of radius ~2 * 2 * _SHADOW_BLUR full-resolution pixels.
    soft = _tent_blur(hard[y0:y1 + 2 * margin, x0:x1 + 2 * margin], _SHADOW_BLUR)
    shadowed = soft > 0
    # Shaded at half resolution too: the floor's key light changes by < 0.2
    # display levels across a 2x2 block.
    shade = _to_display(_GROUND_AMBIENT + rd.ground_key2[y0:y1, x0:x1] * (1.0 - soft))
    for dy in (0, 1):
        for dx in (0, 1):
            np.copyto(floor[2 * y0 + dy:2 * y1:2, 2 * x0 + dx:2 * x1:2], shade, where=shadowed)
    return floor


def _compose(rd, objects, centres, ids, depth, boxes):
    """The image of a scene whose visibility pass is done: floor, shadows,
    then each object's visible pixels (only those are shaded)."""
    floor = _floor(rd, objects, centres)
    image = np.stack([floor, floor, floor], axis=-1)
    pixels = image.reshape(-1)
    for index, (obj, box, centre) in enumerate(zip(objects, boxes, centres)):
        if box is None:
            continue
        x0, x1, y0, y1 = box
        ys, xs = np.nonzero(ids[y0:y1, x0:x1] == index)
        if not len(ys):
            continue
        flat = (ys + y0) * WIDTH + (xs + x0)
        t = depth.reshape(-1)[flat]
        dx, dy, dz = (plane.reshape(-1)[flat] for plane in (rd.ray_x, rd.ray_y, rd.ray_z))
        ox, oy, oz = (rd.camera.location - centre).tolist()
        normal = _normals(obj, ox + t * dx, oy + t * dy, oz + t * dz)
        flat *= 3
        for channel, values in enumerate(_shade(rd, obj, normal, (-dx, -dy, -dz))):
            pixels[flat + channel] = values
    return image


def render_scene(scene):
    """Renders a scene dict (CLEVR schema) with the default camera.

    Returns:
      image: uint8 [320, 480, 3].
      object_ids: int8 [320, 480], index of the object seen at each pixel or -1.
    """
    rd = _renderer()
    objects = scene["objects"]
    centres = _centres(objects)
    ids, depth, boxes = _visibility(rd, objects, centres)
    return _compose(rd, objects, centres, ids, depth, boxes), ids


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
    rd = _renderer()
    rng = np.random.default_rng([seed, _SPLIT_IDS.get(split, 3), index])
    while True:
        objects = _sample_objects(rng, rd.directions)
        if objects is None:
            continue
        proj = rd.camera.project(np.array([o["3d_coords"] for o in objects]))
        for obj, p in zip(objects, proj):
            obj["pixel_coords"] = [int(round(p[0])), int(round(p[1])), float(p[2])]
        centres = _centres(objects)
        ids, depth, boxes = _visibility(rd, objects, centres)
        counts = np.bincount(ids[ids >= 0], minlength=len(objects))
        # Like CLEVR, resample scenes where an object is mostly hidden (before
        # spending time on shading them).
        if counts.min() >= MIN_PIXELS:
            break
    image = _compose(rd, objects, centres, ids, depth, boxes) if render else None
    scene = {"image_index": index, "objects": objects}
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
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {', '.join(_SPLIT_IDS)}, got {split!r}")
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    tasks = [(seed, split, s, min(s + chunk_size, count)) for s in range(0, count, chunk_size)]
    if workers == 1 or len(tasks) <= 1:
        results = list(map(_scene_chunk, tasks))
    else:
        _renderer()  # Built once here and inherited by the forked workers.
        with multiprocessing.get_context("fork").Pool(min(workers, len(tasks))) as pool:
            results = pool.map(_scene_chunk, tasks, chunksize=1)
    return [scene for chunk in results for scene in chunk]


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
