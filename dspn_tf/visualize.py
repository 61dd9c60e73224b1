"""Pictures of the decoder's progression for TensorBoard (NumPy only).

Each function returns a uint8 `[height, width, 3]` array, one panel per
decoder step followed by the target, like the paper's Figure 1.
"""

import numpy as np
import scipy.optimize

_PANEL_GAP = 2


def _row(panels):
    height = panels[0].shape[0]
    gap = np.full((height, _PANEL_GAP, 3), 255, np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)


def _points_panel(points, mask, size):
    """Points (row, col) in [0, 1] drawn as 2×2 dots, darkness by mask value."""
    panel = np.full((size, size), 255.0)
    mask = np.clip(np.asarray(mask, np.float64), 0.0, 1.0)
    rc = np.clip(np.round(np.asarray(points[:, :2]) * (size - 2)), 0, size - 2).astype(int)
    # Draw faint points first so confident ones stay visible on top.
    for i in np.argsort(mask):
        r, c = rc[i]
        panel[r:r + 2, c:c + 2] = np.minimum(panel[r:r + 2, c:c + 2], 255.0 * (1.0 - mask[i]))
    return np.repeat(panel.astype(np.uint8)[..., None], 3, axis=-1)


def set_progression(sets, masks, target_set, target_mask, size=64):
    """set-MNIST: the predicted point set at every step, then the target.

    Args:
        sets: `[steps, N, 2]` (row, col) in [0, 1].
        masks: `[steps, N]`.
        target_set: `[N, 2]`.
        target_mask: `[N]`.
        size: Panel side in pixels.
    """
    panels = [_points_panel(s, m, size) for s, m in zip(sets, masks)]
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
    for (rows, cols) in (
        (slice(max(y0, 0), max(y0, 0) + 1), xs),
        (slice(min(y1, h - 1), min(y1, h - 1) + 1), xs),
        (ys, slice(max(x0, 0), max(x0, 0) + 1)),
        (ys, slice(min(x1, w - 1), min(x1, w - 1) + 1)),
    ):
        canvas[rows, cols] = (1 - alpha) * canvas[rows, cols] + alpha * color


def boxes_progression(image, boxes, masks, target_boxes, target_mask, threshold=0.0):
    """CLEVR boxes: the image with each step's boxes (opacity = mask), then the target.

    Args:
        image: `[H, W, 3]` float in [0, 1].
        boxes: `[steps, N, 4]` (xmin, ymin, xmax, ymax) in [0, 1].
        masks: `[steps, N]`.
        target_boxes: `[M, 4]`.
        target_mask: `[M]`.
        threshold: Boxes whose mask is at most this are not drawn.
    """
    base = np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 255.0
    panels = []
    for step_boxes, step_mask in zip(list(boxes) + [target_boxes], list(masks) + [target_mask]):
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
        coords = ", ".join(f"{3.0 * v:.2f}" for v in row[:3])
        words, start = [], 3
        for _, values in names:
            words.append(values[int(np.argmax(row[start:start + len(values)]))])
            start += len(values)
        return coords, " ".join(words)

    lines = ["| slot | mask | predicted (x, y, z) | predicted object | true (x, y, z) | true object |",
             "|---|---|---|---|---|---|"]
    # Pair each true object with a predicted slot by the nearest-position
    # matching, so a row compares a prediction with the object it stands for.
    real = np.flatnonzero(np.asarray(target_mask) > 0.5)
    cost = np.linalg.norm(pred[:, None, :3] - target[None, real, :3], axis=-1)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    partner = {int(r): int(real[c]) for r, c in zip(rows, cols)}
    for i in np.argsort(-np.asarray(pred_mask), kind="stable"):
        pc, pw = describe(pred[i])
        tc, tw = describe(target[partner[i]]) if i in partner else ("", "")
        lines.append(f"| {i} | {pred_mask[i]:.2f} | {pc} | {pw} | {tc} | {tw} |")
    return "\n".join(lines)
