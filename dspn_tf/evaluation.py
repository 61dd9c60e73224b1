"""Evaluation of a trained model at several numbers of inner steps (docs/algorithm.md §9).

The model runs once per batch with the largest requested step count; the
intermediate steps it returns give every smaller count for free (step t of a
30-step run is exactly the result of a t-step run). AP is computed in NumPy
outside any `tf.function`. Predictions and targets are compared in the data's
units, also for a model with set normalisation (calling a model returns its
sets in the data's units, `dspn_tf.models`), so AP thresholds mean the same
with and without it.
"""

import weakref

import numpy as np
import tensorflow as tf

from dspn_tf import losses as losses_lib
from dspn_tf import metrics

# The target key of class-specific numbering (`dspn_tf.data.numbering`), scored by its accuracies.
NUMBERS_KEY = "numbers"


def _step_index(iters, total, name):
    if iters < 0 or iters > total:
        raise ValueError(f"evaluate: {name}={iters} is outside the decoder's 0..{total} steps.")
    return iters


# model -> its traced forward pass. A training loop evaluates the same model every few
# thousand steps: one trace serves them all instead of a new trace (its tracing time and the
# memory its graph holds) per evaluation. Weak both ways, so a dropped model is freed.
_RUNNERS = weakref.WeakKeyDictionary()


def _runner(model):
    run = _RUNNERS.get(model)
    if run is None:
        model_ref = weakref.ref(model)

        @tf.function(reduce_retracing=True)  # The last, smaller batch reuses the trace.
        def run(inputs, iters):
            # `iters` is a tensor, so the DSPN runs its graph loop: the same values as the
            # unrolled steps, from a graph whose size does not depend on the step count (an
            # unrolled graph grows with it and stays in memory as long as its trace;
            # benchmarks/README.md, "Evaluation memory").
            out = model_ref()(inputs, iters=iters, training=False)
            return out["sets"], out["masks"]

        _RUNNERS[model] = run
    return run


def collect_predictions(model, dataset, *, set_key, iters_list, max_batches=None):
    """Runs the model over a batched dataset and gathers NumPy arrays.

    Args:
        model: `SetAutoEncoder` or `ImageToSet`.
        dataset: Batched dicts with the model's inputs, `set_key` and `mask`.
        set_key: Target set key ("set", "state" or "boxes").
        iters_list: Inner step counts to keep (DSPN); ignored by baselines,
            whose single step is reported under every count.
        max_batches: Stop after this many batches.

    Returns:
        `{"pred": {iters: [images, N, C]}, "scores": {iters: [images, N]},
        "target": [images, M, C], "target_mask": [images, M]}`, and for a
        set-to-set model (`SetToSet`) its input sets `"input_set": [images, N, C_in]`.
    """
    iters_list = sorted({int(i) for i in iters_list})
    largest = iters_list[-1]
    run, largest = _runner(model), tf.constant(largest, tf.int32)

    preds = {i: [] for i in iters_list}
    scores = {i: [] for i in iters_list}
    targets, target_masks, input_sets = [], [], []
    for b, batch in enumerate(dataset):
        if max_batches is not None and b >= max_batches:
            break
        sets, masks = run(model.inputs_of(batch, set_key), largest)
        sets, masks = sets.numpy(), masks.numpy()
        one_shot = sets.shape[0] == 1
        for i in iters_list:
            t = 0 if one_shot else _step_index(i, sets.shape[0] - 1, "iters")
            preds[i].append(sets[t])
            scores[i].append(masks[t])
        targets.append(batch[set_key].numpy())
        target_masks.append(batch["mask"].numpy())
        if hasattr(model, "input_set_of"):
            input_sets.append(np.asarray(model.input_set_of(batch)))
    if not targets:
        raise ValueError("evaluate: the evaluation dataset is empty.")
    collected = {
        "pred": {i: np.concatenate(v) for i, v in preds.items()},
        "scores": {i: np.concatenate(v) for i, v in scores.items()},
        "target": np.concatenate(targets),
        "target_mask": np.concatenate(target_masks),
    }
    if input_sets:
        collected["input_set"] = np.concatenate(input_sets)
    return collected


def chamfer_per_iters(predictions):
    """Mean Chamfer loss of the final step, for each step count."""
    out = {}
    for i, pred in predictions["pred"].items():
        loss = losses_lib.chamfer_loss(
            pred, predictions["scores"][i], predictions["target"], predictions["target_mask"]
        )
        out[i] = float(loss)
    return out


def hungarian_per_iters(predictions):
    """Mean features-only Hungarian loss of the final step, for each step count (sets without padding).

    Per set: the smooth-L1 (beta 1) of every predicted and target element,
    averaged over the C features, summed over the optimal one-to-one matching
    (scipy's `linear_sum_assignment`) and divided by the n pairs; then the mean
    over the sets. The masks are not scored.
    """
    out = {}
    for i, pred in predictions["pred"].items():
        loss = losses_lib.hungarian_loss(
            pred,
            predictions["scores"][i],
            predictions["target"],
            predictions["target_mask"],
            solver="scipy",
            score_mask=False,
        )
        out[i] = float(loss)
    return out


METRICS = (None, "hungarian")


def evaluate(model, dataset, *, set_key, iters_list, max_batches=None, metric=None):
    """Metrics of the task named by `set_key` (or by `metric`) at every step count.

    Args:
        model: `SetAutoEncoder` or `ImageToSet`.
        dataset: Batched dicts with the model's inputs, `set_key` and `mask`.
        set_key: Target set key.
        iters_list: Inner step counts to evaluate at.
        max_batches: Stop after this many batches.
        metric: None: the metric of `set_key` (below); "hungarian": the
            features-only Hungarian loss of `hungarian_per_iters`, for sets
            without padding.

    Returns:
        A JSON-friendly dict `{str(iters): {metric: value}}`: `chamfer` for
        sets (set-MNIST); `ap_<t>` state AP for t in (inf, 1, 0.5, 0.25,
        0.125); `ap_<t>` box AP at IoU 0.5 … 0.95; `hungarian` with
        `metric="hungarian"`; `set_accuracy` and `element_accuracy` for
        class-specific numbering (`numbers`, `metrics.numbering_accuracy`); plus `num_examples`.
    """
    if metric not in METRICS:
        raise ValueError(f"evaluate: `metric` must be None or 'hungarian'; received {metric!r}.")
    predictions = collect_predictions(model, dataset, set_key=set_key, iters_list=iters_list, max_batches=max_batches)
    results = {}
    if metric == "hungarian":
        for i, value in hungarian_per_iters(predictions).items():
            results[str(i)] = {"hungarian": value}
    elif set_key == NUMBERS_KEY:
        for i, pred in predictions["pred"].items():
            whole, per_element = metrics.numbering_accuracy(pred, predictions["target"], predictions["input_set"])
            results[str(i)] = {"set_accuracy": float(whole.mean()), "element_accuracy": float(per_element.mean())}
    elif set_key == "set":
        for i, value in chamfer_per_iters(predictions).items():
            results[str(i)] = {"chamfer": value}
    else:
        for i in predictions["pred"]:
            args = (predictions["pred"][i], predictions["scores"][i], predictions["target"], predictions["target_mask"])
            if set_key == "state":
                table = metrics.state_ap_table(*args)  # Thresholds inf, 1, 0.5, 0.25, 0.125.
            elif set_key == "boxes":
                table = metrics.box_ap_table(*args)  # IoU 0.5, 0.55, ..., 0.95.
            else:
                raise ValueError(f"evaluate: unknown `set_key` {set_key!r}; expected 'set', 'state' or 'boxes'.")
            results[str(i)] = {f"ap_{threshold_name(t)}": float(ap) for t, ap in table.items()}
    for row in results.values():
        row["num_examples"] = int(predictions["target"].shape[0])
    return results


def threshold_name(t):
    """'inf', '1', '0.5', ... for summary tags and JSON keys."""
    if np.isinf(t):
        return "inf"
    return f"{float(t):g}"


def format_table(results, title=""):
    """A plain-text table: one row per step count, one column per metric."""
    rows = sorted(results.items(), key=lambda kv: int(kv[0]))
    columns = [k for k in rows[0][1] if k != "num_examples"]
    # (header, factor, decimals): Chamfer x 1e3 is ~0.1 on set-MNIST, so it needs more decimals than AP in %.
    scale = {"chamfer": ("chamfer x1e3", 1e3, 4), "hungarian": ("hungarian", 1.0, 5)}
    headers = ["iters"] + [scale.get(c, (c.replace("ap_", "AP "),))[0] for c in columns]
    lines = [title] if title else []
    lines.append("  ".join(f"{h:>12}" for h in headers))
    for iters, row in rows:
        cells = [f"{iters:>12}"]
        for c in columns:
            _, factor, decimals = scale.get(c, (None, 100.0, 2))
            cells.append(f"{row[c] * factor:>12.{decimals}f}")
        lines.append("  ".join(cells))
    if any(c.startswith("ap_") for c in columns):
        lines.append("(AP in %)")
    elif any(c.endswith("accuracy") for c in columns):
        lines.append("(accuracy in %: whole sets right, elements right)")
    return "\n".join(lines)
