"""Tests for dspn_tf.metrics: hand-computed AP cases and a brute-force reference."""

import subprocess
import sys

import numpy as np
import pytest

from dspn_tf import metrics

MATERIALS = ("rubber", "metal")
COLORS = ("cyan", "blue", "yellow", "purple", "red", "green", "gray", "brown")
SHAPES = ("sphere", "cube", "cylinder")
SIZES = ("large", "small")


def state(x=0.0, y=0.0, z=0.0, material="rubber", color="red", shape="cube", size="large"):
    """One 18-feature state; coordinates are given in scene units and stored / 3."""
    vec = np.zeros(18)
    vec[0:3] = np.array([x, y, z]) / 3
    vec[3 + MATERIALS.index(material)] = 1
    vec[5 + COLORS.index(color)] = 1
    vec[13 + SHAPES.index(shape)] = 1
    vec[16 + SIZES.index(size)] = 1
    return vec


def stack_images(images, width=None):
    """Pad a list of per-image lists of feature vectors to [images, width, features]."""
    width = width or max(len(objects) for objects in images)
    features = len(images[0][0])
    out = np.zeros((len(images), width, features))
    mask = np.zeros((len(images), width))
    for i, objects in enumerate(images):
        for j, obj in enumerate(objects):
            out[i, j] = obj
            mask[i, j] = 1
    return out, mask


def one_image_state_ap(preds, scores, targets, threshold):
    target, target_mask = stack_images([targets])
    return metrics.state_average_precision(np.array([preds]), np.array([scores]), target, target_mask, threshold)


A = state(0.0, 0.0, 0.5, color="red")
B = state(1.0, 2.0, 0.5, color="blue")
C = state(-2.0, 1.0, 0.7, color="green", shape="sphere")
WRONG = state(5.0, 5.0, 0.5, color="yellow", shape="cylinder")  # Matches nothing.


# --- The VOC formula on its own. ---------------------------------------------


def test_interpolated_ap_uses_the_precision_envelope():
    # TP, FP, FP, TP, TP with 3 positives: precision dips and recovers.
    recall = np.array([1, 1, 1, 2, 3]) / 3
    precision = np.array([1 / 1, 1 / 2, 1 / 3, 2 / 4, 3 / 5])
    # Envelope: 1 up to recall 1/3, then max(1/2, 3/5) = 3/5 on (1/3, 2/3] and 3/5 on (2/3, 1].
    expected = 1 / 3 * 1 + 1 / 3 * 3 / 5 + 1 / 3 * 3 / 5
    assert metrics.interpolated_average_precision(recall, precision) == pytest.approx(expected)
    # Without the envelope it would be 1/3 + 1/3 * 1/2 + 1/3 * 3/5 = 0.7.
    assert expected != pytest.approx(0.7)


def test_interpolated_ap_recall_below_one_is_not_extrapolated():
    # One TP out of 4 positives, then nothing: area 1/4.
    assert metrics.interpolated_average_precision([0.25], [1.0]) == pytest.approx(0.25)


# --- State AP: hand-computed cases. -------------------------------------------


@pytest.mark.parametrize("threshold", metrics.DEFAULT_STATE_THRESHOLDS)
def test_state_perfect_predictions(threshold):
    targets = [[A, B, C], [B, C]]
    target, target_mask = stack_images(targets)
    scores = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.0]])
    # Every real object predicted exactly; the second image's spare slot holds an
    # object that matches nothing, with the lowest score. Five TPs then one FP:
    # recall is already 1 when the FP arrives, so the envelope ignores it.
    pred = target.copy()
    pred[1, 2] = WRONG
    ap = metrics.state_average_precision(pred, scores, target, target_mask, threshold)
    assert ap == 1.0


def test_state_duplicate_with_lowest_score_costs_nothing():
    # TP, TP, FP: recall reaches 1 before the FP, so the envelope is 1 everywhere.
    ap = one_image_state_ap([A, B, A], [0.9, 0.8, 0.7], [A, B], np.inf)
    assert ap == 1.0


def test_state_duplicate_in_the_middle():
    # TP, FP, TP with 2 positives: recall .5, .5, 1; precision 1, 1/2, 2/3.
    # Envelope over (0, .5] is 1, over (.5, 1] is 2/3: AP = .5 + .5 * 2/3 = 5/6.
    ap = one_image_state_ap([A, A, B], [0.9, 0.8, 0.7], [A, B], np.inf)
    assert ap == pytest.approx(5 / 6)


def test_state_duplicate_with_highest_score_takes_the_match():
    near_a = A.copy()
    near_a[0] += 0.2 / 3  # 0.2 scene units away from A.
    # Threshold inf: the near copy (score .95) takes A; the exact A finds A used → FP.
    # TP, FP, TP → 5/6.
    ap = one_image_state_ap([near_a, A, B], [0.95, 0.9, 0.8], [A, B], np.inf)
    assert ap == pytest.approx(5 / 6)
    # Threshold 0.125: the near copy is too far, is a FP and does not use A.
    # FP, TP, TP: recall 0, .5, 1; precision 0, 1/2, 2/3; envelope 2/3 → AP 2/3.
    ap = one_image_state_ap([near_a, A, B], [0.95, 0.9, 0.8], [A, B], 0.125)
    assert ap == pytest.approx(2 / 3)


def test_state_no_fall_back_to_the_next_best_candidate():
    ga = state(0.0, 0.0, 0.5)
    gb = state(0.5, 0.0, 0.5)  # Same attributes, 0.5 units from ga.
    d2 = state(0.1, 0.0, 0.5)  # Nearest is ga (0.1), gb (0.4) is also within 1.
    # d1 takes ga; d2's best candidate ga is used → FP (no fall-back to gb); d3 takes gb.
    ap = one_image_state_ap([ga, d2, gb], [0.9, 0.8, 0.7], [ga, gb], 1.0)
    assert ap == pytest.approx(5 / 6)  # A fall-back rule would give 1.0.


def test_state_equidistant_candidates_take_the_first_ground_truth():
    g1, g2, d1 = np.zeros(18), np.zeros(18), np.zeros(18)
    for v in (g1, g2, d1):
        v[[3, 5, 13, 16]] = 1
    g2[0], d1[0] = 0.25, 0.125  # d1 is 0.375 from both.
    # First-of-ties: d1 takes g1, then the exact g1 finds it used (FP), g2 takes g2 → 5/6.
    # (Taking the last tie would make it TP, TP, FP → 1.)
    ap = one_image_state_ap([d1, g1, g2], [0.9, 0.8, 0.7], [g1, g2], np.inf)
    assert ap == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    "attribute, value",
    [("material", "metal"), ("color", "blue"), ("shape", "sphere"), ("size", "small")],
)
def test_state_any_wrong_attribute_never_matches(attribute, value):
    gt = state(0.0, 0.0, 0.5, material="rubber", color="red", shape="cube", size="large")
    wrong = state(0.0, 0.0, 0.5, **{attribute: value})
    assert one_image_state_ap([wrong], [1.0], [gt], np.inf) == 0.0
    # With another attribute-correct but far detection, only that one is a TP.
    far = state(3.0, 3.0, 0.5)
    ap = one_image_state_ap([wrong, far], [0.9, 0.8], [gt], np.inf)
    assert ap == pytest.approx(0.5)  # FP, TP: precision 1/2 at recall 1.


def test_state_argmax_of_soft_attribute_scores():
    soft = state(0.0, 0.0, 0.5, color="red")
    soft[5:13] = np.linspace(0.1, 0.2, 8)  # Argmax is brown.
    soft[5 + COLORS.index("red")] = 0.3  # Now red again.
    gt = state(0.0, 0.0, 0.5, color="red")
    assert one_image_state_ap([soft], [1.0], [gt], 0.125) == 1.0
    soft[5 + COLORS.index("red")] = 0.15
    assert one_image_state_ap([soft], [1.0], [gt], np.inf) == 0.0


def test_state_distance_just_inside_and_just_outside():
    gt = np.zeros(18)
    gt[[3, 5, 13, 16]] = 1
    pred = gt.copy()
    pred[0] = 0.125  # Stored coords are / 3: the distance is 3 * 0.125 = 0.375 exactly.
    assert one_image_state_ap([pred], [1.0], [gt], 0.375) == 1.0
    assert one_image_state_ap([pred], [1.0], [gt], np.nextafter(0.375, 0)) == 0.0
    # Distances are in scene units: stored 0.125 is not within 0.25.
    assert one_image_state_ap([pred], [1.0], [gt], 0.25) == 0.0
    # Euclidean over the three coordinates: 3 * sqrt(0.1^2 + 0.1^2 + 0.1^2) = 0.5196.
    pred[0:3] = [0.1, -0.1, 0.1]
    assert one_image_state_ap([pred], [1.0], [gt], 0.52) == 1.0
    assert one_image_state_ap([pred], [1.0], [gt], 0.519) == 0.0
    # Near the paper's thresholds.
    for t in (1.0, 0.5, 0.25, 0.125):
        pred[0:3] = [(t - 1e-9) / 3, 0, 0]
        assert one_image_state_ap([pred], [1.0], [gt], t) == 1.0
        pred[0:3] = [(t + 1e-9) / 3, 0, 0]
        assert one_image_state_ap([pred], [1.0], [gt], t) == 0.0


def test_state_scores_order_the_detections():
    preds = [A, WRONG, B]
    # TP, FP, TP → 5/6.
    assert one_image_state_ap(preds, [0.9, 0.8, 0.7], [A, B], np.inf) == pytest.approx(5 / 6)
    # TP, TP, FP → 1.
    assert one_image_state_ap(preds, [0.9, 0.1, 0.7], [A, B], np.inf) == 1.0
    # FP, TP, TP → recall 0, .5, 1; precision 0, 1/2, 2/3 → 2/3.
    assert one_image_state_ap(preds, [0.2, 0.9, 0.1], [A, B], np.inf) == pytest.approx(2 / 3)


def test_state_equal_scores_keep_image_then_slot_order():
    # All scores equal: the stable sort keeps slot order.
    assert one_image_state_ap([WRONG, A, B], [0.5] * 3, [A, B], np.inf) == pytest.approx(2 / 3)
    assert one_image_state_ap([A, B, WRONG], [0.5] * 3, [A, B], np.inf) == 1.0
    # Across images: image 0's slots come before image 1's.
    target, target_mask = stack_images([[A], [B]])
    pred = np.stack([[A, WRONG], [B, WRONG]])
    scores = np.full((2, 2), 0.5)
    # Order A(TP), WRONG(FP), B(TP), WRONG(FP): recall .5, .5, 1, 1; precision 1, 1/2, 2/3, 1/2.
    ap = metrics.state_average_precision(pred, scores, target, target_mask, np.inf)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_state_detections_are_pooled_across_images():
    target, target_mask = stack_images([[A], [B]])
    pred = np.stack([[A, WRONG], [WRONG, B]])
    scores = np.array([[0.6, 0.0], [0.9, 0.5]])
    # Global order: WRONG .9 (FP), A .6 (TP), B .5 (TP), WRONG 0 (FP) → 2/3.
    # (A mean of per-image APs would give (1 + 1/2) / 2 = 0.75.)
    ap = metrics.state_average_precision(pred, scores, target, target_mask, np.inf)
    assert ap == pytest.approx(2 / 3)


def test_state_detections_only_match_their_own_image():
    target, target_mask = stack_images([[A], [B]])
    # Image 1 predicts image 0's object: no candidate in its own image.
    pred = np.stack([[A], [A]])
    scores = np.array([[0.5], [0.9]])
    # FP, TP with 2 positives: recall 0, .5; precision 0, .5 → .5 * .5.
    ap = metrics.state_average_precision(pred, scores, target, target_mask, np.inf)
    assert ap == pytest.approx(0.25)


def test_state_padded_ground_truths_are_ignored():
    target, target_mask = stack_images([[A, B]], width=4)  # Two zero padding rows.
    zero = np.zeros(18)  # Looks exactly like the padding (argmax 0 in every group).
    pred = np.stack([[zero, A, B, zero]])
    scores = np.array([[0.99, 0.9, 0.8, 0.7]])
    # Padding never matches: FP, TP, TP, FP with 2 positives → 2/3 (not 1, not 3/4 recall).
    ap = metrics.state_average_precision(pred, scores, target, target_mask, np.inf)
    assert ap == pytest.approx(2 / 3)
    # Soft masks: > 0.5 is real, <= 0.5 padding; the count of positives follows.
    soft_mask = np.array([[0.9, 0.5, 0.0, 0.0]])  # B is now padding: 1 positive.
    ap = metrics.state_average_precision(pred, scores, target, soft_mask, np.inf)
    assert ap == pytest.approx(0.5)  # FP, TP → precision 1/2 at recall 1.
    # A real object that is never predicted caps recall.
    target, target_mask = stack_images([[A, B, C]])
    pred = np.stack([[A, B, WRONG]])
    ap = metrics.state_average_precision(pred, np.ones((1, 3)), target, target_mask, np.inf)
    assert ap == pytest.approx(2 / 3)


def test_state_table_matches_single_calls():
    rng = np.random.default_rng(0)
    pred, scores, target, target_mask = random_state_problem(rng, 20, 6, 5)
    table = metrics.state_ap_table(pred, scores, target, target_mask)
    assert list(table) == [np.inf, 1.0, 0.5, 0.25, 0.125]
    for t, ap in table.items():
        assert ap == metrics.state_average_precision(pred, scores, target, target_mask, t)
    values = list(table.values())
    assert values == sorted(values, reverse=True)  # Stricter thresholds never help.


# --- Box AP: hand-computed cases. ---------------------------------------------


def one_image_box_ap(preds, scores, targets, iou_threshold):
    target, target_mask = stack_images([targets])
    return metrics.box_average_precision(
        np.array([preds], dtype=float), np.array([scores]), target, target_mask, iou_threshold
    )


def test_box_iou_hand_cases():
    gt = np.array([[0.0, 0.0, 1.0, 1.0]])
    preds = np.array(
        [
            [0.0, 0.0, 1.0, 1.0],  # Identical: 1.
            [0.0, 0.0, 2.0, 1.0],  # Covers it, twice the area: 1/2.
            [0.5, 0.5, 1.5, 1.5],  # Quarter overlap: 0.25 / 1.75 = 1/7.
            [1.0, 0.0, 2.0, 1.0],  # Touching edge: 0.
            [3.0, 3.0, 4.0, 4.0],  # Disjoint: 0.
            [0.25, 0.25, 0.5, 0.5],  # Inside: 1/16.
        ]
    )
    expected = np.array([[1.0], [0.5], [1 / 7], [0.0], [0.0], [1 / 16]])
    np.testing.assert_allclose(metrics.box_iou(preds, gt), expected, rtol=0, atol=1e-15)
    # No +1 pixel term on [0, 1] coordinates.
    small = metrics.box_iou([[0.25, 0.25, 0.5, 0.375]], [[0.25, 0.25, 0.5, 0.5]])
    assert small[0, 0] == 0.5
    # Degenerate and inverted boxes have no area.
    assert metrics.box_iou([[0.5, 0.5, 0.5, 0.5]], [[0.5, 0.5, 0.5, 0.5]])[0, 0] == 0.0
    assert metrics.box_iou([[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]])[0, 0] == 0.0


def test_box_iou_threshold_is_inclusive():
    gt = [0.0, 0.0, 1.0, 1.0]
    assert one_image_box_ap([[0.0, 0.0, 2.0, 1.0]], [1.0], [gt], 0.5) == 1.0  # IoU exactly 0.5.
    assert one_image_box_ap([[0.0, 0.0, 1.0, 0.4999]], [1.0], [gt], 0.5) == 0.0
    assert one_image_box_ap([[0.0, 0.0, 1.0, 0.5001]], [1.0], [gt], 0.5) == 1.0


def test_box_iou_has_no_plus_one_term():
    gt = [0.25, 0.25, 0.5, 0.5]
    half = [0.25, 0.25, 0.5, 0.375]  # IoU 0.5; with +1 it would be 0.9.
    table = metrics.box_ap_table(np.array([[half]]), np.ones((1, 1)), np.array([[gt]]), np.ones((1, 1)))
    assert list(table) == pytest.approx([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    assert list(table.values()) == [1.0] + [0.0] * 9


def test_box_perfect_and_duplicates():
    ga, gb = [0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 0.75, 1.0]
    assert one_image_box_ap([ga, gb], [0.9, 0.8], [ga, gb], 0.95) == 1.0
    # TP, FP, TP → 5/6; the duplicate (higher score) takes the match.
    assert one_image_box_ap([ga, ga, gb], [0.9, 0.8, 0.7], [ga, gb], 0.5) == pytest.approx(5 / 6)
    assert one_image_box_ap([ga, gb, ga], [0.9, 0.8, 0.7], [ga, gb], 0.5) == 1.0


def test_box_no_fall_back_to_the_next_best_candidate():
    ga, gb = [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.9]  # Overlapping ground truths.
    d2 = [0.0, 0.0, 1.0, 0.99]  # Best IoU with ga (.99), with gb .909 also >= .5.
    # d1 takes ga; d2's best (ga) is used → FP; d3 takes gb.
    ap = one_image_box_ap([ga, d2, gb], [0.9, 0.8, 0.7], [ga, gb], 0.5)
    assert ap == pytest.approx(5 / 6)


def test_box_equal_iou_takes_the_first_ground_truth():
    g1, g2 = [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]
    d1 = [0.5, 0.0, 1.5, 1.0]  # IoU 1/3 with both.
    ap = one_image_box_ap([d1, g1, g2], [0.9, 0.8, 0.7], [g1, g2], 0.3)
    assert ap == pytest.approx(5 / 6)


def test_box_padded_ground_truths_are_ignored():
    ga = [0.25, 0.25, 0.5, 0.5]
    target, target_mask = stack_images([[ga]], width=3)
    target[0, 1] = [0.5, 0.5, 0.75, 0.75]  # A padded row that looks like a real box.
    pred = np.array([[[0.5, 0.5, 0.75, 0.75], ga]])
    ap = metrics.box_average_precision(pred, np.array([[0.9, 0.8]]), target, target_mask, 0.5)
    assert ap == pytest.approx(0.5)  # FP, TP with one positive.


# --- Brute-force reference. ---------------------------------------------------


def reference_ap(detections, ground_truths, num_positives, quality, accept):
    """The reference evaluator written out loop by loop.

    detections: list of (image, score, features); ground_truths: dict image →
    list of features. quality(det, gt) returns None for "not a candidate" or a
    number; accept(value) says whether the best value is within the threshold;
    best = first strictly better value under the `better` ordering inside quality.
    """
    detections = sorted(detections, key=lambda d: d[1], reverse=True)  # Stable.
    used = {image: [False] * len(gts) for image, gts in ground_truths.items()}
    tp, fp = [], []
    for image, _, features in detections:
        best_value, best_index = None, None
        for j, gt in enumerate(ground_truths.get(image, [])):
            value = quality(features, gt)
            if value is not None and (best_value is None or value[0] < best_value[0]):
                best_value, best_index = value, j
        if best_index is not None and accept(best_value[1]) and not used[image][best_index]:
            used[image][best_index] = True
            tp.append(1)
            fp.append(0)
        else:
            tp.append(0)
            fp.append(1)
    acc_tp, acc_fp = 0, 0
    recall, precision = [], []
    for t, f in zip(tp, fp):
        acc_tp += t
        acc_fp += f
        recall.append(acc_tp / num_positives)
        precision.append(acc_tp / (acc_tp + acc_fp))
    mrec = [0.0] + recall + [1.0]
    mpre = [0.0] + precision + [0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def to_lists(pred, scores, target, target_mask):
    detections = [(i, scores[i, s], pred[i, s]) for i in range(pred.shape[0]) for s in range(pred.shape[1])]
    ground_truths = {
        i: [target[i, j] for j in range(target.shape[1]) if target_mask[i, j] > 0.5] for i in range(target.shape[0])
    }
    return detections, ground_truths, int(sum(len(g) for g in ground_truths.values()))


def reference_state_ap(pred, scores, target, target_mask, threshold):
    groups = [(3, 5), (5, 13), (13, 16), (16, 18)]

    def attributes(v):
        return tuple(int(np.argmax(v[a:b])) for a, b in groups)

    def quality(det, gt):
        if attributes(det) != attributes(gt):
            return None
        distance = float(np.linalg.norm(3 * (gt[:3] - det[:3])))
        return distance, distance  # Smaller is better.

    return reference_ap(*to_lists(pred, scores, target, target_mask), quality, lambda d: d <= threshold)


def reference_box_ap(pred, scores, target, target_mask, iou_threshold):
    def iou(a, b):
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        if w <= 0 or h <= 0:
            return 0.0
        inter = w * h
        area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
        area_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
        return inter / (area_a + area_b - inter)

    def quality(det, gt):
        value = iou(det, gt)
        return None if value <= 0 else (-value, value)  # Larger IoU is better.

    return reference_ap(*to_lists(pred, scores, target, target_mask), quality, lambda v: v >= iou_threshold)


def random_state_problem(rng, images, slots, objects):
    def random_states(shape):
        out = np.zeros(shape + (18,))
        out[..., 0:3] = rng.uniform(-1, 1, shape + (3,)) / 3
        # Few attribute values so that matches and collisions are common.
        for a, n in ((3, 2), (5, 2), (13, 2), (16, 1)):
            idx = rng.integers(0, n, shape)
            np.put_along_axis(out[..., a:], idx[..., None], 1.0, axis=-1)
        return out

    target = random_states((images, objects))
    target_mask = (rng.uniform(size=(images, objects)) < 0.7).astype(float)
    target_mask[0, 0] = 1.0
    target[target_mask == 0] = 0.0
    # Predictions: noisy copies of targets (some duplicated) mixed with random ones.
    pred = random_states((images, slots))
    copy = rng.uniform(size=(images, slots)) < 0.6
    source = rng.integers(0, objects, (images, slots))
    copied = np.take_along_axis(target, source[..., None], axis=1)
    copied = copied + np.concatenate([rng.normal(0, 0.1, (images, slots, 3)), np.zeros((images, slots, 15))], axis=-1)
    pred = np.where(copy[..., None], copied, pred)
    scores = np.round(rng.uniform(size=(images, slots)), 1)  # Many ties.
    return pred, scores, target, target_mask


def random_box_problem(rng, images, slots, objects):
    def random_boxes(shape):
        corner = rng.uniform(0, 0.8, shape + (2,))
        size = rng.uniform(0.05, 0.3, shape + (2,))
        return np.concatenate([corner, corner + size], axis=-1)

    target = random_boxes((images, objects))
    target_mask = (rng.uniform(size=(images, objects)) < 0.7).astype(float)
    target_mask[0, 0] = 1.0
    pred = random_boxes((images, slots))
    copy = rng.uniform(size=(images, slots)) < 0.6
    source = rng.integers(0, objects, (images, slots))
    copied = np.take_along_axis(target, source[..., None], axis=1)
    copied = copied + rng.normal(0, 0.03, copied.shape)
    pred = np.where(copy[..., None], copied, pred)
    scores = np.round(rng.uniform(size=(images, slots)), 1)
    return pred, scores, target, target_mask


@pytest.mark.parametrize("seed", range(8))
def test_state_ap_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    problem = random_state_problem(rng, 12, 5, 4)
    table = metrics.state_ap_table(*problem, thresholds=(np.inf, 1, 0.5, 0.25, 0.125, 0.0))
    for threshold, ap in table.items():
        assert ap == pytest.approx(reference_state_ap(*problem, threshold), abs=1e-12)
    assert len({round(v, 9) for v in table.values()}) > 2  # The thresholds matter here.


@pytest.mark.parametrize("seed", range(8))
def test_box_ap_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    problem = random_box_problem(rng, 12, 5, 4)
    table = metrics.box_ap_table(*problem, thresholds=(0.05, 0.3, 0.5, 0.7, 0.9, 0.95, 1.0))
    for threshold, ap in table.items():
        assert ap == pytest.approx(reference_box_ap(*problem, threshold), abs=1e-12)
    assert len({round(v, 9) for v in table.values()}) > 2


def test_brute_force_reference_detects_a_fall_back_rule():
    # Guard that the random problems exercise the "best candidate used" rule: a
    # fall-back matcher gives a different AP on at least one of them.
    def fallback_state_ap(pred, scores, target, target_mask, threshold):
        detections, ground_truths, npos = to_lists(pred, scores, target, target_mask)
        groups = [(3, 5), (5, 13), (13, 16), (16, 18)]
        attrs = lambda v: tuple(int(np.argmax(v[a:b])) for a, b in groups)  # noqa: E731
        detections = sorted(detections, key=lambda d: d[1], reverse=True)
        used = {i: [False] * len(g) for i, g in ground_truths.items()}
        tp = []
        for image, _, det in detections:
            options = sorted(
                (float(np.linalg.norm(3 * (gt[:3] - det[:3]))), j)
                for j, gt in enumerate(ground_truths[image])
                if attrs(gt) == attrs(det) and not used[image][j]
            )
            if options and options[0][0] <= threshold:
                used[image][options[0][1]] = True
                tp.append(1)
            else:
                tp.append(0)
        tp = np.array(tp)
        ctp = np.cumsum(tp)
        return metrics.interpolated_average_precision(ctp / npos, ctp / np.arange(1, len(tp) + 1))

    differs = False
    for seed in range(8):
        problem = random_state_problem(np.random.default_rng(seed), 12, 5, 4)
        ours = metrics.state_average_precision(*problem, np.inf)
        differs |= abs(ours - fallback_state_ap(*problem, np.inf)) > 1e-9
    assert differs


# --- Input checking and packaging. --------------------------------------------


def test_errors_name_the_argument_and_shapes():
    target, target_mask = stack_images([[A, B]])
    pred = np.stack([[A, B, C]])
    scores = np.ones((1, 3))
    with pytest.raises(ValueError, match=r"`pred`.*18.*\(1, 3, 17\)"):
        metrics.state_average_precision(pred[..., :17], scores, target, target_mask, 1.0)
    with pytest.raises(ValueError, match=r"`target`.*\(1, 2, 4\)"):
        metrics.state_average_precision(pred, scores, target[..., :4], target_mask, 1.0)
    with pytest.raises(ValueError, match=r"`scores`.*\(1, 3\).*\(1, 2\)"):
        metrics.state_average_precision(pred, scores[:, :2], target, target_mask, 1.0)
    with pytest.raises(ValueError, match=r"`target_mask`.*\(1, 2\).*\(1, 3\)"):
        metrics.state_average_precision(pred, scores, target, np.ones((1, 3)), 1.0)
    with pytest.raises(ValueError, match=r"number of images"):
        metrics.state_average_precision(pred, scores, np.concatenate([target] * 2), np.ones((2, 2)), 1.0)
    with pytest.raises(ValueError, match=r"`pred`.*\[images, slots, 4\]"):
        metrics.box_average_precision(pred, scores, target, target_mask, 0.5)
    with pytest.raises(ValueError, match=r"`scores` contains NaN"):
        metrics.state_average_precision(pred, np.full((1, 3), np.nan), target, target_mask, 1.0)
    with pytest.raises(ValueError, match=r"no real ground truth"):
        metrics.state_average_precision(pred, scores, target, 0 * target_mask, 1.0)
    with pytest.raises(ValueError, match=r"`threshold`"):
        metrics.state_average_precision(pred, scores, target, target_mask, -1.0)
    with pytest.raises(ValueError, match=r"`iou_threshold`"):
        metrics.box_average_precision(np.zeros((1, 3, 4)), scores, np.zeros((1, 2, 4)), target_mask, 0.0)


def test_nan_predictions_are_false_positives():
    bad = A.copy()
    bad[0] = np.nan
    assert one_image_state_ap([bad, A], [0.9, 0.8], [A], np.inf) == pytest.approx(0.5)
    gt = [0.0, 0.0, 1.0, 1.0]
    assert one_image_box_ap([[np.nan, 0, 1, 1], gt], [0.9, 0.8], [gt], 0.5) == pytest.approx(0.5)


def test_metrics_module_does_not_import_tensorflow():
    # Load the file on its own: the package __init__ imports the Keras layers.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {metrics.__file__!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_format_table_shows_chamfer_to_four_decimals():
    """set-MNIST Chamfer x 1e3 is ~0.1: two decimals would print 0.151 and 0.142 alike as 0.15 / 0.14."""
    from dspn_tf.evaluation import format_table

    text = format_table({"10": {"chamfer": 0.000151234, "num_examples": 5}})
    assert "0.1512" in text
    ap = format_table({"10": {"ap_inf": 0.72771, "num_examples": 5}})
    assert "72.77" in ap and "(AP in %)" in ap
