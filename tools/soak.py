r"""Soak: a long run of the quick start's config, watching memory, step time and retracing.

    python tools/soak.py --workdir=/tmp/soak [--steps=2000]

Runs `python -m train.train --flagfile=configs/clevr_mini_state_autoencoder_dspn.cfg` with
`--train_steps=<steps>` (checkpoints, pictures and periodic evaluation on, as in a real run;
no final evaluation) and stdout on a pipe, so the loop prints a progress line every 5 % of
the steps. At each line it samples the process's resident memory (RSS); the step time of each
5 % window comes from the lines' arrival times. It reports, as JSON:

- the RSS at every line, and its growth from step `--baseline_step` (200) to the end
  (pass: within `--max_growth`, 10 %);
- the traces of the train step (the run's last line; pass: exactly 1);
- the seconds per step of every window after the baseline, and the ratio of the last
  quarter's mean to the first quarter's (flat: within `--max_slowdown`, 1.25, which leaves
  room for other jobs on a shared machine).

The exit code is 0 when all three pass. `tests/test_soak.py` runs a short version.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/clevr_mini_state_autoencoder_dspn.cfg"
DEFAULT_OVERRIDES = ("--checkpoint_every=250", "--image_every=250", "--eval_every=500", "--log_every=20")


def _rss_mb(process):
    """Resident memory of the run and any child processes it forked (data generation), in MB."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def soak(workdir, *, steps=2000, baseline_step=200, overrides=DEFAULT_OVERRIDES, config=CONFIG, timeout=7200):
    """Runs the soak under `workdir`; returns the report dict (without the pass/fail verdicts)."""
    argv = [
        sys.executable,
        "-m",
        "train.train",
        f"--flagfile={config}",
        *overrides,
        f"--train_steps={steps}",
        f"--model_dir={os.path.join(workdir, 'run')}",
        f"--cache_dir={os.path.join(workdir, 'cache')}",
        "--progress",
        "--noevaluate_at_end",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process = psutil.Process(proc.pid)
    samples, tail, started, traces = [], [], time.time(), None
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            match = re.match(r"step (\d+)/(\d+)", line)
            if match:
                samples.append(
                    {"step": int(match.group(1)), "seconds": time.time() - started, "rss_mb": _rss_mb(process)}
                )
            match = re.search(r"(\d+) trace\(s\) of the train step", line)
            if match:
                traces = int(match.group(1))
            if time.time() - started > timeout:
                raise TimeoutError(f"the soak ran longer than {timeout} s")
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        raise RuntimeError(f"the run failed (exit code {code}):\n" + "\n".join(tail))
    for before, after in zip(samples, samples[1:]):
        after["window_s_per_step"] = (after["seconds"] - before["seconds"]) / (after["step"] - before["step"])
    base = min((s for s in samples if s["step"] >= baseline_step), key=lambda s: s["step"])
    end = samples[-1]
    windows = [s["window_s_per_step"] for s in samples if s["step"] > base["step"] and "window_s_per_step" in s]
    quarter = max(1, len(windows) // 4)
    return {
        "steps": end["step"],
        "baseline_step": base["step"],
        "rss_mb_at_baseline": round(base["rss_mb"], 1),
        "rss_mb_at_end": round(end["rss_mb"], 1),
        "rss_growth": end["rss_mb"] / base["rss_mb"] - 1,
        "traces": traces,
        "s_per_step_first_quarter": sum(windows[:quarter]) / quarter,
        "s_per_step_last_quarter": sum(windows[-quarter:]) / quarter,
        "slowdown": (sum(windows[-quarter:]) / quarter) / (sum(windows[:quarter]) / quarter),
        "samples": [{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()} for s in samples],
        "wall_seconds": round(time.time() - started, 1),
        "load_average": os.getloadavg(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="Empty folder for the run and its cache.")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--baseline_step", type=int, default=200)
    parser.add_argument("--max_growth", type=float, default=0.10)
    parser.add_argument("--max_slowdown", type=float, default=1.25)
    parser.add_argument("--report", help="Write the JSON report here as well.")
    parser.add_argument("overrides", nargs="*", help="Flags replacing the soak's default overrides.")
    args = parser.parse_args()
    report = soak(
        args.workdir,
        steps=args.steps,
        baseline_step=args.baseline_step,
        overrides=tuple(args.overrides) or DEFAULT_OVERRIDES,
    )
    report["passed"] = {
        "memory": abs(report["rss_growth"]) <= args.max_growth,
        "one_trace": report["traces"] == 1,
        "flat_step_time": report["slowdown"] <= args.max_slowdown,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
    sys.exit(0 if all(report["passed"].values()) else 1)


if __name__ == "__main__":
    main()
