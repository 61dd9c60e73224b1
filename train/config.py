"""A run's settings: the flags read once into a frozen `RunConfig`, and what is built from it.

`from_flags()` is the only place in `train/` that reads `FLAGS`. A `RunConfig`
holds one frozen section per component (`data`, `model` with its inner loop
`model.inner`, `optimization`, `evaluation`, `pictures`, `export`, `run`);
`as_flags()` gives the flat view by flag name. Everything else takes the
`RunConfig`, or the sections it needs, and calls the library's plain-argument
factories: the datasets (through the task, `train/tasks.py`), the model
(`dspn_tf.models.build_model`), the strategy, the loss settings, the
inner-step schedule and the learning rate.
"""

import copy
import dataclasses
import json
import os
import sys

import keras
import tensorflow as tf
from absl import flags

from dspn_tf import optimizers
from dspn_tf.data import batches
from dspn_tf.inner.config import InnerLoopConfig
from dspn_tf.models import build_model as build_model_from_args
from dspn_tf.step_size import suggest_inner_lr
from dspn_tf.training import LossSettings
from train import decoders, tasks
from train import flags as train_flags

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What a run reads (`train.tasks` builds it): one field per flag of that name."""

    dataset: str
    data_source: str
    tfds_data_dir: str | None
    cache_dir: str | None
    generated_train: int
    generated_val: int
    image_size: int
    max_train_examples: int | None
    max_eval_examples: int | None
    shuffle_buffer: int
    numbering_positions: int = 64
    numbering_classes: int = 4
    numbering_classes_per_set: int = 4
    numbering_train_sets: int = 640
    numbering_eval_sets: int = 6400


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model: its decoder, encoders, widths and dtype policy (flags of these names), and its inner loop.

    `inner` is the `dspn_tf.inner.InnerLoopConfig` of --iters, --inner_lr, the other
    --inner_* flags, --starting_set, --start_regularizer and --seed
    (`train.flags.INNER_LOOP_FLAGS`); a baseline decoder ignores it. With
    --inner_lr=auto, `inner_lr_auto` is True and `inner.lr` holds the default
    until `resolve_inner_lr` puts the chosen step there.
    """

    decoder: str
    set_encoder: str | None
    image_encoder: str
    dim: int
    latent: int
    decoder_dim: int | None
    n_pieces: int
    baseline_mask_offset: float
    mixed_precision: str
    separate_objective_encoder: bool
    objective_dim: int | None
    learned_start_stddev: float | None
    normalize_sets: bool
    inner: InnerLoopConfig
    inner_lr_auto: bool = False

    @property
    def iterative(self):
        """Whether the decoder runs DSPN's inner loop (a built model's `iterative`)."""
        return decoders.has_inner_loop(self.decoder)


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    """The outer optimisation: losses, optimizer, schedules and budget (flags of these names)."""

    loss: str | None
    loss_all_steps: bool | None
    repr_lambda: float | None
    learning_rate: float
    optimizer: str
    learning_rate_drops: tuple
    batch_size: int
    epochs: int | None
    train_steps: int | None
    iters_schedule: tuple


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What train.evaluate and train.pictures read (--checkpoint also train.export's) and what they write."""

    eval_iters: tuple
    checkpoint: str | None
    output: str | None


@dataclasses.dataclass(frozen=True)
class PicturesConfig:
    """train.pictures' drawing."""

    picture_examples: int
    baseline_model_dir: str | None


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """train.export's options."""

    checkpoint_dir: str | None
    export_base: str | None
    keep_versions: int
    all_steps: bool
    export_keras: bool
    max_iters: int


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How train.train runs: its directory, seed, execution, distribution and cadences."""

    model_dir: str
    seed: int
    deterministic: bool
    run_eagerly: bool
    jit_compile: bool
    strategy: str
    checkpoint_every: int
    log_every: int
    image_every: int
    eval_every: int
    keep_checkpoints: int
    progress: bool
    evaluate_at_end: bool


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, by component (`train/flags.py` documents each flag).

    Attributes:
        data: `DataConfig`.
        model: `ModelConfig` (with `model.inner`, the `InnerLoopConfig`).
        optimization: `OptimizationConfig`.
        evaluation: `EvaluationConfig`.
        pictures: `PicturesConfig`.
        export: `ExportConfig`.
        run: `RunSettings`.
        flagfile: The last --flagfile of the command line (absl consumes it while parsing).
        overrides: The flags given after it (for the commands printed at the end of a run).
        flags_text: Every flag's value as text, for `flags.txt`.
    """

    data: DataConfig
    model: ModelConfig
    optimization: OptimizationConfig
    evaluation: EvaluationConfig
    pictures: PicturesConfig
    export: ExportConfig
    run: RunSettings
    flagfile: str | None = None
    overrides: tuple = ()
    flags_text: str = ""

    def as_flags(self):
        """Every flag's value by flag name (lists as tuples): the flat view of the sections."""
        values = {}
        for flag, path in FLAG_FIELDS.items():
            value = self
            for name in path:
                value = getattr(value, name)
            values[flag] = value
        if self.model.inner_lr_auto:
            values["inner_lr"] = train_flags.AUTO
        return values


# The sections whose fields are named after their flags.
_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optimization": OptimizationConfig,
    "evaluation": EvaluationConfig,
    "pictures": PicturesConfig,
    "export": ExportConfig,
    "run": RunSettings,
}


def _flag_fields():
    """Flag name -> where its value lives in a `RunConfig`, as a path of attribute names."""
    fields = {}
    for section, cls in _SECTIONS.items():
        for field in dataclasses.fields(cls):
            if field.name not in ("inner", "inner_lr_auto"):
                fields[field.name] = (section, field.name)
    for flag, field in train_flags.INNER_LOOP_FLAGS.items():
        fields.setdefault(flag, ("model", "inner", field))  # --seed is run.seed (and model.inner.seed).
    return fields


# Flag name -> its path in a `RunConfig`, e.g. "inner_lr" -> ("model", "inner", "lr").
FLAG_FIELDS = _flag_fields()


def from_flags(flag_values=None, argv=None):
    """The `RunConfig` of parsed flags (default: absl's `FLAGS` and `sys.argv`)."""
    flag_values = flag_values or FLAGS

    def value(flag):
        found = getattr(flag_values, flag)
        return tuple(found) if isinstance(found, list) else found

    def section(cls, **given):
        return cls(**{f.name: value(f.name) for f in dataclasses.fields(cls) if f.name not in given}, **given)

    inner = {field: value(flag) for flag, field in train_flags.INNER_LOOP_FLAGS.items()}
    inner_lr_auto = inner["lr"] == train_flags.AUTO
    if inner_lr_auto:
        inner["lr"] = InnerLoopConfig.lr  # Until resolve_inner_lr chooses the step.
    inner = InnerLoopConfig(**inner)
    args = list(sys.argv if argv is None else argv)[1:]
    last = max((i for i, a in enumerate(args) if a.startswith("--flagfile=")), default=None)
    return RunConfig(
        data=section(DataConfig),
        model=section(ModelConfig, inner=inner, inner_lr_auto=inner_lr_auto),
        optimization=section(OptimizationConfig),
        evaluation=section(EvaluationConfig),
        pictures=section(PicturesConfig),
        export=section(ExportConfig),
        run=section(RunSettings),
        flagfile=None if last is None else args[last].split("=", 1)[1],
        overrides=() if last is None else tuple(args[last + 1 :]),
        flags_text=flag_values.flags_into_string(),
    )


def load(flagfile, *overrides):
    """The `RunConfig` of a flagfile (e.g. "configs/set_mnist_dspn.cfg") and `--flag=value` overrides.

    Parses into a copy of the flags, so the process's own flags are untouched
    (for benchmarks and notebooks, which have no absl `main`).
    """
    if not os.path.isfile(flagfile):
        raise FileNotFoundError(f"load: the flagfile {flagfile!r} does not exist.")
    flag_values = copy.deepcopy(FLAGS)
    flag_values.unparse_flags()
    argv = ["config", f"--flagfile={flagfile}", *overrides]
    flag_values(argv)
    return from_flags(flag_values, argv=argv)


def task(config):
    """The `train.tasks.Task` of the run's --dataset, with the sizes of its data settings (`Task.for_data`)."""
    return tasks.get(config.data.dataset).for_data(config.data)


def cache_dir(config):
    """--cache_dir, else $DSPN_TF_CACHE, else ~/.cache/dspn_tf (the data builders' root too)."""
    return tasks.cache_root(config.data)


def build_split(config, split):
    """Unbatched dataset of the split ("train" or "eval"), built by the run's task.

    Raises:
        ValueError: naming --data_source if the dataset cannot come from it.
    """
    return task(config).build_split(config.data, split, config.run.seed)


def set_seeds(config):
    """Seeds Python, NumPy and TensorFlow from --seed (and turns on --deterministic), as `train.train` does first.

    Both the initial weights and the order of `train_batches` depend on it:
    tf.data's shuffle combines its own seed (--seed) with TensorFlow's global
    seed, so a process that reads `train_batches` without this call (a
    benchmark, a notebook) gets other batches than the run with the same --seed.
    """
    if config.run.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.run.seed)


def train_batches(config, strategy):
    """The global batches of the training split (every worker reads them all), and the split's size.

    The order is that of `train.train`'s run with the same --seed after `set_seeds(config)`.

    Raises:
        ValueError: naming --batch_size if it does not split over the replicas or exceeds the split.
    """
    data, batch_size = config.data, config.optimization.batch_size
    ds = build_split(config, "train")
    if data.max_train_examples:
        ds = ds.take(data.max_train_examples)
    size = int(ds.cardinality())
    if size < 0:
        size = int(ds.reduce(0, lambda n, _: n + 1))
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"--batch_size={batch_size} must be divisible by the {replicas} replicas.")
    if size < batch_size:
        raise ValueError(f"The training split has {size} examples, fewer than --batch_size={batch_size}.")
    # The global batches, on every worker: the loop hands each worker its rows, so the global batch
    # is the one a single process trains on and every worker's input position is the chief's (which
    # its checkpoint holds; a per-worker shard would start afresh after a restart).
    return batches(ds, batch_size, shuffle_buffer=data.shuffle_buffer, seed=config.run.seed), size


def target_set_batches(config, examples):
    """The target sets and masks of the first `examples` training examples, in the split's order.

    Batch dicts `{set_key: ..., "mask": ...}`, not shuffled: what --normalize_sets
    adapts on and the spread check reads (`train.set_scaling`); the training
    batches are read separately and stay as they are.
    """
    ds = build_split(config, "train")
    if config.data.max_train_examples:
        ds = ds.take(config.data.max_train_examples)
    key = task(config).set_key
    return ds.take(examples).map(lambda example: {key: example[key], "mask": example["mask"]}).batch(256)


def eval_batches(config):
    """Batches of the evaluation split (at most --max_eval_examples), in order."""
    ds = build_split(config, "eval")
    if config.data.max_eval_examples:
        ds = ds.take(config.data.max_eval_examples)
    return batches(ds, config.optimization.batch_size)


def total_steps(config, train_size):
    """--train_steps, else --epochs passes over `train_size` examples."""
    optimization = config.optimization
    if optimization.train_steps:
        return optimization.train_steps
    if optimization.epochs:
        return optimization.epochs * (train_size // optimization.batch_size)
    raise ValueError("Set --train_steps or --epochs.")


def loss_settings(config):
    """The `LossSettings` of the run; the defaults follow the reference code and the task."""
    run_task, model, optimization = task(config), config.model, config.optimization
    loss = optimization.loss or run_task.default_loss
    # Implicit gradients train the final step only, so by default they score only it.
    default_all_steps = loss == "chamfer" and not (model.iterative and model.inner.gradient == "implicit")
    all_steps = optimization.loss_all_steps if optimization.loss_all_steps is not None else default_all_steps
    repr_lambda = optimization.repr_lambda
    if repr_lambda is None:
        # The paper's representation loss pulls an image embedding towards g(target); an auto-encoder's
        # embedding is g(target) already.
        repr_lambda = 0.1 if (model.iterative and run_task.kind == "image") else 0.0
    return LossSettings(
        set_key=run_task.set_key,
        loss=loss,
        all_steps=all_steps,
        repr_lambda=repr_lambda,
        score_mask=not run_task.full_sets,
    )


INNER_LR_FILE = "inner_lr.json"


def inner_lr_path(config):
    """Where a run with --inner_lr=auto keeps the step it chose: `<model_dir>/inner_lr.json`."""
    return os.path.join(config.run.model_dir, INNER_LR_FILE)


def with_inner_lr(config, lr):
    """`config` with the inner step `lr` in place of --inner_lr=auto."""
    inner = dataclasses.replace(config.model.inner, lr=float(lr))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, inner=inner, inner_lr_auto=False))


def saved_inner_lr(config):
    """`config` with the step its run chose for --inner_lr=auto, read from `inner_lr_path`.

    Returns `config` unchanged if it has a numeric --inner_lr or a baseline
    decoder, and None if the run directory has no chosen step yet.

    Raises:
        ValueError: naming the file if it exists but holds no positive step.
    """
    if not (config.model.inner_lr_auto and config.model.iterative):
        return config
    path = inner_lr_path(config)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            lr = json.load(f)["inner_lr"]
        InnerLoopConfig.check("lr", lr, owner=path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--inner_lr=auto: {path} does not hold the run's inner step ({e}).") from None
    return with_inner_lr(config, lr)


def resolved_inner_lr(config):
    """`saved_inner_lr(config)`, for the entry points that load a trained run (evaluate, export, pictures).

    Raises:
        ValueError: if --inner_lr=auto and the run directory has no chosen step.
    """
    resolved = saved_inner_lr(config)
    if resolved is None:
        raise ValueError(
            f"--inner_lr=auto: {inner_lr_path(config)} does not exist. train.train chooses the step when it "
            "starts a run in --model_dir; point --model_dir at that run, or pass --inner_lr=<number>."
        )
    return resolved


def suggested_inner_lr(config, model, batch):
    """The step `dspn_tf.suggest_inner_lr` picks for `model` as built and `batch` (the task's set key)."""
    return suggest_inner_lr(model, batch, set_key=task(config).set_key)


def build_model(config):
    """The model of the run, built (variables exist) and ready to restore.

    Built under the run's --mixed_precision dtype policy whatever the global
    one is, so that train.evaluate / export / pictures restore a float64
    run's checkpoint into float64 variables.
    """
    run_task, model = task(config), config.model
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(model.mixed_precision)
    try:
        return build_model_from_args(
            run_task.kind,
            decoder=model.decoder,
            set_size=run_task.set_size,
            set_channels=run_task.set_channels,
            dim=model.dim,
            latent=model.latent,
            decoder_dim=model.decoder_dim,
            set_encoder=model.set_encoder,
            image_encoder=model.image_encoder,
            n_pieces=model.n_pieces,
            mask_offset=model.baseline_mask_offset,
            input_shape=run_task.input_shape(config.data.image_size),
            inner=model.inner,
            separate_objective_encoder=model.separate_objective_encoder,
            objective_dim=model.objective_dim,
            projection=run_task.projection,
            start_stddev=model.learned_start_stddev,
            normalize_sets=model.normalize_sets,
            input_key=run_task.input_key or "inputs",
        )
    finally:
        keras.config.set_dtype_policy(previous)


def build_optimizer(config, model, total):
    """Adam (--optimizer) at `learning_rate(config, total)`, built for the model's variables.

    Call under the strategy's scope.
    """
    adam = optimizers.Adam if config.optimization.optimizer == "adam" else keras.optimizers.Adam
    optimizer = adam(learning_rate(config, total), epsilon=1e-8)
    if config.model.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # The Trainer scales the loss.
    optimizer.build(model.trainable_variables)
    return optimizer


def parse_iters_schedule(entries, total, default_iters):
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
            step = _step_of(step_text, total)
            if iters < 0:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"--iters_schedule: {entry!r} is not STEP:ITERS with STEP a step >= 0 or a percentage in [0, 100]% "
                "and ITERS an integer >= 0 (e.g. 0:20,50%:40)."
            ) from None
        schedule[step] = iters
    return sorted(schedule.items())


def iters_schedule(config, total):
    """The run's `parse_iters_schedule` schedule, or None for a one-shot decoder (no inner steps)."""
    schedule = parse_iters_schedule(config.optimization.iters_schedule, total, config.model.inner.iters)
    return schedule if config.model.iterative else None


def iters_at(schedule, step):
    """The inner steps a training step uses under a `parse_iters_schedule` schedule (None: no schedule)."""
    if schedule is None:
        return None
    return [iters for first, iters in schedule if first <= step][-1]


def _step_of(text, total):
    """A training step written as a number or as a percentage of `total`; ValueError if neither."""
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 <= percent <= 100:
            raise ValueError(text)
        return int(round(total * percent / 100))
    step = int(text)
    if step < 0:
        raise ValueError(text)
    return step


def learning_rate(config, total):
    """--learning_rate, as a schedule if --learning_rate_drops is set."""
    optimization = config.optimization
    try:
        drops = sorted({_step_of(text, total) for text in optimization.learning_rate_drops})
    except ValueError:
        raise ValueError(
            f"--learning_rate_drops={','.join(optimization.learning_rate_drops)}: every entry must be a step "
            ">= 0 or a percentage in [0, 100]% (e.g. 90%)."
        ) from None
    if not drops:
        return optimization.learning_rate
    values = [optimization.learning_rate * 0.1**i for i in range(len(drops) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(drops, values)


def make_strategy(config):
    """The `tf.distribute` strategy of --strategy."""
    if config.run.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.run.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def eval_iters(config, iterative=None):
    """The sorted inner step counts to evaluate at (the first only for a model without an inner loop).

    Args:
        config: The run's `RunConfig`.
        iterative: Whether the model runs an inner loop (a built model's
            `iterative`); default: whether --decoder's does.
    """
    values = sorted({int(v) for v in config.evaluation.eval_iters})
    if iterative is None:
        iterative = config.model.iterative
    return values if iterative else values[:1]
