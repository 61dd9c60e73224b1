"""Shading: the per-scene constants (`Renderer`), the floor with soft shadows, object colours, the image."""

import numpy as np

from dspn_tf.data.render.camera import HEIGHT, WIDTH, Camera, lights
from dspn_tf.data.render.properties import COLORS
from dspn_tf.data.render.raycast import (
    box_corners,
    hit_distance,
    object_centres,
    screen_boxes,
    surface_normals,
    visibility,
)


def _srgb_to_linear(c):
    return np.power(np.asarray(c, np.float64) / 255.0, 2.2)


# Base colours in linear RGB, as plain floats (they scale float32 arrays).
_LINEAR_COLORS = {name: tuple(float(v) for v in _srgb_to_linear(rgb)) for name, rgb in COLORS.items()}
_GROUND_AMBIENT = 0.085  # Linear radiance of the floor without the key light.


def _to_display_exact(linear):
    return np.clip(np.power(np.clip(linear, 0.0, None), 1 / 2.2) * 255.0 + 0.5, 0, 255)


# Linear -> sRGB-ish display bytes by table lookup, indexed by sqrt(linear):
# the square root spreads the table's steps evenly over the display range,
# so each entry spans < 0.15 display levels (the value is rounded to one level
# anyway) at a fraction of the cost of a float64 power per channel.
_DISPLAY_STEPS = 4096
_DISPLAY_TABLE = _to_display_exact(((np.arange(_DISPLAY_STEPS + 1) + 0.5) / _DISPLAY_STEPS) ** 2).astype(np.uint8)


def _to_display(linear):
    """uint8 display values of positive linear radiance (float32 array)."""
    s = np.minimum(linear, 1.0)
    s *= _DISPLAY_STEPS**2
    np.sqrt(s, out=s)
    return _DISPLAY_TABLE[s.astype(np.int32)]


class Renderer:
    """Holds everything that is the same for every scene."""

    def __init__(self):
        self.camera = Camera()
        self.key, self.fill = lights(self.camera)
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
        dist2 = np.sum(to_light**2, axis=-1)
        falloff = 110.0 * to_light[..., 2] / dist2**1.5
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


def renderer():
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = Renderer()
    return _RENDERER


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
        part = (lambda i, a=a, n=n: a[i : i + n]) if axis == 0 else (lambda i, a=a, n=n: a[:, i : i + n])
        total = part(0) + part(1)
        for i in range(2, k):
            total += part(i)
        a = total
    return a.astype(np.float32) * np.float32(1 / k**4)


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
    corners = box_corners(objects, centres, grow=1.1)
    pts = np.concatenate([corners, corners - rd.key * (corners[..., 2:] / rd.key[2])], axis=1)
    pts[..., 2] = 0.0
    region = None  # Union of the shadow boxes, in half-resolution pixels.
    for obj, box, (cx, cy, cz) in zip(objects, screen_boxes(rd, pts, pad=4 * _SHADOW_BLUR + 2), centres.tolist()):
        if box is None:
            continue
        x0, x1, y0, y1 = box[0] // 2, (box[1] + 1) // 2, box[2] // 2, (box[3] + 1) // 2
        gx = rd.ground_x2[y0:y1, x0:x1] - cx
        gy = rd.ground_y2[y0:y1, x0:x1] - cy
        sub = hard[y0 + margin : y1 + margin, x0 + margin : x1 + margin]
        sub |= np.isfinite(hit_distance(obj, gx, gy, -cz, kx, ky, kz))
        region = (
            (x0, x1, y0, y1)
            if region is None
            else (min(region[0], x0), max(region[1], x1), min(region[2], y0), max(region[3], y1))
        )
    if region is None:
        return floor
    x0, x1, y0, y1 = region
    # A tent of radius ~2 * 2 * _SHADOW_BLUR full-resolution pixels.
    soft = _tent_blur(hard[y0 : y1 + 2 * margin, x0 : x1 + 2 * margin], _SHADOW_BLUR)
    shadowed = soft > 0
    # Shaded at half resolution too: the floor's key light changes by < 0.2
    # display levels across a 2x2 block.
    shade = _to_display(_GROUND_AMBIENT + rd.ground_key2[y0:y1, x0:x1] * (1.0 - soft))
    for dy in (0, 1):
        for dx in (0, 1):
            np.copyto(floor[2 * y0 + dy : 2 * y1 : 2, 2 * x0 + dx : 2 * x1 : 2], shade, where=shadowed)
    return floor


def compose(rd, objects, centres, ids, depth, boxes):
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
        normal = surface_normals(obj, ox + t * dx, oy + t * dy, oz + t * dz)
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
    rd = renderer()
    objects = scene["objects"]
    centres = object_centres(objects)
    ids, depth, boxes = visibility(rd, objects, centres)
    return compose(rd, objects, centres, ids, depth, boxes), ids
