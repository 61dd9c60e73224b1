"""Flags shared by the entry points, and the functions that read them.

Only `train/` reads flags: everything here turns FLAGS into plain arguments
for the library (`dspn_tf.models.build_model`, the data builders).
"""

import os

from absl import flags
import keras
import tensorflow as tf

from dspn_tf.data import clevr, clevr_mini, clevr_states, set_mnist
from dspn_tf.models import build_model as build_model_from_args
from dspn_tf.training import LossSettings

FLAGS = flags.FLAGS

# Data.
flags.DEFINE_enum(
    "dataset", "clevr_state", ["set_mnist", "clevr_state", "clevr_boxes", "clevr_state_autoencoder"],
    "Task and dataset: set-MNIST auto-encoding, CLEVR image -> object states / boxes, or CLEVR object states "
    "auto-encoded (state set -> z -> state set; no images).")
flags.DEFINE_string(
    "data_source", "generated",
    "Where the data comes from: 'generated' (CLEVR-format scenes rendered offline on first use and cached; "
    "CLEVR tasks only; the state auto-encoder needs only the scenes, not their images), 'tfds', or a folder "
    "(MNIST IDX files, or a CLEVR_v1.0 folder).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (for --data_source=tfds).")
flags.DEFINE_string(
    "cache_dir", None, "Cache for generated scenes and decoded images (default $DSPN_TF_CACHE or ~/.cache/dspn_tf).")
flags.DEFINE_integer("generated_train", 3000, "Scenes generated for training (--data_source=generated).")
flags.DEFINE_integer("generated_val", 500, "Scenes generated for evaluation (--data_source=generated).")
flags.DEFINE_integer("image_size", 128, "Side of the square CLEVR input images.")
flags.DEFINE_integer("max_train_examples", None, "Use only this many training examples (quick runs).")
flags.DEFINE_integer("max_eval_examples", None, "Evaluate on at most this many examples.")
flags.DEFINE_integer("shuffle_buffer", 1024, "Example shuffle buffer (kept in checkpoints).")

# Model.
flags.DEFINE_enum("decoder", "dspn", ["dspn", "mlp", "lstm"], "Set decoder.")
flags.DEFINE_enum("set_encoder", None, ["fs", "rnfs"], "Set encoder (default: fs for set-MNIST, rnfs for CLEVR).")
flags.DEFINE_enum("image_encoder", "conv", ["conv", "resnet18", "resnet34"],
                  "Image encoder for CLEVR tasks: a small CNN, iDSPN's ResNet18 or the DSPN paper's ResNet34.")
flags.DEFINE_integer("dim", 256, "Hidden width of the set encoder.")
flags.DEFINE_integer("latent", 64, "Embedding size.")
flags.DEFINE_integer("decoder_dim", None, "Hidden width of the MLP / LSTM baselines (default: --dim).")
flags.DEFINE_integer("iters", 10, "DSPN inner steps in training.")
flags.DEFINE_float("inner_lr", 25.0, "DSPN per-sample inner step size (reference: 800 at batch 32 = 25).")
flags.DEFINE_integer("n_pieces", 20, "FSPool pieces.")
# DSPN inner-loop options (the defaults are the DSPN paper's; iDSPN: implicit, lr 1, momentum 0.9, clip 10, mse, random).
flags.DEFINE_enum(
    "inner_gradient", "unrolled", ["unrolled", "implicit"],
    "How training differentiates the inner loop: through every step (second order, the paper) or iDSPN's "
    "approximate implicit differentiation (the last step from the detached previous set; cost independent of "
    "--iters).")
flags.DEFINE_float("inner_momentum", 0.0, "Momentum of the inner steps, in [0, 1) (iDSPN: 0.9).")
flags.DEFINE_bool("inner_nesterov", True, "With --inner_momentum > 0: Nesterov (iDSPN) rather than heavy-ball steps.")
flags.DEFINE_float("inner_clip", None, "Clip each sample's inner gradient (set and mask) to this L2 norm (iDSPN: 10).")
flags.DEFINE_enum("inner_loss", "huber", ["huber", "mse"],
                  "Inner objective: latent-mean Huber (the paper) or 0.5 * latent-mean squared error (iDSPN).")
flags.DEFINE_enum("starting_set", "learned", ["learned", "random"],
                  "Starting set: learned and shared (the paper) or per-sample N(0, 0.1^2) noise seeded by --seed "
                  "(iDSPN).")
flags.DEFINE_float("start_regularizer", 0.0,
                   "Weight of 0.5 * ||[set, mask] - start||^2 in the inner objective (0: off).")
flags.DEFINE_float("inner_tolerance", None,
                   "Per-sample early stopping: a sample whose inner objective is below this stops moving.")
flags.DEFINE_list(
    "iters_schedule", [],
    "Inner steps by training step, as STEP:ITERS pairs; STEP is a step number or a percentage of the run, e.g. "
    "0:20,50%:40 (iDSPN on CLEVR). Steps before the first pair use --iters; --iters stays the model's (and the "
    "export's) default.")

# Loss and optimisation.
flags.DEFINE_enum("loss", None, ["chamfer", "hungarian"], "Set loss (default: chamfer for set-MNIST, else hungarian).")
flags.DEFINE_bool(
    "loss_all_steps", None,
    "Average the set loss over all decoder steps (default: true for Chamfer, as the reference; false for "
    "Hungarian, as the reference, whereas the paper's text says average; false with --inner_gradient=implicit, "
    "which refuses true).")
flags.DEFINE_float("repr_lambda", None, "Weight of the representation loss (default 0.1 for DSPN on CLEVR, else 0).")
flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate.")
flags.DEFINE_list("learning_rate_drops", [],
                  "Training steps (numbers or percentages of the run, e.g. 90%) at which the learning rate is "
                  "multiplied by 0.1 (iDSPN on CLEVR: 90%).")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("epochs", None, "Epochs to train (ignored if --train_steps is set).")
flags.DEFINE_integer("train_steps", None, "Training steps.")

# Run.
flags.DEFINE_string("model_dir", "runs/default", "Run directory: checkpoints, TensorBoard logs (point TensorBoard here), results.")
flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling).")
flags.DEFINE_bool("deterministic", False, "Deterministic TF ops (bit-exact resume; slower).")
flags.DEFINE_bool("run_eagerly", False, "Run the train step eagerly (debugging).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step (Chamfer runs only).")
flags.DEFINE_enum("mixed_precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Keras dtype policy of the training step (the DSPN inner loop stays float32; slower on CPUs "
                  "without native bfloat16/float16 math).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"], "tf.distribute strategy.")
# Loop cadence (read by train.train; defined here so one flagfile serves every entry point).
flags.DEFINE_integer("checkpoint_every", 500, "Save a checkpoint every this many steps (and at the end).")
flags.DEFINE_integer("log_every", 20, "Write train scalars every this many steps.")
flags.DEFINE_integer("image_every", 500, "Write pictures every this many steps (0: only at the end).")
flags.DEFINE_integer("eval_every", 0, "Evaluate every this many steps (0: only at the end).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in --model_dir.")
flags.DEFINE_bool("progress", True, "Show a progress bar with ETA.")
flags.DEFINE_bool("evaluate_at_end", True, "Evaluate after training and write eval_results.json.")
flags.DEFINE_integer("nan_at_step", None, "Testing aid: inject a NaN loss at this step to exercise the guard.")
flags.DEFINE_string(
    "checkpoint", None,
    "train.evaluate / train.export: a specific checkpoint prefix (default: the newest of the run).")
flags.DEFINE_list("eval_iters", ["10", "20", "30"], "Inner step counts to evaluate the DSPN at.")


def dataset_kind():
    """(task, set_key, set_size, set_channels) of --dataset."""
    if FLAGS.dataset == "set_mnist":
        return "autoencoder", "set", set_mnist.MAX_SET_SIZE, 2
    if FLAGS.dataset == "clevr_state_autoencoder":
        return "autoencoder", "state", clevr.MAX_OBJECTS, clevr.STATE_DIM
    if FLAGS.dataset == "clevr_state":
        return "image", "state", clevr.MAX_OBJECTS, clevr.STATE_DIM
    return "image", "boxes", clevr.MAX_OBJECTS, clevr.BOX_DIM


def cache_dir():
    """--cache_dir, else $DSPN_TF_CACHE, else ~/.cache/dspn_tf (the data builders' root too)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "dspn_tf")
    return FLAGS.cache_dir or os.environ.get("DSPN_TF_CACHE") or default


def generated_clevr_folder():
    """The generated CLEVR_v1.0 folder for the current flags, rendered on first use."""
    name = f"clevr_mini_seed{FLAGS.seed}_train{FLAGS.generated_train}_val{FLAGS.generated_val}"
    parent = os.path.join(cache_dir(), name)
    folder = os.path.join(parent, "CLEVR_v1.0")
    if not os.path.isdir(folder):
        print(f"Generating {FLAGS.generated_train} + {FLAGS.generated_val} CLEVR-format scenes in {parent} ...",
              flush=True)
        clevr_mini.generate(parent, num_train=FLAGS.generated_train, num_val=FLAGS.generated_val, seed=FLAGS.seed)
    return folder


def build_split(split):
    """Unbatched dataset of the split ("train" or "eval")."""
    if FLAGS.dataset == "set_mnist":
        if FLAGS.data_source == "generated":
            raise ValueError("--data_source=generated is for CLEVR tasks; set-MNIST needs an IDX folder or 'tfds'.")
        return set_mnist.build_dataset(
            FLAGS.data_source, "train" if split == "train" else "test",
            shuffle_elements=True, seed=FLAGS.seed, data_dir=FLAGS.tfds_data_dir)
    if FLAGS.dataset == "clevr_state_autoencoder":
        if FLAGS.data_source == "tfds":
            raise ValueError("--dataset=clevr_state_autoencoder reads 'generated' scenes or a CLEVR_v1.0 folder, "
                             "not 'tfds'.")
        generated = FLAGS.data_source == "generated"
        return clevr_states.build_dataset(
            FLAGS.data_source, "train" if split == "train" else "val",
            num_scenes=(FLAGS.generated_train if split == "train" else FLAGS.generated_val) if generated else None,
            seed=FLAGS.seed, cache_dir=os.path.join(cache_dir(), "clevr_states"))
    source = generated_clevr_folder() if FLAGS.data_source == "generated" else FLAGS.data_source
    return clevr.build_dataset(
        source, "train" if split == "train" else "val",
        image_size=FLAGS.image_size,
        cache_dir=os.path.join(cache_dir(), "clevr"),
        with_boxes=FLAGS.dataset == "clevr_boxes",
        data_dir=FLAGS.tfds_data_dir,
    )


def loss_settings():
    _, set_key, _, _ = dataset_kind()
    loss = FLAGS.loss or ("chamfer" if FLAGS.dataset == "set_mnist" else "hungarian")
    # Implicit gradients train the final step only, so by default they score only it.
    default_all_steps = loss == "chamfer" and not (FLAGS.decoder == "dspn" and FLAGS.inner_gradient == "implicit")
    all_steps = FLAGS.loss_all_steps if FLAGS.loss_all_steps is not None else default_all_steps
    repr_lambda = FLAGS.repr_lambda
    if repr_lambda is None:
        # The paper's representation loss pulls an image embedding towards g(target); an auto-encoder's
        # embedding is g(target) already.
        repr_lambda = 0.1 if (FLAGS.decoder == "dspn" and dataset_kind()[0] == "image") else 0.0
    return LossSettings(set_key=set_key, loss=loss, all_steps=all_steps, repr_lambda=repr_lambda)


def build_model(flags_values=None):
    """The model the flags describe, built (variables exist) and ready to restore."""
    f = flags_values or FLAGS
    task, _, set_size, set_channels = dataset_kind()
    model = build_model_from_args(
        task, decoder=f.decoder, set_size=set_size, set_channels=set_channels, dim=f.dim, latent=f.latent,
        decoder_dim=f.decoder_dim, set_encoder=f.set_encoder, image_encoder=f.image_encoder, iters=f.iters,
        inner_lr=f.inner_lr, n_pieces=f.n_pieces, dspn_options=dspn_options(f))
    # Build every variable now, so a checkpoint restores into them directly.
    if task == "autoencoder":
        model({"set": tf.zeros([1, set_size, set_channels]), "mask": tf.zeros([1, set_size])}, iters=0)
    else:
        model(tf.zeros([1, f.image_size, f.image_size, 3]), iters=0)
    return model


def dspn_options(f=None):
    """The DSPN inner-loop keyword arguments the flags describe."""
    f = f or FLAGS
    return {
        "gradient": f.inner_gradient, "momentum": f.inner_momentum, "nesterov": f.inner_nesterov,
        "clip": f.inner_clip, "inner_loss": f.inner_loss, "starting_set": f.starting_set,
        "start_regularizer": f.start_regularizer, "tolerance": f.inner_tolerance, "seed": f.seed,
    }


def parse_iters_schedule(entries, total_steps, default_iters):
    """`--iters_schedule` entries → sorted `[(first step, iters)]`, starting with `(0, default_iters)`.

    Raises:
        ValueError: naming the flag and the entry that is not `STEP:ITERS`.
    """
    schedule = {0: default_iters}
    for entry in entries:
        step_text, sep, iters_text = entry.partition(":")
        try:
            if not sep:
                raise ValueError
            iters = int(iters_text)
            step = _step_of(step_text, total_steps)
            if iters < 0:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"--iters_schedule: {entry!r} is not STEP:ITERS with STEP a step >= 0 or a percentage in [0, 100]% "
                "and ITERS an integer >= 0 (e.g. 0:20,50%:40).") from None
        schedule[step] = iters
    return sorted(schedule.items())


def _step_of(text, total_steps):
    """A training step written as a number or as a percentage of `total_steps`; ValueError if neither."""
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 <= percent <= 100:
            raise ValueError(text)
        return int(round(total_steps * percent / 100))
    step = int(text)
    if step < 0:
        raise ValueError(text)
    return step


def learning_rate(total_steps):
    """--learning_rate, as a schedule if --learning_rate_drops is set."""
    try:
        drops = sorted({_step_of(text, total_steps) for text in FLAGS.learning_rate_drops})
    except ValueError:
        raise ValueError(f"--learning_rate_drops={','.join(FLAGS.learning_rate_drops)}: every entry must be a step "
                         ">= 0 or a percentage in [0, 100]% (e.g. 90%).") from None
    if not drops:
        return FLAGS.learning_rate
    values = [FLAGS.learning_rate * 0.1 ** i for i in range(len(drops) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(drops, values)


def iters_at(schedule, step):
    """The inner steps a training step uses under a `parse_iters_schedule` schedule."""
    return [iters for first, iters in schedule if first <= step][-1]


def make_strategy():
    if FLAGS.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if FLAGS.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def eval_iters():
    values = sorted({int(v) for v in FLAGS.eval_iters})
    if FLAGS.decoder != "dspn":
        return values[:1]
    return values
