"""Every flag of the entry points (train.train, train.evaluate, train.export, train.pictures).

One module defines them all, so one flagfile serves every entry point. Only
`train/config.py` reads them, once, into a `RunConfig`. The inner-loop flags
are checked by `dspn_tf.inner.InnerLoopConfig.check`, the rule `DSPN` itself
applies, when the flags are parsed: a value the model would refuse is refused
with the flag's name before any data is built.
"""

import math
import re

from absl import flags

from dspn_tf.inner.config import InnerLoopConfig
from train import decoders, tasks

# Data.
flags.DEFINE_enum(
    "dataset",
    "clevr_state",
    tasks.names(),
    "Task and dataset (train/tasks.py): "
    + "; ".join(f"{name}: {tasks.get(name).description}" for name in tasks.names())
    + ".",
)
flags.DEFINE_string(
    "data_source",
    "generated",
    "Where the data comes from: 'generated' (CLEVR-format scenes rendered offline on first use and cached; "
    "CLEVR tasks only; the state auto-encoder needs only the scenes, not their images), 'tfds', or a folder "
    "(MNIST IDX files, or a CLEVR_v1.0 folder).",
)
flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (for --data_source=tfds).")
flags.DEFINE_string(
    "cache_dir", None, "Cache for generated scenes and decoded images (default $DSPN_TF_CACHE or ~/.cache/dspn_tf)."
)
flags.DEFINE_integer(
    "generated_train", 3000, "Scenes (random_sets: sets) generated for training (--data_source=generated)."
)
flags.DEFINE_integer(
    "generated_val", 500, "Scenes (random_sets: sets) generated for evaluation (--data_source=generated)."
)
flags.DEFINE_integer("image_size", 128, "Side of the square CLEVR input images.")
flags.DEFINE_integer("max_train_examples", None, "Use only this many training examples (quick runs).")
flags.DEFINE_integer("max_eval_examples", None, "Evaluate on at most this many examples.")
flags.DEFINE_integer("shuffle_buffer", 1024, "Example shuffle buffer (kept in checkpoints).")

# Model.
flags.DEFINE_enum(
    "decoder", "dspn", decoders.names(), "Set decoder (deepsets: the set-equivariant baseline of --dataset=numbering)."
)
flags.DEFINE_enum("set_encoder", None, ["fs", "rnfs"], "Set encoder (default: fs for set-MNIST, rnfs for CLEVR).")
flags.DEFINE_enum(
    "image_encoder",
    "conv",
    ["conv", "resnet18", "resnet34"],
    "Image encoder for CLEVR tasks: a small CNN, iDSPN's ResNet18 or the DSPN paper's ResNet34.",
)
flags.DEFINE_integer("dim", 256, "Hidden width of the set encoder.")
flags.DEFINE_integer("latent", 64, "Embedding size.")
flags.DEFINE_integer("decoder_dim", None, "Hidden width of the MLP / LSTM baselines (default: --dim).")
flags.DEFINE_float(
    "baseline_mask_offset",
    0.0,
    "Added to the MLP / LSTM baselines' raw mask output (the paper's set-MNIST runs: 1; the reference code: 0).",
)
# iDSPN's random-set auto-encoder (--dataset=random_sets): its decoder's own objective encoder and start.
flags.DEFINE_bool(
    "separate_objective_encoder",
    False,
    "Auto-encoder with the DSPN decoder: the inner objective gets its own set encoder (width --objective_dim, "
    "latent --latent) instead of sharing the input encoder (the DSPN paper shares it; iDSPN's random sets do not).",
)
flags.DEFINE_integer(
    "objective_dim",
    None,
    "Hidden width of the separate objective encoder (default: --dim; needs --separate_objective_encoder).",
)
flags.DEFINE_float(
    "learned_start_stddev",
    None,
    "Initialise the learned starting set N(0, s^2) with this s (iDSPN's random sets: 0.1) instead of U[0, 1) "
    "(the DSPN paper); needs --starting_set=learned.",
)
flags.DEFINE_bool(
    "normalize_sets",
    False,
    "Standardise each target-set feature by its mean and std over the valid elements of the first 4,096 training "
    "examples (learned at the start of a fresh run, kept in checkpoints, .keras files and exports): the model "
    "trains in these units and returns sets in the data's. Off (the papers' setting), a run warns when a "
    "feature's std is outside [0.05, 2] (train/set_scaling.py).",
)
flags.DEFINE_integer("iters", 10, "DSPN inner steps in training.")
# --inner_lr=AUTO asks train.train for dspn_tf.suggest_inner_lr's step (train/config.py, resolve_inner_lr).
AUTO = "auto"


class _StepSizeParser(flags.FloatParser):
    """A float flag that also takes the word "auto"."""

    def parse(self, argument):
        if isinstance(argument, str) and argument.strip() == AUTO:
            return AUTO
        return super().parse(argument)

    def flag_type(self):
        return "float or 'auto'"


flags.DEFINE(
    _StepSizeParser(),
    "inner_lr",
    25.0,
    "DSPN per-sample inner step size (reference: 800 at batch 32 = 25), or 'auto': the step "
    "dspn_tf.suggest_inner_lr picks for the initial model and the first evaluation batch, chosen and "
    "printed when train.train starts the run and kept in <model_dir>/inner_lr.json.",
    serializer=flags.ArgumentSerializer(),
)
flags.DEFINE_integer("n_pieces", 20, "FSPool pieces.")
# DSPN inner-loop options (the defaults are the DSPN paper's; iDSPN: implicit, lr 1, momentum 0.9, clip 10, mse, random).
flags.DEFINE_enum(
    "inner_gradient",
    "unrolled",
    ["unrolled", "implicit"],
    "How training differentiates the inner loop: through every step (second order, the paper) or iDSPN's "
    "approximate implicit differentiation (the last step from the detached previous set; cost independent of "
    "--iters).",
)
flags.DEFINE_float("inner_momentum", 0.0, "Momentum of the inner steps, in [0, 1) (iDSPN: 0.9).")
flags.DEFINE_bool("inner_nesterov", True, "With --inner_momentum > 0: Nesterov (iDSPN) rather than heavy-ball steps.")
flags.DEFINE_float("inner_clip", None, "Clip each sample's inner gradient (set and mask) to this L2 norm (iDSPN: 10).")
flags.DEFINE_enum(
    "inner_loss",
    "huber",
    ["huber", "mse"],
    "Inner objective: latent-mean Huber (the paper) or 0.5 * latent-mean squared error (iDSPN).",
)
flags.DEFINE_enum(
    "starting_set",
    "learned",
    ["learned", "random", "mlp"],
    "Starting set: learned and shared (the paper), per-sample N(0, 0.1^2) noise seeded by --seed (iDSPN), or "
    "predicted from z by an MLP head of width --decoder_dim (default --dim) that the inner loop refines.",
)
flags.DEFINE_float(
    "start_regularizer", 0.0, "Weight of 0.5 * ||[set, mask] - start||^2 in the inner objective (0: off)."
)
flags.DEFINE_float(
    "inner_tolerance", None, "Per-sample early stopping: a sample whose inner objective is below this stops moving."
)
flags.DEFINE_list(
    "iters_schedule",
    [],
    "Inner steps by training step, as STEP:ITERS pairs; STEP is a step number or a percentage of the run, e.g. "
    "0:20,50%:40 (iDSPN on CLEVR). Steps before the first pair use --iters; --iters stays the model's (and the "
    "export's) default.",
)

# Loss and optimisation.
flags.DEFINE_enum(
    "loss",
    None,
    ["chamfer", "hungarian", "numbering"],
    "Set loss (default: chamfer for set-MNIST, numbering for --dataset=numbering, else hungarian).",
)
flags.DEFINE_bool(
    "loss_all_steps",
    None,
    "Average the set loss over all decoder steps (default: true for Chamfer, as the reference; false for "
    "Hungarian, as the reference, whereas the paper's text says average; false with --inner_gradient=implicit, "
    "which refuses true).",
)
flags.DEFINE_float("repr_lambda", None, "Weight of the representation loss (default 0.1 for DSPN on CLEVR, else 0).")
flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate.")
flags.DEFINE_enum(
    "optimizer",
    "adam",
    ["adam", "keras_adam"],
    "adam: Adam with epsilon 1e-8 added to sqrt(v_hat), as PyTorch and the paper's code "
    "(dspn_tf.optimizers.Adam); keras_adam: keras.optimizers.Adam, whose epsilon (also 1e-8) is added to "
    "sqrt(v) before bias correction and so damps the first updates of small gradients.",
)
flags.DEFINE_list(
    "learning_rate_drops",
    [],
    "Training steps (numbers or percentages of the run, e.g. 90%) at which the learning rate is "
    "multiplied by 0.1 (iDSPN on CLEVR: 90%).",
)
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("epochs", None, "Epochs to train (ignored if --train_steps is set).")
flags.DEFINE_integer("train_steps", None, "Training steps.")

# Run.
flags.DEFINE_string(
    "model_dir", "runs/default", "Run directory: checkpoints, TensorBoard logs (point TensorBoard here), results."
)
flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling).")
flags.DEFINE_bool("deterministic", False, "Deterministic TF ops (bit-exact resume; slower).")
flags.DEFINE_bool("run_eagerly", False, "Run the train step eagerly (debugging).")
flags.DEFINE_bool(
    "jit_compile",
    False,
    "XLA-compile the train step (Hungarian runs then use the in-graph assignment solver, dspn_tf.assignment).",
)
flags.DEFINE_enum(
    "mixed_precision",
    "float32",
    ["float32", "mixed_float16", "mixed_bfloat16", "float64"],
    "Keras dtype policy of the model (the DSPN inner loop stays float32 under the mixed ones, which are "
    "slower on CPUs without native bfloat16/float16 math; float64 runs everything, losses included, in "
    "float64, for checking float32 rounding; an export of it outputs float64).",
)
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"], "tf.distribute strategy.")
# Loop cadence (train.train).
flags.DEFINE_integer("checkpoint_every", 500, "Save a checkpoint every this many steps (and at the end).")
flags.DEFINE_integer("log_every", 20, "Write train scalars every this many steps.")
flags.DEFINE_integer("image_every", 500, "Write pictures every this many steps (0: only at the end).")
flags.DEFINE_integer("eval_every", 0, "Evaluate every this many steps (0: only at the end).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in --model_dir.")
flags.DEFINE_bool("progress", True, "Show a progress bar with ETA.")
flags.DEFINE_bool("evaluate_at_end", True, "Evaluate after training and write eval_results.json.")
flags.DEFINE_string(
    "checkpoint", None, "train.evaluate / train.export: a specific checkpoint prefix (default: the newest of the run)."
)
flags.DEFINE_list("eval_iters", ["10", "20", "30"], "Inner step counts to evaluate the DSPN at.")


# train.evaluate.
flags.DEFINE_string("output", None, "Results JSON (default: --model_dir/eval_results_<step>.json).")

# train.export.
flags.DEFINE_string("checkpoint_dir", None, "Checkpoints to export from (default: <model_dir>/checkpoints).")
flags.DEFINE_string("export_base", None, "TF Serving model base path (default: <model_dir>/export).")
flags.DEFINE_integer("keep_versions", 0, "Keep only the newest this many versions in --export_base (0: keep all).")
flags.DEFINE_bool("all_steps", False, "Also export serving_all_steps / decode_all_steps (every inner step).")
flags.DEFINE_bool("export_keras", True, "Also write <version>/assets.extra/model.keras.")
flags.DEFINE_integer("max_iters", 100, "Largest `iters` a request may ask for.")

# train.pictures.
flags.DEFINE_integer("picture_examples", 3, "train.pictures: held-out examples drawn, one row each.")
flags.DEFINE_string(
    "baseline_model_dir",
    None,
    "train.pictures: also draw the final prediction of the run in this folder (its flags.txt and newest "
    "checkpoint; e.g. the MLP baseline's) after the inner steps and before the truth, as in the paper's Figure 1.",
)


# Bounds, checked when the flags are parsed: absl's IllegalFlagValueError names the flag and its value
# (`flag --batch_size=0: must be an integer >= 1`), before any data is built or a step is taken.
def _integer_at_least(low):
    return lambda value: value is None or value >= low


def _finite(low=None, high=None, *, low_open=False, optional=False):
    def check(value):
        if value is None:
            return optional
        if not math.isfinite(value):
            return False
        return (low is None or (value > low if low_open else value >= low)) and (high is None or value < high)

    return check


_AT_LEAST = {
    "generated_train": 1,
    "generated_val": 1,
    "image_size": 1,
    "max_train_examples": 0,  # 0: unset, overriding a flagfile's value.
    "max_eval_examples": 0,  # 0: unset, overriding a flagfile's value.
    "shuffle_buffer": 1,
    "dim": 1,
    "latent": 1,
    "decoder_dim": 1,
    "n_pieces": 1,
    "batch_size": 1,
    "epochs": 0,  # 0: unset, overriding a flagfile's value.
    "train_steps": 0,  # 0: unset, overriding a flagfile's value.
    "seed": 0,
    "checkpoint_every": 1,
    "log_every": 1,
    "image_every": 0,
    "eval_every": 0,
    "keep_checkpoints": 1,
    "keep_versions": 0,
    "max_iters": 0,
    "picture_examples": 1,
}
for _name, _low in _AT_LEAST.items():
    flags.register_validator(_name, _integer_at_least(_low), message=f"must be an integer >= {_low}")
for _name, _check, _text in (
    ("learning_rate", _finite(0.0, low_open=True), "a finite number > 0"),
    ("repr_lambda", _finite(0.0, optional=True), "a finite number >= 0 (or unset)"),
    ("baseline_mask_offset", _finite(), "a finite number"),
):
    flags.register_validator(_name, _check, message=f"must be {_text}")

# The inner-loop flags and the `InnerLoopConfig` field each sets. Their bounds are
# InnerLoopConfig's own (what DSPN refuses, the flags refuse; --iters=0 trains the
# starting set alone); `_AT_LEAST` adds only that --seed is not negative.
INNER_LOOP_FLAGS = {
    "iters": "iters",
    "inner_lr": "lr",
    "inner_gradient": "gradient",
    "inner_momentum": "momentum",
    "inner_nesterov": "nesterov",
    "inner_clip": "clip",
    "inner_loss": "inner_loss",
    "starting_set": "starting_set",
    "start_regularizer": "start_regularizer",
    "inner_tolerance": "tolerance",
    "seed": "seed",
}


def _inner_loop_check(field):
    """An absl validator of one `InnerLoopConfig` field (its ValueError becomes absl's ValidationError)."""

    def check(value):
        if field == "lr" and value == AUTO:
            return True
        try:
            InnerLoopConfig.check(field, value, owner="DSPN")
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
        return True

    return check


for _name, _field in INNER_LOOP_FLAGS.items():
    flags.register_validator(_name, _inner_loop_check(_field))
flags.register_validator(
    "eval_iters",
    lambda values: bool(values) and all(re.fullmatch(r"[0-9]+", v.strip()) and int(v) >= 1 for v in values),
    message="must be a comma-separated list of integers >= 1, e.g. 10,20,30",
)


# The random-set flags: bounds, and the combinations they need.
flags.register_validator("objective_dim", lambda v: v is None or v >= 1, message="must be an integer >= 1")
flags.register_validator(
    "learned_start_stddev",
    lambda v: v is None or (math.isfinite(v) and v > 0),
    message="must be a finite number > 0 (or unset)",
)


@flags.multi_flags_validator(
    ["separate_objective_encoder", "objective_dim", "decoder", "dataset"],
    message="--separate_objective_encoder (and --objective_dim) need an auto-encoder task and --decoder=dspn",
)
def _check_objective_encoder(values):
    if not values["separate_objective_encoder"]:
        return values["objective_dim"] is None
    return values["decoder"] == "dspn" and tasks.get(values["dataset"]).kind == "autoencoder"


@flags.multi_flags_validator(
    ["learned_start_stddev", "starting_set"], message="--learned_start_stddev needs --starting_set=learned"
)
def _check_start_stddev(values):
    return values["learned_start_stddev"] is None or values["starting_set"] == "learned"


# Class-specific numbering (--dataset=numbering; iDSPN: 64 positions, 4 classes, 4 per set, 640 training sets).
flags.DEFINE_integer(
    "numbering_positions", 64, "--dataset=numbering: elements per set (and numbers per class at most)."
)
flags.DEFINE_integer("numbering_classes", 4, "--dataset=numbering: number of classes (the input one-hot size).")
flags.DEFINE_integer(
    "numbering_classes_per_set", 4, "--dataset=numbering: distinct classes drawn per set (at most --numbering_classes)."
)
flags.DEFINE_integer("numbering_train_sets", 640, "--dataset=numbering: training sets, drawn once from --seed.")
flags.DEFINE_integer("numbering_eval_sets", 6400, "--dataset=numbering: held-out sets, drawn from another stream.")
for _name in (
    "numbering_positions",
    "numbering_classes",
    "numbering_classes_per_set",
    "numbering_train_sets",
    "numbering_eval_sets",
):
    flags.register_validator(_name, _integer_at_least(1), message="must be an integer >= 1")
flags.register_multi_flags_validator(
    ["numbering_classes", "numbering_classes_per_set"],
    lambda values: values["numbering_classes_per_set"] <= values["numbering_classes"],
    message="--numbering_classes_per_set must be at most --numbering_classes (the classes of a set are distinct)",
)
