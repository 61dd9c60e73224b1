"""Helpers shared by the benchmarks: machine facts, timing, child processes, JSON and tables.

The benchmarks are modules of the `benchmarks` package, run from the
repository root as `python -m benchmarks.<name>` (not tests). Each
measurement runs in its own process when peak memory matters, because
`ru_maxrss` only grows.
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine():
    import keras
    import tensorflow as tf

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def peak_rss_mib():
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_calls(fn, *, warmup, repeats):
    """Calls `fn` `warmup` times, then times `repeats` calls.

    `fn` must block until its result is ready (e.g. call `.numpy()`).

    Returns:
        dict with median/min/max wall seconds per call, the median process CPU
        seconds per call (less sensitive to other processes on a busy machine)
        and the load average before and after.
    """
    load_before = load_average()
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "median_cpu_s": statistics.median(cpus),
        "repeats": repeats,
        "warmup": warmup,
        "load_before": load_before,
        "load_after": load_average(),
    }


def run_child(module, args):
    """Runs `python -m module args...` from the repository root; returns the JSON of its last stdout line."""
    out = subprocess.run(
        [sys.executable, "-m", module, *args], check=True, stdout=subprocess.PIPE, text=True, cwd=REPO
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def table(rows, columns):
    """A Markdown table of `rows` (dicts) with `columns` [(key, header, format)]."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else (fmt.format(value) if fmt else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Columns of a per-step timing table (rows from `time_calls` plus examples/s and peak RSS).
STEP_COLUMNS = [
    ("median_s", "median s/step", "{:.3f}"),
    ("min_s", "min s", "{:.3f}"),
    ("median_cpu_s", "CPU s/step", "{:.3f}"),
    ("examples_per_s", "examples/s", "{:.1f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
    ("load_before", "load (1/5/15 min)", None),
]


def step_line(label, row):
    """One progress line for a timed configuration."""
    return f"{label} {row['median_s']:.3f} s/step (cpu {row['median_cpu_s']:.3f} s, load {row['load_before']})"
