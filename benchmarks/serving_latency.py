"""Latency (batch 1) and throughput (batch 64) of exported DSPN models in a clean process.

    python -m benchmarks.serving_latency [--out /tmp/serving_latency] [--iters 10,20,30]

Exports two untrained models with `dspn_tf.export.export_model` (timing does
not depend on the weights): the CLEVR-state-sized DSPN decoder (RNFSEncoder
dim 512, latent 512, N 10, C 18; timed through `decode`) and the default CPU
config's image model (ConvEncoder + RNFSEncoder dim 128, latent 128, 128 px;
timed through `serving_default`). Each is then loaded by
`tf.saved_model.load` in a fresh Python process that never imports dspn_tf,
and timed per iters: median wall time of repeated calls after a warm-up
call, and the median process CPU time (all threads) per call, which says
more than wall time when other work shares the machine.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, sys, time
    sys.modules["dspn_tf"] = None
    import numpy as np
    import tensorflow as tf
    path, signature, input_name, shape, iters_list = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
    fn = tf.saved_model.load(path).signatures[signature]
    rows = []
    for iters in iters_list:
        for batch, repeats in ((1, 10), (64, 3)):
            x = tf.random.uniform([batch] + shape)
            it = tf.constant(iters)
            fn(**{input_name: x}, iters=it)  # Warm-up.
            times, cpu = [], []
            for _ in range(repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn(**{input_name: x}, iters=it)["set"].numpy()
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            median = float(np.median(times))
            rows.append({"iters": iters, "batch": batch, "median_s": median, "per_second": batch / median,
                         "cpu_s": float(np.median(cpu))})
            print(json.dumps(rows[-1]), flush=True)
    print("RESULT " + json.dumps(rows))
""")


def export_models(out):

    from dspn_tf import DSPN, RNFSEncoder
    from dspn_tf.export import export_model
    from dspn_tf.image_encoders import ConvEncoder
    from dspn_tf.models import ImageToSet

    clevr = ImageToSet(ConvEncoder(512), DSPN(RNFSEncoder(dim=512, latent=512), set_size=10, set_channels=18))
    clevr.build_on_zeros((128, 128, 3))
    small = ImageToSet(ConvEncoder(128), DSPN(RNFSEncoder(dim=128, latent=128), set_size=10, set_channels=18))
    small.build_on_zeros((128, 128, 3))
    return {
        "clevr_state_decoder_512": (
            export_model(clevr, os.path.join(out, "clevr512"), save_keras=False),
            "decode",
            "z",
            [512],
        ),
        "default_cpu_image_model_128": (
            export_model(small, os.path.join(out, "small"), save_keras=False),
            "serving_default",
            "image",
            [128, 128, 3],
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/serving_latency")
    parser.add_argument("--iters", default="10,20,30")
    args = parser.parse_args()
    iters = [int(v) for v in args.iters.split(",")]
    results = {}
    for name, (path, signature, input_name, shape) in export_models(args.out).items():
        print(f"== {name}: {signature} of {path}", flush=True)
        proc = subprocess.run(
            [sys.executable, "-I", "-c", CHILD, path, signature, input_name, json.dumps(shape), json.dumps(iters)],
            capture_output=True,
            text=True,
            check=True,
            cwd=args.out,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        rows = json.loads(proc.stdout.split("RESULT ", 1)[1])
        results[name] = rows
        for row in rows:
            print(
                f"  iters {row['iters']:>2}  batch {row['batch']:>2}: {1000 * row['median_s']:9.1f} ms/call"
                f"  {row['per_second']:8.1f} sets/s  cpu {1000 * row['cpu_s']:9.1f} ms/call",
                flush=True,
            )
    print(json.dumps({"load_average": os.getloadavg(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
