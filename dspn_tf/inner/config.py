"""`InnerLoopConfig`: DSPN's inner-loop settings as one frozen, validated value.

The one place their bounds are checked: `DSPN` validates its keywords through
it, and `train/flags.py` validates each flag with `InnerLoopConfig.check`, so
a bad value is refused with the same rule whether it comes from Python or
from the command line (there, when the flags are parsed).
"""

import dataclasses
import math

GRADIENTS = ("unrolled", "implicit")
INNER_LOSSES = ("huber", "mse")
STARTING_SETS = ("learned", "random", "mlp")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(choices):
    return lambda v: v in choices, "one of " + ", ".join(map(repr, choices))


# Field -> (accepts(value), what it must be).
_RULES = {
    "iters": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "gradient": _one_of(GRADIENTS),
    "momentum": (lambda v: _is_number(v) and 0.0 <= v < 1.0, "in [0, 1)"),
    "nesterov": (lambda v: isinstance(v, bool), "True or False"),
    "clip": (lambda v: v is None or (_is_number(v) and v > 0), "a positive number or None"),
    "inner_loss": _one_of(INNER_LOSSES),
    "starting_set": _one_of(STARTING_SETS),
    "start_regularizer": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "tolerance": (lambda v: v is None or (_is_number(v) and v > 0), "a positive number or None"),
    "seed": (lambda v: v is None or _is_int(v), "an integer or None"),
}


@dataclasses.dataclass(frozen=True)
class InnerLoopConfig:
    """DSPN's inner-loop settings (defaults: the DSPN paper's algorithm).

    Attributes:
        iters: Inner steps (paper: 10).
        lr: Per-sample inner step size (paper: 25; iDSPN: 1).
        gradient: "unrolled" (second order through every step) or "implicit" (iDSPN).
        momentum: Momentum of the inner steps in [0, 1) (iDSPN: 0.9).
        nesterov: With momentum, Nesterov rather than heavy-ball steps.
        clip: Per-sample gradient norm clip, or None (iDSPN: 10).
        inner_loss: "huber" (paper) or "mse" (iDSPN).
        starting_set: "learned" (paper), "random" (iDSPN) or "mlp" (an MLP head on z).
        start_regularizer: Weight of the distance to the start in the inner objective.
        tolerance: Per-sample early-stopping threshold of the inner objective, or None.
        seed: Seed of random starting sets, or None.

    Raises:
        ValueError: naming the first field out of range.
    """

    iters: int = 10
    lr: float = 25.0
    gradient: str = "unrolled"
    momentum: float = 0.0
    nesterov: bool = True
    clip: float | None = None
    inner_loss: str = "huber"
    starting_set: str = "learned"
    start_regularizer: float = 0.0
    tolerance: float | None = None
    seed: int | None = None

    def __post_init__(self):
        for field in dataclasses.fields(self):
            self.check(field.name, getattr(self, field.name), owner="DSPN")

    @staticmethod
    def check(name, value, owner="InnerLoopConfig"):
        """Raises ValueError naming `name` unless `value` is a valid value of that field."""
        accepts, must_be = _RULES[name]
        if not accepts(value):
            raise ValueError(f"{owner}: `{name}` must be {must_be}; received {name}={value!r}.")

    def as_dict(self):
        """The settings as `DSPN` keywords."""
        return dataclasses.asdict(self)
