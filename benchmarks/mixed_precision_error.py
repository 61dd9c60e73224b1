r"""How far a mixed-precision training step is from float32, at the paper's configs.

    python -m benchmarks.mixed_precision_error [--config=set_mnist|clevr_decoder]

Builds the config (as train_step.py does) under float32 and under each mixed
policy with the *same* weights, runs one forward and backward pass on the
same random batch, and reports the relative error of the loss, of the first
inner gradient (the DSPN's `grad_norms` of step 0) and of the outer gradient
over all trainable variables. The DSPN inner loop runs in float32 under every
policy, so what remains comes from the encoding of the target set (and, for
CLEVR, the image embedding and the representation loss).
"""

import argparse
import json

from benchmarks import harness, train_step

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def measure(config):
    import keras
    import numpy as np
    import tensorflow as tf

    from dspn_tf.training import per_sample_losses

    batch = train_step.random_batch(config, train_step.BATCH)
    results, weights = {}, None
    for policy in POLICIES:
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        model, _, settings = train_step.build(config, "dspn")
        if weights is None:
            weights = [v.numpy() for v in model.variables]
        else:
            for v, w in zip(model.variables, weights):
                v.assign(w)
        with tf.GradientTape() as tape:
            outputs, losses = per_sample_losses(model, batch, settings, training=True)
            loss = tf.reduce_mean(losses["loss"])
        grads = tape.gradient(loss, model.trainable_variables)
        flat = np.concatenate([tf.reshape(tf.cast(g, tf.float32), [-1]).numpy() for g in grads if g is not None])
        results[policy] = {"loss": float(loss), "inner_grad": outputs["grad_norms"][0].numpy(), "grad": flat}
    keras.mixed_precision.set_global_policy("float32")
    reference = results["float32"]
    rows = []
    for policy in POLICIES[1:]:
        r = results[policy]
        rows.append(
            {
                "config": config,
                "policy": policy,
                "loss_rel_error": abs(r["loss"] - reference["loss"]) / abs(reference["loss"]),
                "inner_grad_norm_rel_error": float(
                    np.max(np.abs(r["inner_grad"] - reference["inner_grad"]) / np.abs(reference["inner_grad"]))
                ),
                "outer_grad_rel_error": float(
                    np.linalg.norm(r["grad"] - reference["grad"]) / np.linalg.norm(reference["grad"])
                ),
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("set_mnist", "clevr_decoder", "all"), default="all")
    parser.add_argument("--output", default="benchmarks/results/mixed_precision_error.json")
    args = parser.parse_args()
    configs = ("set_mnist", "clevr_decoder") if args.config == "all" else (args.config,)
    rows = [row for config in configs for row in measure(config)]
    harness.write_json(args.output, {"benchmark": "mixed_precision_error", "machine": harness.machine(), "rows": rows})
    print(
        harness.table(
            rows,
            [
                ("config", "config", None),
                ("policy", "policy", None),
                ("loss_rel_error", "loss rel. error", "{:.2e}"),
                ("inner_grad_norm_rel_error", "inner grad norm max rel. error", "{:.2e}"),
                ("outer_grad_rel_error", "outer gradient rel. error", "{:.2e}"),
            ],
        )
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
