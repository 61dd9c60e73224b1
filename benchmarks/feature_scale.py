r"""Held-out loss of the quick-start task when the set features come in another scale.

    python -m benchmarks.feature_scale                           # x0.1, x1, x10 × every variant
    python -m benchmarks.feature_scale --scales=10 --variants=default,normalised

The task is the quick start's (DSPN auto-encoding the object states of
generated CLEVR-format scenes, `dspn_tf.data.clevr_states`), with the 18 state
features multiplied by each scale (the mask stays 0 / 1). Each run trains an
auto-encoder (FSEncoder `--dim` / `--latent`, `--iters` inner steps) with
Keras `fit` for `--steps` steps of `--batch_size`, then scores the held-out
scenes: the Hungarian loss of the final step (feature-mean Huber of
`[set, mask]`, docs/algorithm.md §6) with predictions and targets in the
scaled (the user's) units, and again with the scale divided out of both
(the units of the x1 run, so comparable across scales). Variants:

- default: the inner step 25;
- suggested: the step `dspn_tf.suggest_inner_lr` picks for the built model
  and the first training batch;
- normalised: `normalize_sets=True` and `model.adapt` on the training sets, step 25;
- both: normalisation, then the suggested step for the adapted model;
- lr<step>, e.g. lr250: no normalisation, that inner step.
"""

import argparse
import os
import re
import time

from benchmarks import harness

VARIANTS = ("default", "suggested", "normalised", "both")


def run(scale, variant, args):
    import keras
    import numpy as np
    import tensorflow as tf

    import dspn_tf
    from dspn_tf.data import clevr_states
    from dspn_tf.loss_settings import LossSettings

    cache = os.path.join(os.path.expanduser("~/.cache/dspn_tf"), "clevr_states")
    train_set, train_mask = clevr_states.generated_states("train", num_scenes=args.train, seed=0, cache_dir=cache)
    val_set, val_mask = clevr_states.generated_states("val", num_scenes=args.val, seed=0, cache_dir=cache)
    train_set, val_set = train_set * np.float32(scale), val_set * np.float32(scale)

    keras.utils.set_random_seed(args.seed)
    normalised = variant in ("normalised", "both")
    options = {"normalize_sets": True} if normalised else {}
    model = dspn_tf.build_model(
        "autoencoder",
        decoder="dspn",
        set_size=10,
        set_channels=18,
        dim=args.dim,
        latent=args.latent,
        inner={"iters": args.iters, "lr": 25.0},
        input_shape=(10, 18),
        **options,
    )
    sets = tf.data.Dataset.from_tensor_slices({"state": train_set, "mask": train_mask})
    # adapt and the suggestion read the training sets in file order, so that every variant
    # trains on the same shuffled batches.
    if normalised:
        model.adapt(sets.batch(args.batch_size).take(args.adapt_batches), set_key="state")
    lr = float(variant[len("lr") :]) if variant.startswith("lr") else 25.0
    if variant in ("suggested", "both"):
        first = {"state": train_set[: args.batch_size], "mask": train_mask[: args.batch_size]}
        lr = dspn_tf.suggest_inner_lr(model, first, set_key="state")
    model.decoder.lr = lr
    train = sets.shuffle(len(train_set), seed=args.seed).repeat().batch(args.batch_size, drop_remainder=True)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss_settings=LossSettings(set_key="state", loss="hungarian", all_steps=True),
    )
    start = time.perf_counter()
    model.fit(train, steps_per_epoch=args.steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    pred = model.predict({"state": val_set, "mask": val_mask}, batch_size=250, verbose=0)

    def held_out(pred_set, target_set):
        return float(
            dspn_tf.losses.hungarian_loss(pred_set, pred["mask"], target_set, val_mask, all_steps=False, solver="scipy")
        )

    return {
        "scale": scale,
        "variant": variant,
        "inner_lr": lr,
        "held_out_loss": held_out(pred["set"], val_set),
        # The same sets with the scale divided out: comparable across scales (the x1 run's units).
        "held_out_loss_x1_units": held_out(pred["set"] / np.float32(scale), val_set / np.float32(scale)),
        # Slots predicted absent (mask < 0.5) written as padding is, the zero vector: a normalised
        # model returns such slots at the feature means, which the loss scores against zero padding.
        "held_out_loss_x1_units_absent_zeroed": held_out(
            np.where(pred["mask"][..., None] >= 0.5, pred["set"], 0.0) / np.float32(scale), val_set / np.float32(scale)
        ),
        "fit_s": seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="0.1,1,10")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--train", type=int, default=20000, help="Generated training scenes.")
    parser.add_argument("--val", type=int, default=1000, help="Generated held-out scenes.")
    parser.add_argument("--adapt_batches", type=int, default=50, help="Training batches `adapt` reads.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/feature_scale.json")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(v for v in set(variants) - set(VARIANTS) if not re.fullmatch(r"lr[0-9.]+", v))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    rows = []
    for scale in (float(s) for s in args.scales.split(",")):
        for variant in variants:
            row = run(scale, variant, args)
            print(
                f"x{scale:g} {variant:10s} inner lr {row['inner_lr']:g}: held-out loss {row['held_out_loss']:.5f}, "
                f"in x1 units {row['held_out_loss_x1_units']:.5f}, absent slots zeroed "
                f"{row['held_out_loss_x1_units_absent_zeroed']:.5f} ({row['fit_s']:.0f} s)",
                flush=True,
            )
            rows.append(row)
    harness.write_json(
        args.output, {"benchmark": "feature_scale", "machine": harness.machine(), "args": vars(args), "rows": rows}
    )
    print(
        harness.table(
            rows,
            [
                ("scale", "features ×", None),
                ("variant", "variant", None),
                ("inner_lr", "inner step", "{:g}"),
                ("held_out_loss", "held-out loss (the data's units)", "{:.5f}"),
                ("held_out_loss_x1_units", "held-out loss (scale divided out)", "{:.5f}"),
                ("held_out_loss_x1_units_absent_zeroed", "same, absent slots zeroed", "{:.5f}"),
            ],
        )
    )
    print(f"Written to {args.output}")


if __name__ == "__main__":
    main()
