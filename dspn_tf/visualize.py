"""Pictures of the decoder's progression for TensorBoard (NumPy only).

Each function returns a uint8 `[height, width, 3]` array, one panel per
decoder step followed by the target, like the paper's Figure 1.
"""

import numpy as np
import scipy.optimize

from dspn_tf.data.clevr_layout import COORD_SCALE, COORDS
from dspn_tf.data.render.properties import COLORS, SIZES

_PANEL_GAP = 2


def _row(panels):
    height = panels[0].shape[0]
    gap = np.full((height, _PANEL_GAP, 3), 255, np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)


def _points_panel(points, mask, size):
    """Points (row, col) in [0, 1] drawn as square dots, darkness (opacity) by mask value."""
    dot = max(2, size // 40)  # 2 px at 64, 3 px at the default 128.
    panel = np.full((size, size), 255.0)
    mask = np.clip(np.asarray(mask, np.float64), 0.0, 1.0)
    rc = np.clip(np.round(np.asarray(points[:, :2]) * (size - dot)), 0, size - dot).astype(int)
    # Draw faint points first so confident ones stay visible on top.
    for i in np.argsort(mask):
        r, c = rc[i]
        panel[r : r + dot, c : c + dot] = np.minimum(panel[r : r + dot, c : c + dot], 255.0 * (1.0 - mask[i]))
    return np.repeat(panel.astype(np.uint8)[..., None], 3, axis=-1)


def set_progression(sets, masks, target_set, target_mask, size=128, baseline=None):
    """set-MNIST: the predicted point set at every step, then the target.

    Args:
        sets: `[steps, N, 2]` (row, col) in [0, 1].
        masks: `[steps, N]`.
        target_set: `[N, 2]`.
        target_mask: `[N]`.
        size: Panel side in pixels.
        baseline: Optional `(set [N, 2], mask [N])` of another model (e.g. the
            MLP baseline), drawn after the steps and before the target, as in
            the paper's Figure 1.
    """
    panels = [_points_panel(s, m, size) for s, m in zip(sets, masks)]
    if baseline is not None:
        panels.append(_points_panel(*baseline, size))
    panels.append(_points_panel(target_set, target_mask, size))
    return _row(panels)


def _draw_box(canvas, box, color, alpha):
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = box
    x0, x1 = sorted((int(round(x0 * (w - 1))), int(round(x1 * (w - 1)))))
    y0, y1 = sorted((int(round(y0 * (h - 1))), int(round(y1 * (h - 1)))))
    if x1 < 0 or y1 < 0 or x0 >= w or y0 >= h:
        return
    xs = slice(max(x0, 0), min(x1, w - 1) + 1)
    ys = slice(max(y0, 0), min(y1, h - 1) + 1)
    color = np.asarray(color, np.float64)
    for rows, cols in (
        (slice(max(y0, 0), max(y0, 0) + 1), xs),
        (slice(min(y1, h - 1), min(y1, h - 1) + 1), xs),
        (ys, slice(max(x0, 0), max(x0, 0) + 1)),
        (ys, slice(min(x1, w - 1), min(x1, w - 1) + 1)),
    ):
        canvas[rows, cols] = (1 - alpha) * canvas[rows, cols] + alpha * color


def _enlarged(image, size):
    """`[H, W, 3]` float image in [0, 1] enlarged (nearest neighbour) to `[size, size, 3]` in [0, 255]."""
    rows = np.minimum((np.arange(size) * image.shape[0]) // size, image.shape[0] - 1)
    cols = np.minimum((np.arange(size) * image.shape[1]) // size, image.shape[1] - 1)
    return np.clip(np.asarray(image, np.float64)[rows][:, cols], 0.0, 1.0) * 255.0


def boxes_progression(image, boxes, masks, target_boxes, target_mask, threshold=0.0, size=192, baseline=None):
    """CLEVR boxes: the image with each step's boxes (opacity = mask), then the target.

    Args:
        image: `[H, W, 3]` float in [0, 1].
        boxes: `[steps, N, 4]` (xmin, ymin, xmax, ymax) in [0, 1].
        masks: `[steps, N]`.
        target_boxes: `[M, 4]`.
        target_mask: `[M]`.
        threshold: Boxes whose mask is at most this are not drawn.
        size: Panel side in pixels (the image is enlarged to it, so boxes stay readable).
        baseline: Optional `(boxes [N, 4], mask [N])` of another model, drawn
            after the steps and before the target.
    """
    base = _enlarged(image, size)
    drawn = list(zip(boxes, masks)) + ([baseline] if baseline is not None else []) + [(target_boxes, target_mask)]
    panels = []
    for step_boxes, step_mask in drawn:
        canvas = base.copy()
        for box, m in zip(step_boxes, np.clip(step_mask, 0.0, 1.0)):
            if m > threshold:
                _draw_box(canvas, box, (255, 40, 40), float(m))
        panels.append(canvas.astype(np.uint8))
    return _row(panels)


def state_table(pred, pred_mask, target, target_mask, names):
    """Markdown table of predicted versus true object states.

    Args:
        pred: `[N, 18]` predicted state (coords / 3, then one-hot groups).
        pred_mask: `[N]`.
        target: `[M, 18]`.
        target_mask: `[M]`.
        names: `(("material", (...)), ("color", (...)), ...)` attribute groups.
    """

    def describe(row):
        coords = ", ".join(f"{COORD_SCALE * v:.2f}" for v in row[COORDS])
        words, start = [], COORDS.stop
        for _, values in names:
            words.append(values[int(np.argmax(row[start : start + len(values)]))])
            start += len(values)
        return coords, " ".join(words)

    lines = [
        "| slot | mask | predicted (x, y, z) | predicted object | true (x, y, z) | true object |",
        "|---|---|---|---|---|---|",
    ]
    # Pair each true object with a predicted slot by the nearest-position
    # matching, so a row compares a prediction with the object it stands for.
    real = np.flatnonzero(np.asarray(target_mask) > 0.5)
    cost = np.linalg.norm(pred[:, None, COORDS] - target[None, real, COORDS], axis=-1)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    partner = {int(r): int(real[c]) for r, c in zip(rows, cols)}
    for i in np.argsort(-np.asarray(pred_mask), kind="stable"):
        pc, pw = describe(pred[i])
        tc, tw = describe(target[partner[i]]) if i in partner else ("", "")
        lines.append(f"| {i} | {pred_mask[i]:.2f} | {pc} | {pw} | {tc} | {tw} |")
    return "\n".join(lines)


def _attributes(row, names):
    """{group: value} of the argmax of each one-hot group of a state row."""
    out, start = {}, COORDS.stop
    for group, values in names:
        out[group] = values[int(np.argmax(row[start : start + len(values)]))]
        start += len(values)
    return out


def _marker(shape, dx, dy, r):
    """Pixels (offsets dx, dy from the centre, y down) inside a marker of radius r."""
    if shape == "cube":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "cylinder":  # An upward triangle, so it is not mistaken for a sphere.
        t = (dy + r) / (2.0 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= 1.1 * r * t)
    return dx * dx + dy * dy <= r * r  # Sphere (and anything else): a disc.


def _draw_object(canvas, xx, yy, cx, cy, r, attrs, alpha, outline):
    """`canvas` with one object's marker at (cx, cy), radius r, blended with opacity `alpha`.

    The marker's shape is the object's shape, its fill the object's colour with a
    2 px border of `outline` times that colour, and a white highlight if metal.
    """
    dx, dy = xx - cx, yy - cy
    inside = _marker(attrs.get("shape"), dx, dy, r)
    if not inside.any():
        return canvas
    border = inside & ~_marker(attrs.get("shape"), dx, dy, max(r - 2.0, 0.0))
    colour = np.asarray(COLORS.get(attrs.get("color"), (0, 0, 0)), np.float64)
    fill = np.where(border[..., None], outline * colour, colour)
    if attrs.get("material") == "metal":  # A white highlight marks metal.
        shine = (dx + 0.3 * r) ** 2 + (dy + 0.3 * r) ** 2 <= (0.25 * r) ** 2
        fill = np.where(shine[..., None], 255.0, fill)
    return np.where(inside[..., None], (1.0 - alpha) * canvas + alpha * fill, canvas)


def _objects_panel(states, mask, names, size, extent):
    """Top-down (x right, y up) view of a set of object states on a light floor."""
    canvas = np.full((size, size, 3), 236.0)
    scale = size / (2.0 * extent)  # Pixels per scene unit.
    # The [-3, 3]^2 area where CLEVR places objects, as a faint frame.
    lo, hi = int(round((extent - 3.0) * scale)), int(round((extent + 3.0) * scale)) - 1
    canvas[lo : hi + 1, [lo, hi]] = canvas[[lo, hi], lo : hi + 1] = 200.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = np.clip(np.asarray(mask, np.float64), 0.0, 1.0)
    # Faint slots first, so confident ones are drawn on top.
    for i in np.argsort(mask, kind="stable"):
        if mask[i] <= 0.0:
            continue
        attrs = _attributes(states[i], names)
        cx = (COORD_SCALE * states[i][0] + extent) * scale
        cy = (extent - COORD_SCALE * states[i][1]) * scale
        r = SIZES.get(attrs.get("size"), 0.5) * scale
        canvas = _draw_object(canvas, xx, yy, cx, cy, r, attrs, mask[i], outline=0.45)
    return canvas.astype(np.uint8)


def state_progression(states, masks, target, target_mask, names, size=160, extent=3.5, baseline=None):
    """CLEVR object states seen from above: every decoder step, then the truth.

    Each object is drawn at its (x, y) position with its predicted colour,
    its shape as the marker (sphere: disc, cube: square, cylinder: triangle),
    its size as the marker size (to scale), a white highlight if metal, and
    its mask value as its opacity.

    Args:
        states: `[steps, N, 18]` predicted states (coords / 3, then one-hots).
        masks: `[steps, N]`.
        target: `[M, 18]`.
        target_mask: `[M]`.
        names: `(("material", (...)), ("color", (...)), ...)` attribute groups
            in the state's order (`dspn_tf.data.clevr.ATTRIBUTES`).
        size: Panel side in pixels.
        extent: Half the side of the floor area shown, in scene units.
        baseline: Optional `(states [N, 18], mask [N])` of another model,
            drawn after the steps and before the truth.
    """
    states, target = np.asarray(states), np.asarray(target)
    if states.ndim != 3 or target.ndim != 2 or states.shape[-1] != target.shape[-1]:
        raise ValueError(
            f"state_progression: expected states [steps, N, C] and target [M, C]; received "
            f"{states.shape} and {target.shape}."
        )
    expected = 3 + sum(len(v) for _, v in names)
    if states.shape[-1] != expected:
        raise ValueError(
            f"state_progression: states have {states.shape[-1]} features, but the attribute groups need {expected}."
        )
    panels = [_objects_panel(s, m, names, size, extent) for s, m in zip(states, masks)]
    if baseline is not None:
        panels.append(_objects_panel(*baseline, names, size, extent))
    panels.append(_objects_panel(target, target_mask, names, size, extent))
    return _row(panels)


def _markers_on_image(base, states, mask, names, camera, scale):
    """`base` (float [H, W, 3]) with each object drawn at its projected 3D position."""
    canvas = base.copy()
    height, width = canvas.shape[:2]
    states = np.asarray(states, np.float64)
    mask = np.clip(np.asarray(mask, np.float64), 0.0, 1.0)
    if not len(states):
        return canvas.astype(np.uint8)
    projected = camera.project(COORD_SCALE * states[:, COORDS])  # Shape: [N, 3] of (x px, y px, depth).
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    sx, sy = scale
    for i in np.argsort(mask, kind="stable"):  # Faint slots first, so confident ones are on top.
        depth = projected[i, 2]
        if mask[i] <= 0.0 or not np.isfinite(projected[i]).all() or depth <= 0.1:
            continue
        attrs = _attributes(states[i], names)
        # Marker radius: the object's radius seen at its depth, at least 3 px so it stays readable.
        r = max(3.0, SIZES.get(attrs.get("size"), 0.5) * camera.focal / depth * min(sx, sy))
        # A black outline keeps every marker visible on the grey CLEVR floor.
        canvas = _draw_object(canvas, xx, yy, projected[i, 0] * sx, projected[i, 1] * sy, r, attrs, mask[i], 0.0)
    return canvas.astype(np.uint8)


def states_on_image(image, states, masks, target, target_mask, names, size=192, baseline=None):
    """CLEVR object states drawn on the image: every decoder step, then the truth.

    Each object is a marker at the pixel its predicted 3D position projects
    to through CLEVR's camera (the one the generated scenes are rendered with,
    fitted to real CLEVR's `pixel_coords`), in its predicted colour, with its
    shape as the marker (sphere: disc, cube: square, cylinder: triangle), its
    size as the marker size (its radius seen at its depth), a white highlight
    if metal, and its mask value as its opacity. The first panel is the image
    itself.

    Args:
        image: `[H, W, 3]` float in [0, 1], the model's (square, resized) input.
        states: `[steps, N, 18]` predicted states (coords / 3, then one-hots).
        masks: `[steps, N]`.
        target: `[M, 18]`.
        target_mask: `[M]`.
        names: Attribute groups in the state's order (`dspn_tf.data.clevr.ATTRIBUTES`).
        size: Panel side in pixels (the image is enlarged to it).
        baseline: Optional `(states [N, 18], mask [N])` of another model,
            drawn after the steps and before the truth.
    """
    from dspn_tf.data.render import camera as camera_lib

    image = np.asarray(image, np.float64)
    states, target = np.asarray(states), np.asarray(target)
    if image.ndim != 3 or image.shape[-1] != 3 or states.ndim != 3 or target.ndim != 2:
        raise ValueError(
            f"states_on_image: expected image [H, W, 3], states [steps, N, C] and target [M, C]; received "
            f"{image.shape}, {states.shape} and {target.shape}."
        )
    base = _enlarged(image, size)  # So the markers are drawn at a readable scale.
    scale = (size / camera_lib.WIDTH, size / camera_lib.HEIGHT)  # CLEVR's 480 x 320 pixels -> the panel.
    camera = camera_lib.Camera()
    panels = [base.astype(np.uint8)]
    panels += [_markers_on_image(base, s, m, names, camera, scale) for s, m in zip(states, masks)]
    if baseline is not None:
        panels.append(_markers_on_image(base, *baseline, names, camera, scale))
    panels.append(_markers_on_image(base, target, target_mask, names, camera, scale))
    return _row(panels)


# Class colours of the numbering pictures (RGB in [0, 255]), repeated for more classes.
_CLASS_COLORS = np.array(
    [[31, 119, 180], [214, 39, 40], [44, 160, 44], [148, 103, 189], [255, 127, 14], [23, 190, 207], [140, 86, 75]],
    np.float64,
)


def _numbering_panel(values, colors, cell):
    """An `[N, C]` set of distributions as a grid: cell (i, j) tinted by values[i, j] in the colour of row i."""
    p = np.clip(np.asarray(values, np.float64), 0.0, 1.0)[..., None]  # Shape: [N, C, 1].
    grid = 255.0 * (1.0 - p) + colors[:, None, :] * p
    return np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1).astype(np.uint8)


def numbering_progression(sets, masks, target, target_mask, cell=4, baseline=None, classes=None):
    """Class-specific numbering: every step's outputs as an elements x numbers grid, then the target.

    Row i of a panel is element i, column j its number j; a cell is as dark
    as the element's output at j (a one-hot row is one dark cell). With
    `classes`, rows are tinted in their class's colour and each panel's rows
    are ordered by class, then by the number the panel gives them (equal
    elements are interchangeable), so a right numbering reads as a staircase
    per class, as in the target.

    Args:
        sets: `[steps, N, C]` outputs (distributions over the C numbers).
        masks: `[steps, N]` (not drawn: every element is present).
        target: `[N, C]` one-hot numbers.
        target_mask: `[N]` (not drawn).
        cell: Side of a grid cell in pixels.
        baseline: Optional `(set [N, C], mask [N])` of another model, drawn before the target.
        classes: Optional `[N, K]` class one-hots of the input elements.
    """
    del masks, target_mask
    grids = [np.asarray(s) for s in sets]
    if baseline is not None:
        grids.append(np.asarray(baseline[0]))
    grids.append(np.asarray(target))
    n = grids[-1].shape[0]
    if classes is None:
        return _row([_numbering_panel(g, np.zeros((n, 3)), cell) for g in grids])
    labels = np.argmax(np.asarray(classes), axis=-1)
    colors = _CLASS_COLORS[labels % len(_CLASS_COLORS)]
    panels = []
    for g in grids:
        order = np.lexsort((np.argmax(g, axis=-1), labels))
        panels.append(_numbering_panel(g[order], colors[order], cell))
    return _row(panels)
