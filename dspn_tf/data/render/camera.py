"""CLEVR's camera and lights.

The camera is CLEVR's, fitted to the `3d_coords` -> `pixel_coords` pairs of real
CLEVR scenes (sub-pixel residuals): a 525-pixel focal length (Blender's 35 mm
lens on a 32 mm sensor at 480 px), principal point at the image centre, level
horizon, looking at the world origin from CLEVR's mean camera position.
"""

import numpy as np

WIDTH, HEIGHT = 480, 320
FOCAL_PX = 525.0
CAMERA_LOCATION = np.array([7.49, -6.52, 5.34])


def normalize(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class Camera:
    """Pinhole camera looking at the origin with a level horizon."""

    def __init__(self, location=CAMERA_LOCATION, focal=FOCAL_PX):
        self.location = np.asarray(location, np.float64)
        forward = normalize(-self.location)
        right = normalize(np.cross(forward, [0.0, 0.0, 1.0]))
        down = np.cross(forward, right)
        # Rows map world offsets to camera (right, down, forward) coordinates.
        self.rotation = np.stack([right, down, forward])
        self.focal = focal
        self.right, self.forward = right, forward
        ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
        # Pixel centres; pixel_coords round the projection, like CLEVR's.
        cam = np.stack([(xs + 0.5 - WIDTH / 2) / focal, (ys + 0.5 - HEIGHT / 2) / focal, np.ones_like(xs)], axis=-1)
        # Shape: [HEIGHT, WIDTH, 3], unit world-space ray directions.
        self.rays = normalize(cam @ self.rotation).astype(np.float32)

    def project(self, points):
        """World points [n, 3] -> [n, 3] of (x pixel, y pixel, depth)."""
        c = (np.asarray(points, np.float64) - self.location) @ self.rotation.T
        return np.stack(
            [WIDTH / 2 + self.focal * c[:, 0] / c[:, 2], HEIGHT / 2 + self.focal * c[:, 1] / c[:, 2], c[:, 2]], 1
        )

    def directions(self):
        """CLEVR's scene `directions`: camera axes projected on the ground."""
        right = self.right.copy()
        right[2] = 0.0
        right = normalize(right)
        behind = self.forward.copy()
        behind[2] = 0.0
        behind = normalize(behind)

        def as_list(v):
            return [float(x) for x in v]

        return {
            "above": [0.0, 0.0, 1.0],
            "behind": as_list(behind),
            "below": [0.0, 0.0, -1.0],
            "front": as_list(-behind),
            "left": as_list(-right),
            "right": as_list(right),
        }


def lights(camera):
    # Key light from the camera's right, above and slightly in front (CLEVR's
    # key light sits there too), so shadows fall back-left; a dimmer fill
    # from the left keeps the unlit sides readable.
    key = normalize(0.75 * camera.right - 0.45 * camera.forward + np.array([0, 0, 1.0]))
    fill = normalize(-0.9 * camera.right - 0.3 * camera.forward + np.array([0, 0, 0.6]))
    return key, fill
