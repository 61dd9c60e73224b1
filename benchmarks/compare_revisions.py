r"""A/B step times of two git revisions, interleaved so that machine drift hits both.

    python -m benchmarks.compare_revisions --base=0e1cb38                  # base vs this working tree
    python -m benchmarks.compare_revisions --base=HEAD~3 --head=HEAD --config=set_mnist --rounds=5

Wall time on a shared or virtual machine drifts by ±10 % between runs
minutes apart, more than most single changes are worth. This script checks
each revision out into a temporary git worktree (the working tree itself
for `--head=.`), then runs `benchmarks.train_step` for base and head alternately,
`--rounds` times per config, each run in a fresh process on that revision's
own `dspn_tf` (PYTHONPATH). It reports every round and the median over
rounds of the per-run medians, wall and CPU, and the head/base ratio.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import harness

REPO = harness.REPO


def checkout(rev, parent):
    """A worktree of `rev` under `parent` (or the repository itself for '.')."""
    if rev == ".":
        return REPO
    path = os.path.join(parent, rev.replace("/", "_").replace("~", "-"))
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "--quiet", path, rev], check=True)
    return path


def run_step(tree, config, decoder, warmup, repeats, extra):
    """One train_step.py child on `tree`'s code; returns its JSON row."""
    env = dict(os.environ, PYTHONPATH=tree)
    if os.path.isfile(os.path.join(tree, "benchmarks", "__init__.py")):
        command = ["-m", "benchmarks.train_step"]
    else:  # A revision from before benchmarks/ became a package.
        command = [os.path.join(tree, "benchmarks", "train_step.py")]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        subprocess.run(
            [
                sys.executable,
                *command,
                f"--config={config}",
                f"--decoder={decoder}",
                f"--warmup={warmup}",
                f"--repeats={repeats}",
                f"--output={out}",
                *extra,
            ],
            check=True,
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        with open(out) as f:
            return json.load(f)["rows"][0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="Git revision to compare against.")
    parser.add_argument("--head", default=".", help="Git revision, or '.' for the working tree (default).")
    parser.add_argument("--config", default="set_mnist,clevr_decoder", help="Comma-separated train_step configs.")
    parser.add_argument("--decoder", default="dspn", choices=("dspn", "mlp"))
    parser.add_argument("--rounds", type=int, default=3, help="Alternating runs per revision and config.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mixed_precision", default="float32", choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument(
        "--inner_gradient", default="unrolled", choices=("unrolled", "implicit"), help="DSPN inner-loop gradient."
    )
    parser.add_argument("--output", default="benchmarks/results/compare_revisions.json")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")

    extra = [f"--mixed_precision={args.mixed_precision}"]
    if args.inner_gradient != "unrolled":  # Revisions from before --inner_gradient know only the default.
        extra.append(f"--inner_gradient={args.inner_gradient}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dspn_tf_ab_") as parent:
        trees = {}
        try:
            trees = {"base": checkout(args.base, parent), "head": checkout(args.head, parent)}
            for config in args.config.split(","):
                runs = {"base": [], "head": []}
                for round_index in range(args.rounds):
                    # Alternate which side goes first, so neither always runs on a warmer machine.
                    order = ("base", "head") if round_index % 2 == 0 else ("head", "base")
                    for side in order:
                        row = run_step(trees[side], config, args.decoder, args.warmup, args.repeats, extra)
                        runs[side].append(row)
                        print(harness.step_line(f"round {round_index + 1} {side:4s} {config:14s}", row), flush=True)
                summary = {"config": config, "decoder": args.decoder}
                for side in ("base", "head"):
                    summary[f"{side}_s"] = statistics.median(r["median_s"] for r in runs[side])
                    summary[f"{side}_cpu_s"] = statistics.median(r["median_cpu_s"] for r in runs[side])
                summary["wall_ratio"] = summary["head_s"] / summary["base_s"]
                summary["cpu_ratio"] = summary["head_cpu_s"] / summary["base_cpu_s"]
                summary["runs"] = runs
                rows.append(summary)
        finally:
            for tree in trees.values():
                if tree != REPO:
                    subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree], check=False)
    harness.write_json(
        args.output,
        {
            "benchmark": "compare_revisions",
            "base": args.base,
            "head": args.head,
            "rounds": args.rounds,
            "policy": args.mixed_precision,
            "rows": rows,
        },
    )
    print(
        harness.table(
            rows,
            [
                ("config", "config", None),
                ("decoder", "decoder", None),
                ("base_s", f"{args.base} s/step", "{:.3f}"),
                ("head_s", f"{args.head} s/step", "{:.3f}"),
                ("wall_ratio", "head / base (wall)", "{:.3f}"),
                ("base_cpu_s", "base CPU s", "{:.3f}"),
                ("head_cpu_s", "head CPU s", "{:.3f}"),
                ("cpu_ratio", "head / base (CPU)", "{:.3f}"),
            ],
        )
    )
    print(f"Written to {args.output}")


if __name__ == "__main__":
    main()
