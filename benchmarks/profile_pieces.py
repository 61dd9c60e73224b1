r"""Times the pieces of a training step separately, to see what dominates.

    python -m benchmarks.profile_pieces --config=set_mnist
    python -m benchmarks.profile_pieces --config=clevr_decoder

Each piece is its own `tf.function`: forward-only and forward + gradient of
the set loss, the encoder alone, one DSPN inner step with its second-order
gradient, and the whole train step. Wall and process-CPU seconds are both
reported (CPU time is steadier when other jobs share the cores).
"""

import argparse
import json

from benchmarks import harness, train_step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("set_mnist", "clevr_decoder"), default="set_mnist")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--pieces", default="all", help="Comma-separated subset of the piece names.")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from dspn_tf import losses
    from dspn_tf.training import Trainer, per_sample_losses

    keras.utils.set_random_seed(0)
    model, optimizer, settings = train_step.build(args.config, "dspn")
    batch = train_step.random_batch(args.config, args.batch_size)
    target, mask = batch[settings.set_key], batch["mask"]
    decoder = model.decoder
    encoder = decoder.encoder
    steps = decoder.iters + 1
    pred_sets = tf.random.uniform([steps, *target.shape])
    pred_masks = tf.random.uniform([steps, *mask.shape])
    z = tf.random.normal([args.batch_size, encoder.latent])
    loss_fn = losses.chamfer_loss if settings.loss == "chamfer" else losses.hungarian_loss
    kwargs = {} if settings.loss == "chamfer" else {"all_steps": False}
    jit = args.jit_compile or None

    @tf.function(jit_compile=jit)
    def set_loss_forward():
        return loss_fn(pred_sets, pred_masks, target, mask, **kwargs)

    @tf.function(jit_compile=jit)
    def set_loss_grad():
        with tf.GradientTape() as tape:
            tape.watch([pred_sets, pred_masks])
            loss = loss_fn(pred_sets, pred_masks, target, mask, **kwargs)
        return tape.gradient(loss, [pred_sets, pred_masks])

    @tf.function(jit_compile=jit)
    def encoder_forward():
        return encoder(target, mask, training=True)

    @tf.function(jit_compile=jit)
    def inner_step_first_order():
        state, start = decoder._initial_state(z, True)
        return decoder.step(z, state._replace(set=target, mask=mask), start, True)[0].set

    @tf.function(jit_compile=jit)
    def inner_step_second_order():
        with tf.GradientTape() as tape:
            tape.watch(z)
            state, start = decoder._initial_state(z, True)
            new_state = decoder.step(z, state._replace(set=target, mask=mask), start, True)[0]
            out = tf.reduce_sum(new_state.set * new_state.set) + tf.reduce_sum(new_state.mask)
        return tape.gradient(out, [z] + encoder.trainable_variables)

    @tf.function(jit_compile=jit)
    def model_forward():
        return per_sample_losses(model, batch, settings, training=True)[1]["loss"]

    trainer = Trainer(model, optimizer, settings, global_batch_size=args.batch_size, jit_compile=args.jit_compile)
    pieces = {
        "set_loss_forward": set_loss_forward,
        "set_loss_grad": set_loss_grad,
        "encoder_forward": encoder_forward,
        "inner_step_first_order": inner_step_first_order,
        "inner_step_second_order": inner_step_second_order,
        "model_forward_with_loss": model_forward,
        "train_step": lambda: trainer.train_step(batch),
    }
    wanted = list(pieces) if args.pieces == "all" else args.pieces.split(",")
    rows = []
    for name in wanted:
        fn = pieces[name]
        timing = harness.time_calls(
            lambda: tf.nest.map_structure(lambda t: t.numpy(), fn()), warmup=1, repeats=args.repeats
        )
        rows.append({"piece": name, **timing})
        print(
            f"{name:28s} wall {timing['median_s']:.4f} s  cpu {timing['median_cpu_s']:.4f} s  "
            f"load {timing['load_before']}",
            flush=True,
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
