"""A suggested inner step size for a DSPN on new data (docs/your_data.md, "Choosing the inner step size").

The DSPN paper tunes the inner step by hand: raise it until the sets visibly
move in the first steps. `suggest_inner_lr` makes that a rule. With the model
as it is (untrained is fine), it takes the first inner step from the starting
set towards g(target), the set encoder's embedding of a batch of targets, and
picks the smallest step on a log grid that moves the set by at least
`fraction` of the targets' spread:

- move: the root mean square of a sample's set-feature change in that first
  step (the mask channel is left out), averaged over the batch;
- spread: the standard deviation of each set feature over the real (mask 1)
  elements of the batch, averaged over the features.

The first step's direction does not depend on the step size (clipping and
momentum act on the gradient), so the move is linear in it and one gradient
gives every candidate. `DEFAULT_FRACTION` is the fraction at which the rule
picks the DSPN paper's step 25 on the CLEVR-state auto-encoding quick start.
"""

import numpy as np
import tensorflow as tf

# The candidates: 1, 2.5 and 5 per decade from 1e-3 to 5e4 (25 is one of them).
GRID = tuple(float(m * 10.0**e) for e in range(-3, 5) for m in (1.0, 2.5, 5.0))
# The share of the targets' spread that the first inner step must move a set by.
DEFAULT_FRACTION = 5e-4


def target_spread(target_set, target_mask):
    """The per-feature standard deviation of the real elements, averaged over the features.

    Raises:
        ValueError: if the batch holds fewer than two real elements, or their
            features do not vary at all.
    """
    values = np.asarray(target_set, np.float64)
    present = np.asarray(target_mask, np.float64) > 0.5
    elements = values[present]  # Shape: [real elements, C].
    if elements.shape[0] < 2:
        raise ValueError("suggest_inner_lr: the batch needs at least two real (mask 1) elements to measure a spread.")
    spread = float(np.mean(np.std(elements, axis=0)))
    if not spread > 0:
        raise ValueError("suggest_inner_lr: the batch's set features do not vary (zero spread).")
    return spread


def first_step_move(decoder, target_set, target_mask):
    """The first inner step's move per unit step size (see the module docstring), towards g(target)."""
    dtype = decoder.variable_dtype
    target_set = tf.convert_to_tensor(target_set, dtype)
    target_mask = tf.convert_to_tensor(target_mask, dtype)
    z = tf.cast(decoder.encoder(target_set, target_mask, training=False), dtype)
    if not decoder.built:
        decoder.build(z.shape)
    state, start = decoder._initial_state(z, training=False)
    _, set_grad, mask_grad = decoder.inner_gradient(z, state.set, state.mask, start)
    (set_direction, _), _ = decoder.inner_optimizer.update((set_grad, mask_grad), state.slots)
    per_sample = tf.sqrt(tf.reduce_mean(tf.square(set_direction), axis=[1, 2]))  # Shape: [batch].
    return float(tf.reduce_mean(per_sample))


def suggest_inner_lr(model, batch, *, set_key="set", fraction=DEFAULT_FRACTION, grid=GRID):
    """The smallest step on `grid` whose first inner step moves the set by `fraction` of the targets' spread.

    The rule (module docstring) reads the model as it is and changes nothing;
    a model built with `normalize_sets=True` is measured in its normalised
    units (adapt it first);
    set the result with `DSPN(lr=...)`, `build_model(inner={"lr": ...})` or
    `model.decoder.lr = ...` before the first call is traced.

    Args:
        model: A model whose decoder is a `DSPN` (`model.decoder`), or the `DSPN` itself.
        batch: A batch dict with a target set `[batch, N, C]` under `set_key`
            and its `mask` `[batch, N]`.
        set_key: Key of the target set in `batch` ("state" or "boxes" on CLEVR).
        fraction: The move asked of the first step, as a share of the spread.
        grid: Increasing candidate step sizes.

    Returns:
        A float from `grid`; its largest value if no candidate moves the set far enough.

    Raises:
        ValueError: if the model has no inner loop, the batch lacks the set or
            mask, `fraction` is not positive, or the set does not move (a zero gradient).
    """
    from dspn_tf.dspn import DSPN

    decoder = model if isinstance(model, DSPN) else getattr(model, "decoder", None)
    if not isinstance(decoder, DSPN):
        raise ValueError(
            f"suggest_inner_lr: the model's decoder is {type(decoder).__name__}, not a DSPN; "
            "only DSPN has an inner step size."
        )
    if not isinstance(batch, dict) or set_key not in batch or "mask" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"suggest_inner_lr: the batch needs {set_key!r} and 'mask'; received {keys}.")
    if not (isinstance(fraction, (int, float)) and fraction > 0):
        raise ValueError(f"suggest_inner_lr: `fraction` must be a positive number; received {fraction!r}.")
    target_set = batch[set_key]
    if getattr(model, "normalizes_sets", False):
        target_set = model.to_model_units(tf.convert_to_tensor(target_set), tf.convert_to_tensor(batch["mask"]))
    spread = target_spread(target_set, batch["mask"])
    per_unit = first_step_move(decoder, target_set, batch["mask"])
    if not per_unit > 0:
        raise ValueError("suggest_inner_lr: the first inner step does not move the set (zero gradient).")
    needed = fraction * spread / per_unit
    return next((float(lr) for lr in grid if lr >= needed), float(grid[-1]))
