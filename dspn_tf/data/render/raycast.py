"""Ray casting, vectorised over rays: ray-object hits, surface normals, screen boxes, the visibility pass."""

import math

import numpy as np

from dspn_tf.data.render.camera import HEIGHT, WIDTH
from dspn_tf.data.render.properties import CUBE_HALF_SIDE, CYLINDER_RADIUS, SIZES


def object_centre(obj):
    """World centre of an object."""
    x, y, z = obj["3d_coords"]
    if obj["shape"] == "cube":
        # CLEVR records z = r for cubes too, but the cube rests on the floor.
        z = CUBE_HALF_SIDE * z
    return [x, y, z]


def hit_distance(obj, ox, oy, oz, dx, dy, dz):
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
            for oo, dd in ((c * ox + s * oy, c * dx + s * dy), (c * oy - s * ox, c * dy - s * dx), (oz, dz)):
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


def surface_normals(obj, px, py, pz):
    """World unit normals (float32 components) at surface points given
    relative to the object's centre."""
    r = SIZES[obj["size"]]
    shape = obj["shape"]
    if shape == "sphere":
        return px * (1 / r), py * (1 / r), pz * (1 / r)
    if shape == "cylinder":
        rc, h = CYLINDER_RADIUS * r, r
        on_cap = pz >= h - 1e-4
        return (np.where(on_cap, 0.0, px * (1 / rc)), np.where(on_cap, 0.0, py * (1 / rc)), on_cap.astype(np.float32))
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
_HALF_EXTENTS = {
    "cube": (CUBE_HALF_SIDE,) * 3,
    "sphere": (1.0, 1.0, 1.0),
    "cylinder": (CYLINDER_RADIUS, CYLINDER_RADIUS, 1.0),
}
_UNIT_CORNERS = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)


def object_centres(objects):
    """World centres [n, 3] of the objects."""
    return np.array([object_centre(obj) for obj in objects], np.float64)


def box_corners(objects, centres, grow=1.0):
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


def screen_boxes(renderer, points, pad=2):
    """Per object, the integer pixel box (x0, x1, y0, y1) = [x0, x1) × [y0, y1)
    covering its projected points [n, m, 3], or None if off screen."""
    n, m, _ = points.shape
    q = renderer.camera.project(points.reshape(-1, 3)).reshape(n, m, 3)
    x0 = np.maximum(np.floor(q[..., 0].min(1)).astype(int) - pad, 0).tolist()
    x1 = np.minimum(np.ceil(q[..., 0].max(1)).astype(int) + pad, WIDTH).tolist()
    y0 = np.maximum(np.floor(q[..., 1].min(1)).astype(int) - pad, 0).tolist()
    y1 = np.minimum(np.ceil(q[..., 1].max(1)).astype(int) + pad, HEIGHT).tolist()
    return [box if box[0] < box[1] and box[2] < box[3] else None for box in zip(x0, x1, y0, y1)]


def visibility(rd, objects, centres):
    """Z-buffer pass over camera rays.

    Returns:
      ids: int8 [H, W], index of the object seen at each pixel or -1;
      depth: float32 [H, W] hit distances (inf on the floor);
      boxes: each object's screen box (or None).
    """
    depth = np.full((HEIGHT, WIDTH), np.inf, np.float32)
    ids = np.full((HEIGHT, WIDTH), -1, np.int8)
    boxes = screen_boxes(rd, box_corners(objects, centres))
    for index, (obj, box, centre) in enumerate(zip(objects, boxes, centres)):
        if box is None:
            continue
        x0, x1, y0, y1 = box
        ox, oy, oz = (rd.camera.location - centre).tolist()
        t = hit_distance(obj, ox, oy, oz, rd.ray_x[y0:y1, x0:x1], rd.ray_y[y0:y1, x0:x1], rd.ray_z[y0:y1, x0:x1])
        zbuf = depth[y0:y1, x0:x1]
        front = t < zbuf  # Z-buffer: nearer objects win regardless of order.
        np.copyto(zbuf, t, where=front)
        np.copyto(ids[y0:y1, x0:x1], index, where=front)
    return ids, depth, boxes
