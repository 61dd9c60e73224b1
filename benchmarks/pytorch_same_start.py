r"""dspn_tf and the PyTorch reference from the same weights, on the same set-MNIST batches.

    pip install torch==2.13.0        # a CPU build; torch is not a dependency of dspn_tf
    python -m benchmarks.pytorch_same_start --flagfile=configs/set_mnist_dspn.cfg \
        --override=--data_source=/path/to/mnist --steps=3
    python -m benchmarks.pytorch_same_start ... --override=--optimizer=keras_adam   # Keras' Adam instead
    python -m benchmarks.pytorch_same_start ... --free --steps=50                    # let them drift apart
    python -m benchmarks.pytorch_same_start ... --free --steps=750 --eval_examples=1000 --eval_every=375
    python -m benchmarks.pytorch_same_start ... --checkpoint=RUN/checkpoints/ckpt-375 --steps=0 \
        --eval_examples=1000                    # score one trained model in both frameworks

What it does: builds the run's model and optimizer as `train.train` does
(`train.config`, the run's `--seed`), copies the initial weights into the
channels-first PyTorch model of `benchmarks.pytorch_reference` (with
`torch.optim.Adam`, epsilon 1e-8), and trains both on the batches of
`train.train`. Every step prints both training losses and, per variable,
the norms of the two frameworks' gradients and Adam updates and of their
differences. By default the PyTorch weights are reset to dspn_tf's after
every step, so each step compares one update from identical weights;
`--free` lets both run on their own from the common start. `--checkpoint`
starts both from a trained dspn_tf model instead (fresh Adam states), and
`--eval_examples` scores both at the end on the first test sets, dspn_tf
through `dspn_tf.evaluation` (what `train.evaluate` reports) and PyTorch
through the reference's own inner loop. `--float64` also runs both models
in float64 and prints how far each framework's float32 gradient and dspn_tf's
float64 one are from the reference's float64 gradient: the two float64
gradients agree to rounding (1e-14) also at trained weights, where the
second-order inner loop amplifies float32 rounding and both frameworks'
float32 gradients are percents away from them.

This is the check that found Keras' epsilon placement: with
`keras.optimizers.Adam` the gradients agreed to 1e-5 but the first updates
of the encoder were up to 3.6x smaller than PyTorch's (benchmarks/README.md,
"Adam's epsilon").
"""

import argparse
import dataclasses
import sys

import numpy as np

from benchmarks.pytorch_reference import import_torch
from benchmarks.pytorch_set_mnist import Reference, run_config

# dspn_tf variable (suffix of its path) -> (PyTorch parameter of `Reference`, layout).
# Layouts: "dense" kernel [in, out] <-> Conv1d weight [out, in, 1]; "set" [1, N, C] <-> [1, C, N].
_PARAMETERS = {
    "hidden1/kernel": (lambda r: r.encoder.conv[0].weight, "dense"),
    "hidden1/bias": (lambda r: r.encoder.conv[0].bias, "same"),
    "hidden2/kernel": (lambda r: r.encoder.conv[2].weight, "dense"),
    "hidden2/bias": (lambda r: r.encoder.conv[2].bias, "same"),
    "project/kernel": (lambda r: r.encoder.conv[4].weight, "dense"),
    "project/bias": (lambda r: r.encoder.conv[4].bias, "same"),
    "pool/weight": (lambda r: r.encoder.pool.weight, "same"),
    "dspn/starting_set": (lambda r: r.decoder.starting_set, "set"),
    "dspn/starting_mask": (lambda r: r.decoder.starting_mask, "same"),
}


def to_torch_layout(value, layout):
    if layout == "dense":
        return value.T[..., None]
    if layout == "set":
        return np.transpose(value, (0, 2, 1))
    return value


def to_tf_layout(value, layout):
    if layout == "dense":
        return value[..., 0].T
    if layout == "set":
        return np.transpose(value, (0, 2, 1))
    return value


def pair_parameters(model, reference):
    """[(short name, dspn_tf variable, PyTorch parameter, layout)] for every trainable variable."""
    pairs = []
    for variable in model.trainable_variables:
        name = "/".join(variable.path.split("/")[-2:])
        if name not in _PARAMETERS:
            sys.exit(f"error: no PyTorch counterpart for the dspn_tf variable {variable.path!r}.")
        parameter, layout = _PARAMETERS[name]
        pairs.append((name, variable, parameter(reference), layout))
    return pairs


def copy_weights(torch, pairs):
    with torch.no_grad():
        for _, variable, parameter, layout in pairs:
            value = np.ascontiguousarray(to_torch_layout(variable.numpy(), layout))
            if tuple(value.shape) != tuple(parameter.shape):
                sys.exit(
                    f"error: {variable.path} has shape {value.shape} in PyTorch layout, the reference {tuple(parameter.shape)}."
                )
            parameter.copy_(torch.from_numpy(value))


def norm(x):
    return float(np.linalg.norm(x))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flagfile", required=True, help="A set-MNIST DSPN config, e.g. configs/set_mnist_dspn.cfg.")
    parser.add_argument("--override", action="append", default=[], help="A train flag (repeatable).")
    parser.add_argument("--steps", type=int, default=3, help="Training steps of each framework (0: none).")
    parser.add_argument("--free", action="store_true", help="Do not reset PyTorch's weights to dspn_tf's each step.")
    parser.add_argument(
        "--checkpoint", default=None, help="Start from this dspn_tf checkpoint (a train.train run's ckpt-N prefix)."
    )
    parser.add_argument(
        "--eval_examples", type=int, default=0, help="At the end, score both on the first this many test sets."
    )
    parser.add_argument(
        "--eval_every",
        type=int,
        default=0,
        help="With --eval_examples, also score both every this many training steps (0: only at the end).",
    )
    parser.add_argument(
        "--float64",
        action="store_true",
        help="Also compute both models' gradients in float64; print how far each is from the reference's float64 ones.",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own).")
    return parser.parse_args(argv)


class Pair:
    """dspn_tf's model, optimizer and trainer as `train.train` builds them, and the PyTorch reference."""

    def __init__(self, torch, args):
        import tensorflow as tf

        from dspn_tf import training
        from train import checkpoints
        from train import config as config_lib

        self.torch, self.tf = torch, tf
        cfg = self.cfg = run_config(args.flagfile, args.override)
        config_lib.set_seeds(cfg)  # As train.train: its run's initial weights and batch order.
        self.train_ds, size = config_lib.train_batches(cfg, tf.distribute.get_strategy())
        self.model = config_lib.build_model(cfg)  # Built next, as in train.train: the same initial draws.
        self.eval_ds = config_lib.eval_batches(cfg)
        if args.checkpoint:
            checkpoints.restore({"model": self.model}, None, args.checkpoint)
        self.optimizer = config_lib.build_optimizer(cfg, self.model, config_lib.total_steps(cfg, size))
        self.settings = config_lib.loss_settings(cfg)
        self.trainer = training.Trainer(
            self.model, self.optimizer, self.settings, global_batch_size=cfg.optimization.batch_size
        )
        self.reference = Reference(torch, cfg, config_lib.task(cfg).set_size)
        self.pairs = pair_parameters(self.model, self.reference)
        self.order = {id(p): i for i, p in enumerate(self.reference.modules.parameters())}
        self.eval_iters = int(config_lib.eval_iters(cfg)[0])
        self.exact = self.exact_model = None  # float64 copies of both models, for --float64.
        if args.float64:
            self.exact = Reference(torch, cfg, config_lib.task(cfg).set_size)
            self.exact.modules.double()
            # build_model applies the run's dtype policy: a float64 copy of the config gives float64 variables.
            self.exact_model = config_lib.build_model(
                dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, mixed_precision="float64"))
            )
        copy_weights(torch, self.pairs)

    def compared_step(self, step, batch):
        """One step of each from the current weights; prints losses, gradients and updates per variable."""
        from dspn_tf import training

        before = [v.numpy().copy() for _, v, _, _ in self.pairs]
        exact, exact_tf = self.exact_gradients(batch) if self.exact is not None else (None, None)
        _, losses, tf_grads = training.loss_and_gradients(
            self.model, self.optimizer, batch, self.settings, global_batch_size=self.cfg.optimization.batch_size
        )
        self.optimizer.apply(tf_grads, self.model.trainable_variables)
        torch_loss, grads = self.reference.train_step(batch, return_gradients=True)
        tf_loss = float(self.tf.reduce_mean(losses["loss"]))
        print(f"step {step}: training loss dspn_tf {tf_loss:.7f}, PyTorch {torch_loss:.7f}")
        print(
            f"  {'variable':20s} {'|grad| tf':>10s} {'torch':>10s} {'|diff|':>9s} "
            f"{'|update| tf':>12s} {'torch':>10s} {'|diff|':>9s}"
        )
        for i, ((name, variable, parameter, layout), tf_grad, w0) in enumerate(zip(self.pairs, tf_grads, before)):
            index = self.order[id(parameter)]
            g = to_tf_layout(grads[index], layout)
            a = variable.numpy() - w0
            b = to_tf_layout(parameter.detach().numpy(), layout) - w0
            line = (
                f"  {name:20s} {norm(tf_grad):10.3e} {norm(g):10.3e} {norm(tf_grad.numpy() - g):9.2e} "
                f"{norm(a):12.4e} {norm(b):10.4e} {norm(a - b):9.2e}"
            )
            if exact is not None:  # Relative distances from the reference's float64 gradient.
                e = to_tf_layout(exact[index], layout)
                scale = max(norm(e), 1e-30)
                line += (
                    f"  vs float64 torch: tf {norm(tf_grad.numpy() - e) / scale:.1e}, torch {norm(g - e) / scale:.1e},"
                    f" float64 tf {norm(exact_tf[i].numpy() - e) / scale:.1e}"
                )
            print(line)

    def exact_gradients(self, batch):
        """float64 gradients at the current weights: the reference's (list in its parameter order) and dspn_tf's.

        Both float64 copies take the float32 models' current weights; dspn_tf's
        gradients come in `trainable_variables` order, which is `self.pairs`'.
        """
        from dspn_tf import training

        torch, tf = self.torch, self.tf
        with torch.no_grad():
            for target, source in zip(self.exact.modules.parameters(), self.reference.modules.parameters()):
                target.copy_(source.double())
        for target, source in zip(self.exact_model.variables, self.model.variables):
            target.assign(tf.cast(source, target.dtype))
        wide = {key: tf.cast(value, tf.float64) if value.dtype.is_floating else value for key, value in batch.items()}
        _, _, tf_grads = training.loss_and_gradients(
            self.exact_model, self.optimizer, wide, self.settings, global_batch_size=self.cfg.optimization.batch_size
        )
        return self.exact.train_step(wide, return_gradients=True)[1], tf_grads

    def free_step(self, step, batch):
        """One step of each on its own weights; prints both losses and how far apart the weights are."""
        tf_loss = float(self.trainer.train_step(batch)["train/loss"])
        torch_loss = self.reference.train_step(batch)
        squared = [
            (norm(v.numpy() - to_tf_layout(p.detach().numpy(), layout)) ** 2, norm(v.numpy()) ** 2)
            for _, v, p, layout in self.pairs
        ]
        apart = (sum(d for d, _ in squared) / sum(w for _, w in squared)) ** 0.5  # Relative, all weights.
        print(f"step {step}: training loss dspn_tf {tf_loss:.7f}, PyTorch {torch_loss:.7f}; weights apart {apart:.2e}")

    def score(self, examples):
        """Test Chamfer x 1e3 of the final inner step on the first `examples` test sets, both frameworks."""
        from dspn_tf import evaluation

        first = self.eval_ds.unbatch().take(examples).batch(self.cfg.optimization.batch_size)
        predictions = evaluation.collect_predictions(self.model, first, set_key="set", iters_list=[self.eval_iters])
        tf_value = evaluation.chamfer_per_iters(predictions)[self.eval_iters]
        torch_value = self.reference.test_chamfer(first, self.eval_iters)
        print(
            f"test Chamfer x1e3 on the first {examples} sets at {self.eval_iters} inner steps: "
            f"dspn_tf (dspn_tf.evaluation) {tf_value * 1e3:.5f}, PyTorch reference {torch_value * 1e3:.5f}"
        )


def main(argv=None):
    args = parse_args(argv)
    torch = import_torch(args.threads)
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    pair = Pair(torch, args)
    start = (
        f"the checkpoint {args.checkpoint}" if args.checkpoint else f"the initial weights of seed {pair.cfg.run.seed}"
    )
    mode = "free-running" if args.free else "PyTorch's weights reset to dspn_tf's every step"
    mode = f"{args.steps} training steps, {mode}" if args.steps else "no training"
    optimizer = f"{type(pair.optimizer).__module__}.{type(pair.optimizer).__name__}"
    print(f"dspn_tf ({optimizer}) and PyTorch (torch.optim.Adam) from {start}; {mode}.")
    batches = iter(pair.train_ds)
    for step in range(1, args.steps + 1):
        batch = next(batches)
        if args.free and step > 1:
            pair.free_step(step, batch)
        else:
            pair.compared_step(step, batch)
            if not args.free:
                copy_weights(torch, pair.pairs)
        if args.eval_examples and args.eval_every and step % args.eval_every == 0 and step < args.steps:
            print(f"after step {step}:")
            pair.score(args.eval_examples)
    if args.eval_examples:
        pair.score(args.eval_examples)


if __name__ == "__main__":
    main()
