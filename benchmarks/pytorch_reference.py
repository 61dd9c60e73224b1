r"""PyTorch timing baseline: one DSPN training step, structured like the reference.

    pip install torch==2.13.0            # CPU build; torch is not a dependency of dspn_tf
    python -m benchmarks.pytorch_reference                      # both configs, table + JSON
    python -m benchmarks.pytorch_reference --config=set_mnist --repeats=10 --threads=2
    python -m benchmarks.pytorch_reference --check              # quick correctness checks, no timing

What it measures: wall and process-CPU seconds per training step (forward,
10-step inner loop, outer loss, backward through the inner loop, Adam update)
at batch 32, for the two DSPN configs of benchmarks/train_step.py, so that the
TensorFlow numbers can be compared with PyTorch on the same machine:

- set_mnist: N 342 x 2 + mask, FSEncoder 256/64 (z is the encoding of the
  target set, autoencoder), inner loss smooth-L1 averaged over batch x latent
  with lr 800 (= 25 per sample at batch 32), Chamfer over all 11 steps, Adam 1e-2.
- clevr_decoder: N 10 x 18 + mask, RNFSEncoder 512/512, z = Linear(512, 512)
  of a random 512-d vector, Hungarian on the final step + 0.1 x repr loss,
  Adam 3e-4.

This file is our own PyTorch rendering of the *structure* of the original
public PyTorch implementation (channels-first `(B, C, N)` tensors, kernel-1
Conv1d/Conv2d layers, FSPool via `torch.sort`, inner loop with
`torch.autograd.grad(..., create_graph=True)`, Adam), written from
the project's algorithm description (docs/algorithm.md) for timing only. It is not a port of anyone's code and
is not used by the library or its tests.

Batches are random (same generator, seed and shapes as train_step.py's
`random_batch`), built once and not timed. Like train_step.py, each config
runs in a fresh subprocess so that its peak RSS is its own; timing follows
harness.time_calls (1 untimed first step, --warmup untimed, --repeats timed).
"""

import argparse
import json
import os
import platform
import sys

from benchmarks import harness

CONFIGS = ("set_mnist", "clevr_decoder")
BATCH = 32
N_PIECES = 20
INNER_ITERS = 10
PER_SAMPLE_STEP = 25.0  # the reference's lr 800 at batch 32, with a batch-mean inner loss


def import_torch(threads=None):
    """`torch`, with `torch.set_num_threads(threads)` if given; exits with an install hint without it."""
    try:
        import torch
    except ImportError:
        sys.exit(
            "error: PyTorch is not installed; this benchmark needs it (dspn_tf itself does not).\n"
            "Install a CPU build with:  pip install torch==2.13.0   (or any CPU torch)"
        )
    if threads:
        torch.set_num_threads(threads)
    return torch


# --------------------------------------------------------------------------------------------
# Model (channels-first, as in the reference).
# --------------------------------------------------------------------------------------------


def build_modules(torch):
    """Defines the nn.Module classes once torch is importable."""
    nn = torch.nn
    F = torch.nn.functional

    class FSPool(nn.Module):
        """Featurewise sort pooling (docs/algorithm.md §1) over the last axis of `(B, C, n)`."""

        def __init__(self, channels, n_pieces=N_PIECES):
            super().__init__()
            self.n_pieces = n_pieces
            self.weight = nn.Parameter(torch.randn(channels, n_pieces + 1))

        def piece_weights(self, n):
            """`(C, n)`: weight of sorted position i of n for every channel."""
            r = torch.arange(n, dtype=self.weight.dtype, device=self.weight.device) / max(n - 1, 1)
            t = self.n_pieces * r
            k = t.floor().clamp(max=self.n_pieces - 1)
            f = t - k
            k = k.long()
            return (1 - f) * self.weight[:, k] + f * self.weight[:, k + 1]

        def forward(self, x):
            sorted_x, _ = x.sort(dim=2, descending=True)
            return (sorted_x * self.piece_weights(x.size(2))).sum(dim=2)

    class FSEncoder(nn.Module):
        """[x, mask] -> Conv1d -> ReLU -> Conv1d -> ReLU -> Conv1d -> / N -> FSPool."""

        def __init__(self, input_channels, dim, latent):
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv1d(input_channels + 1, dim, 1),
                nn.ReLU(),
                nn.Conv1d(dim, dim, 1),
                nn.ReLU(),
                nn.Conv1d(dim, latent, 1),
            )
            self.pool = FSPool(latent)

        def first_layer(self):
            return self.conv[0]

        def forward(self, x, mask):
            h = self.conv(torch.cat([x, mask.unsqueeze(1)], dim=1))
            return self.pool(h / x.size(2))

    class RNFSEncoder(nn.Module):
        """All N*N ordered pairs [e_i, e_j] -> Conv2d -> ReLU -> Conv2d -> / N^2 -> FSPool."""

        def __init__(self, input_channels, dim, latent):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(2 * (input_channels + 1), dim, 1), nn.ReLU(), nn.Conv2d(dim, latent, 1))
            self.pool = FSPool(latent)

        def first_layer(self):
            return self.conv[0]

        def forward(self, x, mask):
            e = torch.cat([x, mask.unsqueeze(1)], dim=1)  # (B, C+1, N)
            b, c, n = e.shape
            pairs = torch.cat(
                [
                    e.unsqueeze(3).expand(b, c, n, n),  # e_i along dim 2
                    e.unsqueeze(2).expand(b, c, n, n),
                ],  # e_j along dim 3
                dim=1,
            )
            h = self.conv(pairs).view(b, -1, n * n)
            return self.pool(h / (n * n))

    class DSPN(nn.Module):
        """Algorithm 1: gradient descent on the set to match the encoder's output to z."""

        def __init__(self, encoder, set_channels, set_size, iters, lr):
            super().__init__()
            self.encoder = encoder
            self.iters = iters
            self.lr = lr
            self.starting_set = nn.Parameter(torch.rand(1, set_channels, set_size))
            self.starting_mask = nn.Parameter(0.5 * torch.ones(1, set_size))

        def forward(self, z, create_graph=True):
            b = z.size(0)
            current_set = self.starting_set.expand(b, -1, -1)
            current_mask = self.starting_mask.expand(b, -1).clamp(0, 1)
            sets, masks, losses = [current_set], [current_mask], []
            for _ in range(self.iters):
                predicted = self.encoder(current_set, current_mask)
                loss = F.smooth_l1_loss(predicted, z)  # mean over batch x latent, as the reference
                set_grad, mask_grad = torch.autograd.grad(loss, [current_set, current_mask], create_graph=create_graph)
                current_set = current_set - self.lr * set_grad
                current_mask = (current_mask - self.lr * mask_grad).clamp(0, 1)
                sets.append(current_set)
                masks.append(current_mask)
                losses.append(loss)
            return sets, masks, losses

    def xavier_init(module):
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    return FSPool, FSEncoder, RNFSEncoder, DSPN, xavier_init


# --------------------------------------------------------------------------------------------
# Losses (docs/algorithm.md §7).
# --------------------------------------------------------------------------------------------


def pairwise_cost(pred, target):
    """`(B, N_pred, N_target)`: Huber of pred_i - target_j averaged over features. Inputs `(B, F, N)`.

    smooth_l1 (beta 1 = Huber delta 1) on stride-0 expanded views: one fused `(B, F, N, N)`
    output per call instead of a chain of elementwise temporaries.
    """
    import torch.nn.functional as F

    b, f, n_pred = pred.shape
    n_target = target.size(2)
    p = pred.unsqueeze(3).expand(b, f, n_pred, n_target)
    t = target.unsqueeze(2).expand(b, f, n_pred, n_target)
    return F.smooth_l1_loss(p, t, reduction="none").mean(dim=1)


def chamfer(pred, target):
    d = pairwise_cost(pred, target)
    per_sample = d.min(dim=1)[0].mean(dim=1) + d.min(dim=2)[0].mean(dim=1)
    return per_sample.mean()


def hungarian(pred, target):
    import numpy as np
    import torch
    from scipy.optimize import linear_sum_assignment

    d = pairwise_cost(pred, target)
    cost = d.detach().cpu().numpy()
    rows, cols = [], []
    for c in cost:
        r, k = linear_sum_assignment(c)
        rows.append(r)
        cols.append(k)
    b = torch.arange(d.size(0)).unsqueeze(1)
    rows = torch.from_numpy(np.stack(rows))
    cols = torch.from_numpy(np.stack(cols))
    return d[b, rows, cols].mean(dim=1).mean()


# --------------------------------------------------------------------------------------------
# Configs.
# --------------------------------------------------------------------------------------------


def random_batch(config, batch_size, n=None, seed=0):
    """Numpy batch with the same generator, seed and layout as train_step.random_batch."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if config == "set_mnist":
        n_full, c, low = 342, 2, 32
    else:
        n_full, c, low = 10, 18, 3
    n = n or n_full
    low = min(low, n)
    sizes = rng.integers(low, n + 1, size=batch_size)
    mask = (np.arange(n)[None] < sizes[:, None]).astype(np.float32)
    values = rng.random((batch_size, n, c), dtype=np.float32) * mask[..., None]
    batch = {"set": values, "mask": mask}
    if config == "clevr_decoder":
        batch["image"] = rng.standard_normal((batch_size, 512), dtype=np.float32)
    return batch


class Step:
    """Model, optimiser and the batch of one config; `__call__` runs one training step."""

    def __init__(
        self,
        torch,
        config,
        batch_size=BATCH,
        set_size=None,
        dim=None,
        latent=None,
        seed=0,
        dtype=None,
        create_graph=True,
        constant_z=False,
        repr_lambda=None,
    ):
        _, FSEncoder, RNFSEncoder, DSPN, xavier_init = build_modules(torch)
        torch.manual_seed(seed)
        self.torch = torch
        self.config = config
        self.create_graph = create_graph
        self.constant_z = constant_z  # checks only: z computed once, then a constant
        self._z = None
        inner_lr = PER_SAMPLE_STEP * batch_size  # 800 at batch 32 (batch-mean inner loss)
        raw = random_batch(config, batch_size, n=set_size, seed=seed)
        n = raw["mask"].shape[1]
        # Channels-first, as the reference: set (B, C, N), mask (B, N).
        self.target_set = torch.from_numpy(raw["set"]).transpose(1, 2).contiguous()
        self.target_mask = torch.from_numpy(raw["mask"])
        if config == "set_mnist":
            self.encoder = FSEncoder(2, dim or 256, latent or 64)
            self.decoder = DSPN(self.encoder, 2, n, INNER_ITERS, inner_lr)
            self.modules = torch.nn.ModuleList([self.encoder, self.decoder])
            self.repr_lambda = 0.0 if repr_lambda is None else repr_lambda
            lr = 1e-2
        else:
            latent = latent or 512
            self.encoder = RNFSEncoder(18, dim or 512, latent)
            self.decoder = DSPN(self.encoder, 18, n, INNER_ITERS, inner_lr)
            self.image_encoder = torch.nn.Linear(512, latent)
            self.image = torch.from_numpy(raw["image"])
            self.modules = torch.nn.ModuleList([self.image_encoder, self.encoder, self.decoder])
            self.repr_lambda = 0.1 if repr_lambda is None else repr_lambda
            lr = 3e-4
        xavier_init(self.modules)
        if dtype is not None:
            self.modules.to(dtype)
            self.target_set = self.target_set.to(dtype)
            self.target_mask = self.target_mask.to(dtype)
            if config == "clevr_decoder":
                self.image = self.image.to(dtype)
        self.modules.train()
        self.optimizer = torch.optim.Adam(self.modules.parameters(), lr=lr, eps=1e-8)

    def loss(self):
        torch = self.torch
        F = torch.nn.functional
        target = torch.cat([self.target_set, self.target_mask.unsqueeze(1)], dim=1)
        if self.config == "set_mnist":
            z = self.encoder(self.target_set, self.target_mask)
        else:
            z = self.image_encoder(self.image)
        if self.constant_z:
            if self._z is None:
                self._z = z.detach()
            z = self._z
        sets, masks, _ = self.decoder(z, create_graph=self.create_graph)
        if self.config == "set_mnist":
            total = 0
            for s, m in zip(sets, masks):  # one (B, 3, N, N) cost at a time
                total = total + chamfer(torch.cat([s, m.unsqueeze(1)], dim=1), target)
            loss = total / len(sets)
        else:
            loss = hungarian(torch.cat([sets[-1], masks[-1].unsqueeze(1)], dim=1), target)
        if self.repr_lambda:
            loss = loss + self.repr_lambda * F.smooth_l1_loss(self.encoder(self.target_set, self.target_mask), z)
        return loss

    def __call__(self):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.optimizer.step()
        return loss.item()


# --------------------------------------------------------------------------------------------
# Checks, measurement, driver.
# --------------------------------------------------------------------------------------------


def check(torch):
    """Cheap correctness checks at small sizes; prints each result and returns True if all pass."""
    import itertools

    import numpy as np

    small = {"set_mnist": dict(set_size=24, dim=32, latent=8), "clevr_decoder": dict(dim=32, latent=16)}
    ok = True

    # 0. Losses against plain numpy loops on a tiny batch (pred/target (B, F, N), F = 3, N = 5).
    rng = np.random.default_rng(1)
    pred, target = (rng.normal(size=(2, 3, 5)) * 1.5 for _ in range(2))
    d = np.zeros((2, 5, 5))
    for b, i, j in itertools.product(range(2), range(5), range(5)):
        e = np.abs(pred[b, :, i] - target[b, :, j])
        d[b, i, j] = np.where(e < 1, 0.5 * e * e, e - 0.5).mean()
    want_chamfer = np.mean(d.min(axis=1).mean(axis=1) + d.min(axis=2).mean(axis=1))
    want_hungarian = np.mean(
        [min(np.mean(d[b, range(5), perm]) for perm in itertools.permutations(range(5))) for b in range(2)]
    )
    got_chamfer = float(chamfer(torch.from_numpy(pred), torch.from_numpy(target)))
    got_hungarian = float(hungarian(torch.from_numpy(pred), torch.from_numpy(target)))
    losses_ok = np.isclose(got_chamfer, want_chamfer) and np.isclose(got_hungarian, want_hungarian)
    print(
        f"losses vs brute force: chamfer {got_chamfer:.6f} / {want_chamfer:.6f}, "
        f"hungarian {got_hungarian:.6f} / {want_hungarian:.6f}: {'ok' if losses_ok else 'MISMATCH'}"
    )
    ok &= bool(losses_ok)
    for config in CONFIGS:
        # 1. The step runs, the loss is finite and goes down over a few steps on a fixed batch.
        step = Step(torch, config, batch_size=4, **small[config])
        losses = [step() for _ in range(15)]
        finite = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
        down = losses[-1] < losses[0]
        print(f"[{config}] losses {losses[0]:.5f} -> {losses[-1]:.5f}: finite {finite}, decreasing {down}")
        ok &= finite and down

        # 2. Second order: with z a constant and no repr loss, the encoder's weights reach the outer
        # loss only through the inner gradient steps. Their gradient must be nonzero with
        # create_graph=True and absent without it.
        grads = {}
        for create_graph in (True, False):
            s = Step(
                torch,
                config,
                batch_size=4,
                create_graph=create_graph,
                constant_z=True,
                repr_lambda=0.0,
                **small[config],
            )
            s.loss().backward()
            grads[create_graph] = s.encoder.first_layer().weight.grad
        g_norm = float(grads[True].norm()) if grads[True] is not None else 0.0
        no_second = grads[False] is None or float(grads[False].norm()) == 0.0
        print(
            f"[{config}] encoder first-layer grad via the inner loop only: |g| = {g_norm:.3e} "
            f"(create_graph=True); without create_graph: {'none' if no_second else 'nonzero'}"
        )
        ok &= g_norm > 0 and no_second

        # 3. That second-order gradient matches a central finite difference (float64, z held
        # constant; eps small enough not to cross ReLU / sort-order / clamp kinks here).
        s = Step(torch, config, batch_size=2, dtype=torch.float64, constant_z=True, repr_lambda=0.0, **small[config])
        w = s.encoder.first_layer().weight
        s.loss().backward()
        v = torch.randn_like(w)
        analytic = float((w.grad * v).sum())
        eps = 1e-8
        with torch.no_grad():
            w.add_(eps * v)
        plus = float(s.loss().detach())
        with torch.no_grad():
            w.sub_(2 * eps * v)
        minus = float(s.loss().detach())
        numeric = (plus - minus) / (2 * eps)
        rel = abs(analytic - numeric) / max(abs(numeric), 1e-12)
        print(
            f"[{config}] directional derivative: autograd {analytic:.6e}, finite difference {numeric:.6e}, "
            f"rel. error {rel:.1e}"
        )
        ok &= rel < 1e-4
    print("check: OK" if ok else "check: FAILED")
    return ok


def machine(torch):
    return {
        "cpu": harness.cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def measure(args, torch):
    if args.threads:
        torch.set_num_threads(args.threads)
    step = Step(torch, args.config, batch_size=BATCH)
    first_loss = step()  # untimed first step (allocator warm-up)
    timing = harness.time_calls(step, warmup=args.warmup, repeats=args.repeats)
    return {
        "config": args.config,
        "decoder": "dspn",
        "framework": "pytorch",
        "batch_size": BATCH,
        **timing,
        "examples_per_s": BATCH / timing["median_s"],
        "peak_rss_mib": harness.peak_rss_mib(),
        "first_loss": first_loss,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine(torch),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=CONFIGS + ("all",), default="all")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps after the first one.")
    parser.add_argument("--repeats", type=int, default=7, help="Timed steps; the median is reported.")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0: PyTorch's default.")
    parser.add_argument("--output", default="benchmarks/results/pytorch_reference.json")
    parser.add_argument(
        "--check", action="store_true", help="Run quick correctness checks at small sizes instead of timing."
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch = import_torch()

    if args.check:
        sys.exit(0 if check(torch) else 1)
    if args.child:
        print(json.dumps(measure(args, torch)))
        return
    configs = CONFIGS if args.config == "all" else (args.config,)
    rows = []
    for config in configs:
        row = harness.run_child(
            "benchmarks.pytorch_reference",
            [
                "--child",
                f"--config={config}",
                f"--warmup={args.warmup}",
                f"--repeats={args.repeats}",
                f"--threads={args.threads}",
            ],
        )
        print(harness.step_line(f"{config:14s}", row), flush=True)
        rows.append(row)
    harness.write_json(args.output, {"benchmark": "pytorch_reference", "machine": rows[0]["machine"], "rows": rows})
    print(
        harness.table(
            rows,
            [
                ("config", "config", None),
                ("decoder", "decoder", None),
                ("torch", "torch", None),
                ("threads", "threads", None),
                *harness.STEP_COLUMNS,
            ],
        )
    )
    print(f"Written to {args.output}")


if __name__ == "__main__":
    main()
