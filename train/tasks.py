"""The tasks of `--dataset`, one `Task` record each, registered by name.

A task says everything the entry points need to know about a dataset: the
model kind it trains, where the target set is in a batch and its shape, how
its splits are built, its default set loss, what its evaluation measures and
how its predictions are drawn. Everything else in `train/` asks the task
(`tasks.get(name)`), so adding a dataset is one `register(Task(...))` here:
`--dataset` offers every registered name.

The split builders take the run's data settings (`train.config.DataConfig`:
`data_source`, `tfds_data_dir`, `cache_dir`, `generated_train`,
`generated_val`, `image_size`, the `numbering_*` sizes), the split ("train"
or "eval") and the seed. A task whose shapes depend on those settings
(numbering) says how in `sized`; `Task.for_data` applies it.
"""

import dataclasses
import os
from collections.abc import Callable

from dspn_tf import visualize
from dspn_tf.data import clevr, clevr_states, image_cache, numbering, random_sets, render, set_mnist

SPLITS = ("train", "eval")
KINDS = ("autoencoder", "image", "set_to_set")
LOSSES = ("chamfer", "hungarian", "numbering")


@dataclasses.dataclass(frozen=True)
class Pictures:
    """How a task's predictions are drawn: TensorBoard's `progression/<tag>` and train.pictures' PNG.

    Attributes:
        tag: The picture's TensorBoard tag under `progression/`.
        row: `row(image, sets, masks, target, target_mask, baseline=None)` draws one
            example (its image, the input set of a "set_to_set" task, or None; its `[steps, N, C]`
            sets and `[steps, N]` masks; its target set and mask; optionally another
            model's final `(set, mask)` drawn before the truth) as a uint8 `[H, W, 3]` row.
        table: None, or `table(set, mask, target, target_mask)`: the final prediction as
            text, written as TensorBoard text under `progression/<table_tag>`.
        table_tag: The text's tag under `progression/`.
    """

    tag: str
    row: Callable
    table: Callable | None = None
    table_tag: str | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """What `--dataset=<name>` asks for.

    Attributes:
        name: The `--dataset` value.
        description: One line for `--dataset`'s help.
        kind: "autoencoder" (set -> z -> set), "image" (image -> z -> set) or
            "set_to_set" (an input set -> one output element per input element),
            the `task` of `dspn_tf.models.build_model`.
        set_key: Key of the target set in a batch: "set", "state", "boxes" or "numbers".
        set_size: Set slots N.
        set_channels: Features per element C.
        build_split: `build_split(data, split, seed)`: the unbatched `tf.data`
            dataset of a split ("train" or "eval"); raises ValueError naming
            `--data_source` if the data cannot come from it.
        default_loss: The set loss when `--loss` is unset: "chamfer", "hungarian" or "numbering".
        metric: What the evaluation measures, as printed ("Chamfer", "AP" or "accuracy").
        pictures: How predictions are drawn (`Pictures`).
        caches_folders: Whether data read from a folder is cached under
            `--cache_dir` too (the run's description names the cache then).
        full_sets: Whether every set has all N elements (no padding): the
            DSPN then holds its mask at 1 (`dspn_tf.inner.FullMask`) and the
            set losses compare the features only (`LossSettings.score_mask`).
        eval_metric: `dspn_tf.evaluation.evaluate`'s `metric`: None (the
            metric of `set_key`) or "hungarian" (features-only Hungarian loss).
        input_channels: For "set_to_set": features per input element.
        input_key: For "set_to_set": key of the input set in a batch.
        projection: The DSPN's projection after every inner step (None: the
            default, the mask clipped to [0, 1]; "simplex": every element onto
            the probability simplex).
        sized: None, or `sized(data)`: the fields that depend on the run's data
            settings, as a dict (e.g. `set_size`), which `for_data` replaces.
    """

    name: str
    description: str
    kind: str
    set_key: str
    set_size: int
    set_channels: int
    build_split: Callable
    default_loss: str
    metric: str
    pictures: Pictures
    caches_folders: bool = False
    full_sets: bool = False
    eval_metric: str | None = None
    input_channels: int | None = None
    input_key: str | None = None
    projection: str | None = None
    sized: Callable | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Task {self.name!r}: `kind` must be one of {KINDS}; received {self.kind!r}.")
        if self.default_loss not in LOSSES:
            raise ValueError(
                f"Task {self.name!r}: `default_loss` must be one of {LOSSES}; received {self.default_loss!r}."
            )

    def input_shape(self, image_size):
        """The per-example shape of the model's input: `(N, C)` of a set, or `(image_size, image_size, 3)`."""
        if self.kind == "autoencoder":
            return (self.set_size, self.set_channels)
        if self.kind == "set_to_set":
            return (self.set_size, self.input_channels)
        return (image_size, image_size, 3)

    def for_data(self, data):
        """This task with the fields `sized` derives from the run's data settings (itself without `sized`)."""
        return self if self.sized is None else dataclasses.replace(self, **self.sized(data))


_TASKS = {}


def register(task):
    """Adds `task` under `task.name`; returns it.

    Raises:
        ValueError: if a task of that name is registered already.
    """
    if task.name in _TASKS:
        raise ValueError(f"tasks.register: a task named {task.name!r} is registered already.")
    _TASKS[task.name] = task
    return task


def get(name):
    """The `Task` registered as `name`.

    Raises:
        ValueError: naming the unknown task and the registered ones.
    """
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown task {name!r}; the registered tasks are {', '.join(_TASKS)}.") from None


def names():
    """The registered task names, in registration order."""
    return list(_TASKS)


def cache_root(data):
    """--cache_dir, else $DSPN_TF_CACHE, else ~/.cache/dspn_tf (the data builders' root too)."""
    return data.cache_dir or image_cache.default_root()


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"A split is 'train' or 'eval'; received {split!r}.")


def _set_mnist_split(data, split, seed):
    _check_split(split)
    if data.data_source == "generated":
        raise ValueError("--data_source=generated is for CLEVR tasks; set-MNIST needs an IDX folder or 'tfds'.")
    return set_mnist.build_dataset(
        data.data_source,
        "train" if split == "train" else "test",
        shuffle_elements=True,
        seed=seed,
        data_dir=data.tfds_data_dir,
    )


def _clevr_states_split(data, split, seed):
    _check_split(split)
    if data.data_source == "tfds":
        raise ValueError(
            "--dataset=clevr_state_autoencoder reads 'generated' scenes or a CLEVR_v1.0 folder, not 'tfds'."
        )
    generated = data.data_source == "generated"
    count = data.generated_train if split == "train" else data.generated_val
    return clevr_states.build_dataset(
        data.data_source,
        "train" if split == "train" else "val",
        num_scenes=count if generated else None,
        seed=seed,
        cache_dir=os.path.join(cache_root(data), "clevr_states"),
    )


def _clevr_images_split(with_boxes):
    """The split builder of CLEVR images with their object states, or with their boxes."""

    def build(data, split, seed):
        _check_split(split)
        source = data.data_source
        if source == "generated":
            source = render.ensure_generated(
                cache_root(data), seed=seed, num_train=data.generated_train, num_val=data.generated_val
            )
        return clevr.build_dataset(
            source,
            "train" if split == "train" else "val",
            image_size=data.image_size,
            cache_dir=os.path.join(cache_root(data), "clevr"),
            with_boxes=with_boxes,
            data_dir=data.tfds_data_dir,
        )

    return build


def _random_sets_split(data, split, seed):
    _check_split(split)
    if data.data_source != "generated":
        raise ValueError(
            f"--dataset=random_sets draws its sets (--data_source=generated); received --data_source={data.data_source}."
        )
    count = data.generated_train if split == "train" else data.generated_val
    return random_sets.build_dataset(
        split, num_sets=count, set_size=RANDOM_SET_SIZE, channels=RANDOM_SET_CHANNELS, seed=seed
    )


# iDSPN's random sets at the size of its poster's bar chart: n = d = 8.
RANDOM_SET_SIZE = 8
RANDOM_SET_CHANNELS = 8


def _gaussian_points_row(image, sets, masks, target, target_mask, **baseline):
    """The first two features of N(0, 1) elements, [-3, 3] drawn as [0, 1]."""
    del image
    scaled = {"baseline": ((baseline["baseline"][0] + 3.0) / 6.0, baseline["baseline"][1])} if baseline else {}
    return visualize.set_progression((sets + 3.0) / 6.0, masks, (target + 3.0) / 6.0, target_mask, **scaled)


def _points_row(image, *steps, **baseline):
    del image  # Sets of points have no image.
    return visualize.set_progression(*steps, **baseline)


def _states_from_above_row(image, *steps, **baseline):
    del image  # The state auto-encoder has no images.
    return visualize.state_progression(*steps, clevr.ATTRIBUTES, **baseline)


def _states_on_image_row(image, *steps, **baseline):
    return visualize.states_on_image(image, *steps, clevr.ATTRIBUTES, **baseline)


def _state_table(*final):
    return visualize.state_table(*final, clevr.ATTRIBUTES)


_STATE_TABLES = {"table": _state_table, "table_tag": "state_tables"}

register(
    Task(
        name="set_mnist",
        description="set-MNIST auto-encoding (the points of an MNIST digit)",
        kind="autoencoder",
        set_key="set",
        set_size=set_mnist.MAX_SET_SIZE,
        set_channels=2,
        build_split=_set_mnist_split,
        default_loss="chamfer",
        metric="Chamfer",
        pictures=Pictures(tag="sets", row=_points_row),
    )
)
register(
    Task(
        name="clevr_state",
        description="CLEVR image -> object states",
        kind="image",
        set_key="state",
        set_size=clevr.MAX_OBJECTS,
        set_channels=clevr.STATE_DIM,
        build_split=_clevr_images_split(with_boxes=False),
        default_loss="hungarian",
        metric="AP",
        pictures=Pictures(tag="states", row=_states_on_image_row, **_STATE_TABLES),
    )
)
register(
    Task(
        name="clevr_boxes",
        description="CLEVR image -> object bounding boxes",
        kind="image",
        set_key="boxes",
        set_size=clevr.MAX_OBJECTS,
        set_channels=clevr.BOX_DIM,
        build_split=_clevr_images_split(with_boxes=True),
        default_loss="hungarian",
        metric="AP",
        pictures=Pictures(tag="boxes", row=visualize.boxes_progression),
    )
)
register(
    Task(
        name="clevr_state_autoencoder",
        description="CLEVR object states auto-encoded (state set -> z -> state set; no images)",
        kind="autoencoder",
        set_key="state",
        set_size=clevr.MAX_OBJECTS,
        set_channels=clevr.STATE_DIM,
        build_split=_clevr_states_split,
        default_loss="hungarian",
        metric="AP",
        pictures=Pictures(tag="states", row=_states_from_above_row, **_STATE_TABLES),
        caches_folders=True,
    )
)
register(
    Task(
        name="random_sets",
        description="iDSPN's random sets auto-encoded (8 elements of 8 N(0, 1) features; no padding)",
        kind="autoencoder",
        set_key="set",
        set_size=RANDOM_SET_SIZE,
        set_channels=RANDOM_SET_CHANNELS,
        build_split=_random_sets_split,
        default_loss="hungarian",
        metric="Hungarian",
        pictures=Pictures(tag="sets", row=_gaussian_points_row),
        full_sets=True,
        projection="full_mask",
        eval_metric="hungarian",
    )
)


def _numbering_split(data, split, seed):
    _check_split(split)
    return numbering.build_dataset(
        split,
        num_sets=data.numbering_train_sets if split == "train" else data.numbering_eval_sets,
        positions=data.numbering_positions,
        classes=data.numbering_classes,
        classes_per_set=data.numbering_classes_per_set,
        seed=seed,
    )


def _numbering_sizes(data):
    positions = data.numbering_positions
    return {"set_size": positions, "set_channels": positions, "input_channels": data.numbering_classes}


def _numbering_row(classes, *steps, **baseline):
    return visualize.numbering_progression(*steps, classes=classes, **baseline)


register(
    Task(
        name="numbering",
        description="class-specific numbering (iDSPN section 4.1): a multiset of class one-hots -> each element's "
        "number within its class (sizes: --numbering_*)",
        kind="set_to_set",
        set_key=numbering.SET_KEY,
        set_size=64,
        set_channels=64,
        build_split=_numbering_split,
        default_loss="numbering",
        metric="accuracy",
        pictures=Pictures(tag="numbering", row=_numbering_row),
        input_channels=4,
        input_key=numbering.INPUT_KEY,
        projection="simplex",
        sized=_numbering_sizes,
    )
)
