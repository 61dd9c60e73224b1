"""Average precision for predicted sets of objects (docs/algorithm.md §9).

Plain NumPy, no TensorFlow: evaluation runs outside any `tf.function` on the
whole evaluation set at once.

The definition is the one of the DSPN reference implementation (Zhang, Hare,
Prügel-Bennett 2019, its modified `Object-Detection-Metrics` scripts), which is
PASCAL VOC average precision with a single class:

1. Every predicted slot is a detection whose score is its predicted mask value.
2. The detections of all images are pooled and sorted by descending score. The
   sort is stable; detections are enumerated image by image and slot by slot,
   so equal scores keep that order.
3. In that order each detection is compared with the real ground truths of its
   own image. Its *best* candidate is chosen first (highest IoU for boxes,
   nearest same-attribute object for states). If that candidate is within the
   threshold and not yet used, the detection is a true positive and the
   candidate becomes used; otherwise the detection is a false positive. A used
   best candidate makes a false positive even when another ground truth would
   also have been within the threshold: there is no fall-back to the next best.
4. Precision and recall are taken after each detection (recall divides by the
   number of real ground truths, `sum(target_mask > 0.5)`), and AP is the VOC
   every-point-interpolated area: the precision is made monotone non-increasing
   from the right (the precision envelope) and summed over the recall changes.

Other papers define the CLEVR state AP slightly differently: Slot Attention
min-max scales coordinates to [0, 1], multiplies distances by 6 and uses `<`;
iDSPN scores per image. Numbers from this module are comparable with the DSPN
paper's state table only.
"""

import importlib.util
import os

import numpy as np
import scipy.optimize

if __package__:
    from dspn_tf.data import clevr_layout
else:
    # This file loaded on its own (it needs only NumPy; the package's __init__
    # imports TensorFlow): read the layout from its sibling file the same way.
    _spec = importlib.util.spec_from_file_location(
        "clevr_layout", os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "clevr_layout.py")
    )
    clevr_layout = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(clevr_layout)

# The state layout (coordinates / 3, then one-hot attribute groups) is clevr_layout's.
STATE_FEATURES = clevr_layout.STATE_DIM
_COORDS = clevr_layout.COORDS
_ATTRIBUTE_GROUPS = clevr_layout.ATTRIBUTE_SLICES
# Distances are measured in scene units.
_COORD_SCALE = clevr_layout.COORD_SCALE

BOX_FEATURES = 4

DEFAULT_STATE_THRESHOLDS = (np.inf, 1.0, 0.5, 0.25, 0.125)
DEFAULT_BOX_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def interpolated_average_precision(recall, precision):
    """VOC every-point-interpolated AP from a precision/recall curve.

    Args:
        recall: 1-D array, recall after each detection (non-decreasing).
        precision: 1-D array of the same length, precision after each detection.

    Returns:
        The area under the precision envelope: the curve is extended with
        `(recall 0, precision 0)` in front and `(recall 1, precision 0)` at the
        end, the precision is replaced by its running maximum from the right,
        and `sum((r[i] - r[i - 1]) * p[i])` is taken over the points `i` where
        the recall changes.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(
            "`recall` and `precision` must be 1-D arrays of the same length; received "
            f"shapes {recall.shape} and {precision.shape}."
        )
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    # The precision envelope: the best precision at this recall or any higher one.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[changes] - mrec[changes - 1]) * mpre[changes]))


def state_average_precision(pred, scores, target, target_mask, threshold):
    """CLEVR state AP at one distance threshold, DSPN reference definition.

    A detection's candidates are the real ground truths of its image whose
    argmax material, color, shape and size all equal the detection's argmaxes.
    The best candidate is the nearest by Euclidean distance in scene units,
    `||3 * (pred_coords - target_coords)||` (ties: the first ground truth). The
    detection is a true positive if that distance is `<= threshold` and the
    candidate is unused; see the module docstring for the rest.

    Args:
        pred: `[images, slots, 18]` predicted states (coords / 3, then the
            material, color, shape and size scores; argmax is taken per group).
        scores: `[images, slots]` detection scores, the predicted mask.
        target: `[images, max_objects, 18]` ground-truth states.
        target_mask: `[images, max_objects]`; objects with mask > 0.5 are real,
            the rest is padding that never matches and is not counted.
        threshold: maximum distance, `>= 0`; `np.inf` means any distance
            (attributes must still match).

    Returns:
        AP as a float in [0, 1].
    """
    return state_ap_table(pred, scores, target, target_mask, thresholds=(threshold,))[float(threshold)]


def box_average_precision(pred, scores, target, target_mask, iou_threshold):
    """Bounding-box AP at one IoU threshold, DSPN reference definition.

    Boxes are `(xmin, ymin, xmax, ymax)`. The IoU is the correct one,
    `area = (xmax - xmin) * (ymax - ymin)` with no +1 pixel term (the paper's
    table used the +1 term on [0, 1] coordinates, so its strict-threshold
    numbers are not comparable). Widths and heights of inverted boxes count as
    0. A detection's best candidate is the real ground truth of its image with
    the highest IoU (ties: the first; IoU 0 is never a candidate). It is a true
    positive if that IoU is `>= iou_threshold` and the candidate is unused;
    see the module docstring for the rest.

    Args:
        pred: `[images, slots, 4]` predicted boxes.
        scores: `[images, slots]` detection scores, the predicted mask.
        target: `[images, max_objects, 4]` ground-truth boxes.
        target_mask: `[images, max_objects]`; objects with mask > 0.5 are real,
            the rest is padding that never matches and is not counted.
        iou_threshold: minimum IoU, in (0, 1].

    Returns:
        AP as a float in [0, 1].
    """
    return box_ap_table(pred, scores, target, target_mask, thresholds=(iou_threshold,))[float(iou_threshold)]


def state_ap_table(pred, scores, target, target_mask, thresholds=DEFAULT_STATE_THRESHOLDS):
    """State AP at several distance thresholds, `{threshold: ap}`.

    Same arguments and definition as `state_average_precision`; the matching
    is computed once and shared by all thresholds. Keys are `float(threshold)`.
    """
    pred, scores, target, target_mask = _check_inputs(pred, scores, target, target_mask, STATE_FEATURES, "state")
    thresholds = [_check_threshold(t, "threshold", upper=np.inf) for t in thresholds]
    best, distance = _state_best_candidates(pred, target, target_mask)
    # Infinite distance means "no candidate", which must fail even threshold inf.
    has_candidate = np.isfinite(distance)
    num_positives = int(np.count_nonzero(target_mask > 0.5))
    return {t: _average_precision(scores, best, has_candidate & (distance <= t), num_positives) for t in thresholds}


def box_ap_table(pred, scores, target, target_mask, thresholds=DEFAULT_BOX_THRESHOLDS):
    """Box AP at several IoU thresholds, `{iou_threshold: ap}`.

    Same arguments and definition as `box_average_precision`; the IoUs are
    computed once and shared by all thresholds. Keys are `float(threshold)`.
    """
    pred, scores, target, target_mask = _check_inputs(pred, scores, target, target_mask, BOX_FEATURES, "box")
    thresholds = [_check_threshold(t, "iou_threshold", upper=1.0) for t in thresholds]
    best, iou = _box_best_candidates(pred, target, target_mask)
    num_positives = int(np.count_nonzero(target_mask > 0.5))
    return {t: _average_precision(scores, best, iou >= t, num_positives) for t in thresholds}


def box_iou(boxes_a, boxes_b):
    """Pairwise IoU of `[..., n, 4]` and `[..., m, 4]` boxes → `[..., n, m]`.

    Correct IoU without the +1 pixel term; inverted boxes have zero area and
    two zero-area boxes have IoU 0.
    """
    a = np.asarray(boxes_a, dtype=np.float64)[..., :, None, :]
    b = np.asarray(boxes_b, dtype=np.float64)[..., None, :, :]
    inter_w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    inter_h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    intersection = np.maximum(inter_w, 0.0) * np.maximum(inter_h, 0.0)
    area_a = np.maximum(a[..., 2] - a[..., 0], 0.0) * np.maximum(a[..., 3] - a[..., 1], 0.0)
    area_b = np.maximum(b[..., 2] - b[..., 0], 0.0) * np.maximum(b[..., 3] - b[..., 1], 0.0)
    union = area_a + area_b - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)
    return iou


def _state_best_candidates(pred, target, target_mask):
    """Best candidate per detection and its distance (inf if there is none)."""
    # Shape: [images, slots, objects].
    same_attributes = target_mask[:, None, :] > 0.5
    for group in _ATTRIBUTE_GROUPS:
        pred_class = np.argmax(pred[..., group], axis=-1)  # Shape: [images, slots].
        target_class = np.argmax(target[..., group], axis=-1)  # Shape: [images, objects].
        same_attributes = same_attributes & (pred_class[:, :, None] == target_class[:, None, :])
    # The reference takes the norm of 3 * (gt - det), in that order of operations.
    diff = _COORD_SCALE * (target[:, None, :, _COORDS] - pred[:, :, None, _COORDS])
    distance = np.sqrt(np.sum(diff * diff, axis=-1))  # Shape: [images, slots, objects].
    # NaN predictions never become candidates (the reference compares with `<`).
    distance = np.where(same_attributes & ~np.isnan(distance), distance, np.inf)
    best = np.argmin(distance, axis=-1)  # First of equal minima, like the reference.
    best_distance = np.take_along_axis(distance, best[..., None], axis=-1)[..., 0]
    return best, best_distance


def _box_best_candidates(pred, target, target_mask):
    """Best candidate per detection and its IoU (-inf if there is none)."""
    iou = box_iou(pred, target)  # Shape: [images, slots, objects].
    # The reference starts from the smallest positive float and updates on `>`,
    # so IoU 0 (and NaN) never becomes a candidate.
    iou = np.where((target_mask[:, None, :] > 0.5) & (iou > 0), iou, -np.inf)
    best = np.argmax(iou, axis=-1)  # First of equal maxima, like the reference.
    best_iou = np.take_along_axis(iou, best[..., None], axis=-1)[..., 0]
    return best, best_iou


def _average_precision(scores, best, within_threshold, num_positives):
    """AP from per-detection best candidates and whether they are close enough.

    Greedy matching in score order: among the detections whose best candidate
    is within the threshold, the first one (in score order) for each
    (image, ground truth) pair is the true positive; every other detection is a
    false positive. This is exactly the sequential "unused → TP and mark used,
    else FP" loop, because a detection that is not within the threshold never
    marks anything used.
    """
    num_images, num_slots = scores.shape
    order = np.argsort(-scores.ravel(), kind="stable")
    within = within_threshold.ravel()[order]
    image = np.repeat(np.arange(num_images), num_slots)[order]
    # One integer per (image, ground truth) pair.
    key = image.astype(np.int64) * (int(best.max(initial=0)) + 1) + best.ravel()[order]
    true_positive = np.zeros(order.shape, dtype=bool)
    candidates = np.flatnonzero(within)
    _, first = np.unique(key[candidates], return_index=True)
    true_positive[candidates[first]] = True
    if true_positive.size == 0:
        return 0.0
    tp = np.cumsum(true_positive)
    fp = np.cumsum(~true_positive)
    recall = tp / num_positives
    precision = tp / (tp + fp)
    return interpolated_average_precision(recall, precision)


def _check_inputs(pred, scores, target, target_mask, num_features, kind):
    pred = np.asarray(pred, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    target_mask = np.asarray(target_mask, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[-1] != num_features:
        raise ValueError(
            f"`pred` must have shape [images, slots, {num_features}] for {kind} AP, received shape {pred.shape}."
        )
    if target.ndim != 3 or target.shape[-1] != num_features:
        raise ValueError(
            f"`target` must have shape [images, max_objects, {num_features}] for "
            f"{kind} AP; received shape {target.shape}."
        )
    if scores.shape != pred.shape[:2]:
        raise ValueError(
            f"`scores` must have shape [images, slots] = {pred.shape[:2]} to match "
            f"`pred` of shape {pred.shape}; received shape {scores.shape}."
        )
    if target.shape[0] != pred.shape[0]:
        raise ValueError(
            f"`pred` and `target` must have the same number of images; received shapes {pred.shape} and {target.shape}."
        )
    if target_mask.shape != target.shape[:2]:
        raise ValueError(
            f"`target_mask` must have shape [images, max_objects] = {target.shape[:2]} "
            f"to match `target` of shape {target.shape}; received shape {target_mask.shape}."
        )
    if np.isnan(scores).any():
        raise ValueError("`scores` contains NaN; detections cannot be ranked.")
    if not np.any(target_mask > 0.5):
        raise ValueError("`target_mask` has no real ground truth (no entry > 0.5), so recall and AP are undefined.")
    return pred, scores, target, target_mask


def _check_threshold(value, name, upper):
    value = float(value)
    if name == "iou_threshold":
        if not 0.0 < value <= upper:
            raise ValueError(f"`{name}` must be in (0, 1]; received {value}.")
    elif not value >= 0.0:  # Also rejects NaN.
        raise ValueError(f"`{name}` must be >= 0 or np.inf; received {value}.")
    return value


def numbering_accuracy(pred, target, classes, penalty=1e3):
    """Accuracy of class-specific numbering after the optimal matching (iDSPN §4.1), per set.

    Each set's targets are matched one-to-one with its outputs by
    `scipy.optimize.linear_sum_assignment` on the cost of
    `dspn_tf.losses.numbering_cost` (L2 distance, plus `penalty` for a target
    and an output of different classes); a matched pair is right when the
    output's largest entry is at the target's number.

    Args:
        pred: `[sets, n, C]` outputs.
        target: `[sets, n, C]` one-hot numbers.
        classes: `[sets, n, K]` class one-hots of the input elements.
        penalty: The cross-class penalty.

    Returns:
        `(set_correct, element_accuracy)`, each `[sets]`: whether every element
        of the set is numbered right (whole-set accuracy, 0 or 1), and the
        fraction of its elements numbered right (per-element accuracy).
    """
    pred, target, classes = (np.asarray(a, np.float64) for a in (pred, target, classes))
    distance = np.sqrt(np.sum((target[:, :, None, :] - pred[:, None, :, :]) ** 2, axis=-1))
    cost = distance + penalty * (1.0 - np.einsum("bsk,btk->bst", classes, classes))
    right = np.empty(pred.shape[:2], bool)
    for b in range(pred.shape[0]):
        rows, cols = scipy.optimize.linear_sum_assignment(cost[b])
        right[b, rows] = np.argmax(pred[b, cols], axis=-1) == np.argmax(target[b, rows], axis=-1)
    return right.all(axis=1).astype(np.float64), right.mean(axis=1)
