r"""DSPN inference: latency at batch 1 and throughput at batch 64 at 10, 20, 30 steps.

    python -m benchmarks.inference                        # both configs, in-process tf.function
    python -m benchmarks.inference --config=set_mnist --savedmodel

The in-process model runs the graph `while_loop` decoder (an int32 `iters`
tensor, as in serving) inside one `tf.function`. With `--savedmodel` the
model is also exported with `dspn_tf.export` (if present) and the loaded
`serving_default` signature is timed. Weights are untrained (speed does not
depend on them).
"""

import argparse
import tempfile

from benchmarks import harness, train_step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("set_mnist", "clevr_resnet", "all"), default="all")
    parser.add_argument("--iters", default="10,20,30")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch_sizes", default="1,64", help="Comma-separated batch sizes (one row each).")
    parser.add_argument("--savedmodel", action="store_true", help="Also time the exported, reloaded SavedModel.")
    parser.add_argument("--output", default="benchmarks/results/inference.json")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    configs = ("set_mnist", "clevr_resnet") if args.config == "all" else (args.config,)
    rows = []
    for config in configs:
        keras.utils.set_random_seed(0)
        model, _, settings = train_step.build(config, "dspn")
        key = "set" if config == "set_mnist" else "image"

        @tf.function(reduce_retracing=True)
        def infer(inputs, iters):
            out = model(inputs, iters=iters, training=False)
            return out["sets"][-1], out["masks"][-1]

        runners = {"tf.function": lambda inputs, iters: infer(inputs, tf.constant(iters))}
        if args.savedmodel:
            try:
                from dspn_tf import export
            except ImportError:
                export = None
            if export is not None:
                base = tempfile.mkdtemp(prefix="dspn_bench_export_")
                loaded = tf.saved_model.load(export.export_model(model, base, save_keras=False))
                serving = loaded.signatures["serving_default"]

                def run_saved(inputs, iters, serving=serving):
                    kwargs = dict(inputs) if isinstance(inputs, dict) else {"image": inputs}
                    return serving(**kwargs, iters=tf.constant(iters))

                runners["SavedModel"] = run_saved
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            batch = train_step.random_batch(config, batch_size)
            inputs = {"set": batch["set"], "mask": batch["mask"]} if key == "set" else batch["image"]
            for iters in (int(i) for i in args.iters.split(",")):
                for runner_name, runner in runners.items():
                    fn = lambda: tf.nest.map_structure(lambda t: t.numpy(), runner(inputs, iters))  # noqa: E731
                    timing = harness.time_calls(fn, warmup=2, repeats=args.repeats)
                    row = {
                        "config": config,
                        "runner": runner_name,
                        "batch_size": batch_size,
                        "iters": iters,
                        **timing,
                        "latency_ms": 1e3 * timing["median_s"],
                        "examples_per_s": batch_size / timing["median_s"],
                    }
                    rows.append(row)
                    print(
                        f"{config} {runner_name} batch {batch_size} iters {iters}: {row['latency_ms']:.1f} ms "
                        f"({row['examples_per_s']:.1f} ex/s, load {timing['load_before']})",
                        flush=True,
                    )
    harness.write_json(args.output, {"benchmark": "inference", "machine": harness.machine(), "rows": rows})
    print(
        harness.table(
            rows,
            [
                ("config", "config", None),
                ("runner", "runner", None),
                ("batch_size", "batch", None),
                ("iters", "steps", None),
                ("latency_ms", "median ms/call", "{:.1f}"),
                ("median_cpu_s", "CPU s/call", "{:.3f}"),
                ("examples_per_s", "examples/s", "{:.1f}"),
                ("load_before", "load (1/5/15 min)", None),
            ],
        )
    )
    print(f"Written to {args.output}")


if __name__ == "__main__":
    main()
