r"""Training-step time, examples/s and peak memory at the paper's configs.

    python -m benchmarks.train_step                      # every config and decoder, table + JSON
    python -m benchmarks.train_step --config=set_mnist --decoder=dspn --repeats=10
    python -m benchmarks.train_step --config=set_mnist --jit_compile

Configs (docs/algorithm.md §10), batch 32, random batches (data loading is not timed; see
input_pipeline.py):

- set_mnist: N 342 × 2, FSEncoder dim 256 latent 64, DSPN 10 steps lr 25,
  Chamfer over all 11 steps, Adam 1e-2. MLP baseline: decoder dim 256.
- clevr_decoder: the CLEVR-state set decoder alone: N 10 × 18, RNFSEncoder
  dim 512 latent 512, 10 steps, Hungarian on the final step + 0.1 × repr
  loss, Adam 3e-4. The "image" is a 512-d random feature vector and the image
  encoder a Dense(512), so z is an input-driven trainable embedding.
- clevr_resnet: full CLEVR state, ResNet34 image encoder at 128×128.

Each config's settings are read from its flagfile in configs/ (`FLAGFILES`)
through `train.config`, and every step is the library's own
`Trainer.train_step` (the `tf.function` that `train/loop.py` runs), so the
numbers are what users get. Each (config,
decoder) runs in a fresh process so that peak RSS is its own.
"""

import argparse
import dataclasses
import json
import os

from benchmarks import harness
from train.decoders import has_inner_loop

CONFIGS = ("set_mnist", "clevr_decoder", "clevr_resnet")
DECODERS = ("dspn", "mlp")
BATCH = 32


def random_batch(config, batch_size, seed=0, image_size=128, set_size=None):
    """A batch shaped like the config's data: sets with 32..N real elements first (N: `set_size` if given)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    if config == "set_mnist":
        n, c, low = 342, 2, 32
    else:
        n, c, low = 10, 18, 3
    if set_size is not None:
        n, low = set_size, min(low, set_size)
    sizes = rng.integers(low, n + 1, size=batch_size)
    mask = (np.arange(n)[None] < sizes[:, None]).astype(np.float32)
    values = rng.random((batch_size, n, c), dtype=np.float32) * mask[..., None]
    if config == "set_mnist":
        return {"set": tf.constant(values), "mask": tf.constant(mask)}
    if config == "clevr_decoder":
        image = rng.standard_normal((batch_size, FEATURES), dtype=np.float32)
    else:
        image = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    return {"image": tf.constant(image), "state": tf.constant(values), "mask": tf.constant(mask)}


# The paper's runs in configs/ that each benchmark config reads its settings from.
FLAGFILES = {
    "set_mnist": "set_mnist_{decoder}.cfg",
    "clevr_decoder": "clevr_state_{decoder}.cfg",
    "clevr_resnet": "clevr_state_{decoder}.cfg",
}
FEATURES = 512  # Width of clevr_decoder's random "image" feature vector.


def run_config(config, decoder, iters=10, inner_gradient="unrolled"):
    """The `RunConfig` of `configs/<FLAGFILES[config]>` with the benchmark's overrides."""
    from train import config as config_lib

    overrides = [f"--iters={iters}", f"--inner_gradient={inner_gradient}"]
    if inner_gradient == "implicit":
        overrides.append("--noloss_all_steps")  # Implicit gradients carry the final step only.
    flagfile = os.path.join(harness.REPO, "configs", FLAGFILES[config].format(decoder=decoder))
    return config_lib.load(flagfile, *overrides)


def build(config, decoder, iters=10, inner_gradient="unrolled", set_size=None, solver=None):
    """(model, optimizer, LossSettings) of a config, built from its flagfile through `train.config`.

    With `inner_gradient="implicit"` the set loss scores the final step only
    (implicit gradients carry nothing else), also for set-MNIST's Chamfer.
    clevr_decoder replaces the image encoder by a Dense(latent) of a
    random feature vector (see the module docstring); `set_size` replaces
    its task's set size, `solver` the Hungarian loss's assignment solver.
    """
    import keras

    from dspn_tf.baselines import MLPDecoder
    from dspn_tf.dspn import DSPN
    from dspn_tf.encoders import RNFSEncoder
    from dspn_tf.models import ImageToSet
    from train import config as config_lib

    run = run_config(config, decoder, iters, inner_gradient)
    if config == "clevr_decoder":
        task, settings = config_lib.task(run), run.model
        n = task.set_size if set_size is None else set_size
        if settings.iterative:
            encoder = RNFSEncoder(settings.dim, settings.latent, n_pieces=settings.n_pieces)
            dec = DSPN(encoder, n, task.set_channels, **settings.inner.as_dict())
        else:
            dec = MLPDecoder(n, task.set_channels, settings.decoder_dim)
        model = ImageToSet(keras.layers.Dense(settings.latent, name="embed"), dec).build_on_zeros((FEATURES,))
    else:
        if set_size is not None:
            raise ValueError("--set_size applies to --config=clevr_decoder only.")
        model = config_lib.build_model(run)
    settings = config_lib.loss_settings(run)
    if solver is not None:
        settings = dataclasses.replace(settings, solver=solver)
    return model, config_lib.build_optimizer(run, model, total=1), settings


def measure(args):
    import keras
    import tensorflow as tf

    from dspn_tf.training import Trainer

    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    keras.utils.set_random_seed(0)
    if args.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    iters = args.iters[0]  # A child process measures one count.
    model, optimizer, settings = build(
        args.config, args.decoder, iters, args.inner_gradient, set_size=args.set_size, solver=args.solver
    )
    if args.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    trainer = Trainer(model, optimizer, settings, global_batch_size=args.batch_size, jit_compile=args.jit_compile)
    batch = random_batch(args.config, args.batch_size, set_size=args.set_size)

    def step():
        return float(trainer.train_step(batch)["train/loss"])

    rss_before_mib = harness.peak_rss_mib()  # Model, optimizer and batch exist; no step has run.
    first_loss = step()  # Traces and compiles.
    if args.profile_dir:
        for _ in range(args.warmup):
            step()
        tf.profiler.experimental.start(args.profile_dir)
        for _ in range(3):
            step()
        tf.profiler.experimental.stop()
    timing = harness.time_calls(step, warmup=args.warmup, repeats=args.repeats)
    return {
        "config": args.config,
        "decoder": args.decoder,
        "batch_size": args.batch_size,
        "jit_compile": args.jit_compile,
        "policy": args.mixed_precision,
        "iters": iters,
        "inner_gradient": args.inner_gradient,
        "set_size": args.set_size,
        "solver": settings.for_step(jit_compile=args.jit_compile).solver,
        **timing,
        "examples_per_s": args.batch_size / timing["median_s"],
        "peak_rss_mib": harness.peak_rss_mib(),
        "step_rss_mib": harness.peak_rss_mib() - rss_before_mib,
        "traces": trainer.traces,
        "first_loss": first_loss,
        "machine": harness.machine(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=CONFIGS + ("all",), default="all")
    parser.add_argument("--decoder", choices=DECODERS + ("all",), default="all")
    parser.add_argument("--batch_size", type=int, default=BATCH)
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps after the first (tracing) one.")
    parser.add_argument("--repeats", type=int, default=10, help="Timed steps; the median is reported.")
    parser.add_argument("--jit_compile", action="store_true", help="XLA-compile the train step.")
    parser.add_argument("--set_size", type=int, help="clevr_decoder only: the set size (default: the task's 10).")
    parser.add_argument(
        "--solver", choices=("auto", "tf", "scipy"), help="Hungarian assignment solver (default: the config's)."
    )
    parser.add_argument(
        "--mixed_precision",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
        default="float32",
        help="Keras dtype policy (the DSPN inner loop stays float32).",
    )
    parser.add_argument("--iters", type=int, nargs="+", default=[10], help="DSPN inner steps (one row each).")
    parser.add_argument(
        "--inner_gradient",
        choices=("unrolled", "implicit", "both"),
        default="unrolled",
        help="How the DSPN inner loop is differentiated ('both': a row each).",
    )
    parser.add_argument("--intra_op_threads", type=int, default=0, help="0: TensorFlow's default.")
    parser.add_argument("--inter_op_threads", type=int, default=0, help="0: TensorFlow's default.")
    parser.add_argument("--profile_dir", default=None, help="Also write a TensorBoard profiler trace of 3 steps.")
    parser.add_argument("--output", default="benchmarks/results/train_step.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args)))
        return
    configs = CONFIGS if args.config == "all" else (args.config,)
    decoders = {"all": DECODERS}.get(args.decoder, (args.decoder,))
    gradients = ("unrolled", "implicit") if args.inner_gradient == "both" else (args.inner_gradient,)
    runs = [
        (config, decoder, iters, gradient)
        for config in configs
        for decoder in decoders
        for iters in (args.iters if has_inner_loop(decoder) else args.iters[:1])
        for gradient in (gradients if has_inner_loop(decoder) else gradients[:1])
    ]
    rows = []
    for config, decoder, iters, gradient in runs:
        argv = [
            "--child",
            f"--config={config}",
            f"--decoder={decoder}",
            f"--iters={iters}",
            f"--inner_gradient={gradient}",
            f"--batch_size={args.batch_size}",
            f"--warmup={args.warmup}",
            f"--repeats={args.repeats}",
            f"--mixed_precision={args.mixed_precision}",
            f"--intra_op_threads={args.intra_op_threads}",
            f"--inter_op_threads={args.inter_op_threads}",
        ]
        if args.jit_compile:
            argv.append("--jit_compile")
        if args.set_size:
            argv.append(f"--set_size={args.set_size}")
        if args.solver:
            argv.append(f"--solver={args.solver}")
        if args.profile_dir:
            argv.append(f"--profile_dir={os.path.join(args.profile_dir, config + '_' + decoder)}")
        row = harness.run_child("benchmarks.train_step", argv)
        print(harness.step_line(f"{config:14s} {decoder:5s} {gradient:8s} {iters:3d}", row), flush=True)
        rows.append(row)
    harness.write_json(args.output, {"benchmark": "train_step", "machine": rows[0]["machine"], "rows": rows})
    print(
        harness.table(
            rows,
            [
                ("config", "config", None),
                ("decoder", "decoder", None),
                ("inner_gradient", "gradient", None),
                ("iters", "iters", None),
                ("jit_compile", "XLA", None),
                ("set_size", "set size", None),
                ("solver", "solver", None),
                ("policy", "dtype policy", None),
                *harness.STEP_COLUMNS,
                ("step_rss_mib", "RSS growth in steps (MiB)", "{:.0f}"),
            ],
        )
    )
    print(f"Written to {args.output}")


if __name__ == "__main__":
    main()
