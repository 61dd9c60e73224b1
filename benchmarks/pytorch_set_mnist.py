r"""Train the PyTorch reference DSPN on set-MNIST, on the same batches as `train.train`.

    pip install torch==2.13.0        # a CPU build; torch is not a dependency of dspn_tf
    python -m benchmarks.pytorch_set_mnist --flagfile=configs/set_mnist_dspn.cfg \
        --override=--data_source=/path/to/mnist --override=--epochs=1 \
        --eval_every=375 --output=/tmp/pytorch_set_mnist.json

What it does: builds the run's `RunConfig` from the flagfile (plus `--override`
flags) exactly as `train.train` does, takes its training batches from the same
tf.data pipeline (same shuffling seed, so the same sets in the same order),
and trains the channels-first PyTorch model of `benchmarks.pytorch_reference`
(FSEncoder, DSPN with `torch.autograd.grad(create_graph=True)`, Chamfer over
every step, Adam) for the same number of steps. Every `--eval_every` steps
and at the end it scores the test Chamfer loss of the final inner step on the
first `--eval_examples` test sets (the reference's evaluation set), and at the
end on the whole test set, the way `train.evaluate` does: the Huber
Chamfer of `[set, mask]` vectors, averaged over sets.

The inner step is 25 per sample at any batch size (the reference's 800 at
batch 32 with a batch-mean inner loss); a partial last evaluation batch gets
the same per-sample step, as in dspn_tf.

Only DSPN decoders on set-MNIST are supported (the run this reference is
compared with); the JSON holds the loss every `--log_every` steps (mean over
the window), the evaluations, the seconds per step and the machine.
"""

import argparse
import json
import os
import platform
import sys
import time

from benchmarks.pytorch_reference import build_modules, chamfer, import_torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flagfile", required=True, help="A set-MNIST DSPN config, e.g. configs/set_mnist_dspn.cfg.")
    parser.add_argument(
        "--override", action="append", default=[], help="A train flag that overrides the flagfile (repeatable)."
    )
    parser.add_argument("--eval_every", type=int, default=0, help="Evaluate every this many steps (0: at the end).")
    parser.add_argument("--eval_examples", type=int, default=1000, help="Test sets scored at each evaluation.")
    parser.add_argument("--log_every", type=int, default=20, help="Steps per logged mean training loss.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own).")
    parser.add_argument("--output", required=True, help="Results JSON.")
    return parser.parse_args(argv)


# The run the PyTorch reference implements: flag -> the values it supports.
REFERENCE_RUN = {"dataset": ("set_mnist",), "decoder": ("dspn",), "set_encoder": (None, "fs")}


def run_config(flagfile, overrides):
    from train import config as config_lib

    cfg = config_lib.load(flagfile, *overrides)
    if any(cfg.as_flags()[flag] not in values for flag, values in REFERENCE_RUN.items()):
        sys.exit(f"error: {flagfile} is not a set-MNIST DSPN run with the FSEncoder; only that is supported.")
    inner = cfg.model.inner
    if inner.gradient != "unrolled" or inner.momentum or inner.clip or cfg.optimization.repr_lambda:
        sys.exit(f"error: {flagfile} uses inner-loop options the PyTorch reference does not have.")
    return cfg


class Reference:
    """The PyTorch FSEncoder + DSPN of the run, with Adam."""

    def __init__(self, torch, cfg, set_size):
        _, FSEncoder, _, DSPN, xavier_init = build_modules(torch)
        torch.manual_seed(cfg.run.seed)
        self.torch = torch
        self.all_steps = cfg.optimization.loss_all_steps
        self.encoder = FSEncoder(2, cfg.model.dim, cfg.model.latent)
        self.decoder = DSPN(self.encoder, 2, set_size, cfg.model.inner.iters, lr=None)
        self.modules = torch.nn.ModuleList([self.encoder, self.decoder])
        xavier_init(self.modules)
        self.optimizer = torch.optim.Adam(self.modules.parameters(), lr=cfg.optimization.learning_rate, eps=1e-8)
        self.per_sample_step = cfg.model.inner.lr
        self.train_iters = cfg.model.inner.iters

    def decode(self, batch, iters, create_graph):
        torch = self.torch
        target_set = torch.from_numpy(batch["set"].numpy()).transpose(1, 2).contiguous()  # (B, 2, N)
        target_mask = torch.from_numpy(batch["mask"].numpy())
        self.decoder.lr = self.per_sample_step * target_set.size(0)  # batch-mean inner loss
        self.decoder.iters = iters
        z = self.encoder(target_set, target_mask)
        sets, masks, _ = self.decoder(z, create_graph=create_graph)
        target = torch.cat([target_set, target_mask.unsqueeze(1)], dim=1)
        return sets, masks, target

    def train_step(self, batch, return_gradients=False):
        """One Adam step on `batch`; returns the loss (and the gradients applied, NumPy, if asked)."""
        torch = self.torch
        self.modules.train()
        self.optimizer.zero_grad(set_to_none=True)
        sets, masks, target = self.decode(batch, self.train_iters, create_graph=True)
        scored = list(zip(sets, masks)) if self.all_steps else [(sets[-1], masks[-1])]
        loss = sum(chamfer(torch.cat([s, m.unsqueeze(1)], dim=1), target) for s, m in scored) / len(scored)
        loss.backward()
        grads = [p.grad.detach().numpy().copy() for p in self.modules.parameters()] if return_gradients else None
        self.optimizer.step()
        return (loss.item(), grads) if return_gradients else loss.item()

    def test_chamfer(self, batches, iters):
        """Mean over sets of the final step's Chamfer loss."""
        torch = self.torch
        self.modules.eval()
        total, count = 0.0, 0
        for batch in batches:
            sets, masks, target = self.decode(batch, iters, create_graph=False)
            pred = torch.cat([sets[-1], masks[-1].unsqueeze(1)], dim=1).detach()
            n = target.size(0)
            total += float(chamfer(pred, target)) * n
            count += n
        return total / count


def main(argv=None):
    args = parse_args(argv)
    torch = import_torch(args.threads)
    import tensorflow as tf

    from train import config as config_lib

    tf.config.set_visible_devices([], "GPU")
    cfg = run_config(args.flagfile, args.override)
    config_lib.set_seeds(cfg)  # The shuffle order depends on TF's global seed: train.train's batches need it.
    strategy = tf.distribute.get_strategy()
    train_ds, size = config_lib.train_batches(cfg, strategy)
    total = config_lib.total_steps(cfg, size)
    task = config_lib.task(cfg)
    model = Reference(torch, cfg, task.set_size)
    eval_iters = int(config_lib.eval_iters(cfg)[0])
    full_eval = config_lib.eval_batches(cfg)  # The whole test split unless --max_eval_examples is set.
    first_eval = full_eval.unbatch().take(args.eval_examples).batch(cfg.optimization.batch_size)
    print(f"PyTorch {torch.__version__} reference on {cfg.data.dataset}: {size:,} training sets, {total:,} steps.")

    log, window, evaluations, train_seconds = [], [], [], 0.0
    iterator = iter(train_ds)
    for step in range(1, total + 1):
        batch = next(iterator)
        start = time.perf_counter()
        window.append(model.train_step(batch))
        train_seconds += time.perf_counter() - start
        if step % args.log_every == 0 or step == total:
            log.append([step, sum(window) / len(window)])
            window = []
        if (args.eval_every and step % args.eval_every == 0) or step == total:
            value = model.test_chamfer(first_eval, eval_iters)
            evaluations.append([step, value])
            print(
                f"step {step}/{total}: train loss {log[-1][1]:.5f}, test Chamfer x1e3 on the first "
                f"{args.eval_examples} sets {value * 1e3:.4f}, {train_seconds / step:.3f} s/step",
                flush=True,
            )
    full = model.test_chamfer(full_eval, eval_iters)
    print(f"final: test Chamfer x1e3 on the test set ({cfg.data.max_eval_examples or 'all'} sets) {full * 1e3:.4f}")
    results = {
        "flagfile": args.flagfile,
        "overrides": args.override,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "steps": total,
        "seconds_per_step": train_seconds / total,
        "eval_iters": eval_iters,
        "train_loss": log,
        "test_chamfer_first": {"examples": args.eval_examples, "by_step": evaluations},
        "test_chamfer_full": full,
    }
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
