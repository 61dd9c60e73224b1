r"""Input pipeline throughput (examples/s) of the library's dataset builders.

    python -m dspn_tf.data.clevr_mini --out /tmp/clevr_bench --train 500 --val 10
    python -m benchmarks.input_pipeline --mnist=/work/shared/data/mnist --clevr=/tmp/clevr_bench/CLEVR_v1.0

Measures batches of 32 exactly as training builds them (`dspn_tf.data.batches`:
shuffle buffer, repeat, batch, prefetch) for set-MNIST from the IDX files and for
CLEVR-format images from the decoded uint8 cache (built once, untimed).
The first pass (reading IDX / building the cache) is excluded.
"""

import argparse
import time

from benchmarks import harness


def throughput(dataset, batch_size, batches, warmup_batches=5):
    from dspn_tf.data import batches

    it = iter(batches(dataset, batch_size, shuffle_buffer=1024, seed=0))
    for _ in range(warmup_batches):
        next(it)
    load = harness.load_average()
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    del batch
    return {
        "examples_per_s": batches * batch_size / elapsed,
        "batches": batches,
        "seconds": elapsed,
        "load_before": load,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default="/work/shared/data/mnist", help="Folder with the MNIST IDX files.")
    parser.add_argument("--clevr", default=None, help="A CLEVR_v1.0 folder (e.g. made by dspn_tf.data.clevr_mini).")
    parser.add_argument("--cache_dir", default="/tmp/dspn_tf_bench_cache", help="Decoded-image cache for CLEVR.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--output", default="benchmarks/results/input_pipeline.json")
    args = parser.parse_args()

    from dspn_tf.data import clevr, set_mnist

    rows = []
    if args.mnist:
        ds = set_mnist.build_dataset(args.mnist, "train", shuffle_elements=True, seed=0)
        rows.append({"dataset": "set_mnist (IDX, train)", **throughput(ds, args.batch_size, args.batches)})
        print(rows[-1], flush=True)
    if args.clevr:
        for split in ("train",):
            ds = clevr.build_dataset(args.clevr, split, image_size=128, cache_dir=args.cache_dir, with_boxes=True)
            for _ in ds.take(1):
                pass  # Builds the cache if it is missing (untimed).
            rows.append(
                {
                    "dataset": f"clevr 128x128 state+boxes (cached uint8, {split})",
                    **throughput(ds, args.batch_size, args.batches),
                }
            )
            print(rows[-1], flush=True)
    harness.write_json(args.output, {"benchmark": "input_pipeline", "machine": harness.machine(), "rows": rows})
    print(
        harness.table(
            rows,
            [
                ("dataset", "dataset", None),
                ("examples_per_s", "examples/s", "{:.0f}"),
                ("batches", "batches of 32", None),
                ("load_before", "load (1/5/15 min)", None),
            ],
        )
    )
    print(f"Written to {args.output}")


if __name__ == "__main__":
    main()
