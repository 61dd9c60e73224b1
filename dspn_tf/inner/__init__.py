"""The parts of DSPN's inner loop, each a small serialisable object (docs/algorithm.md §4).

- `objectives`: what a step descends (`Objective`, `StartRegularizer`).
- `optimizers`: how a gradient becomes a direction (`chain`, `ClipPerSample`, `Momentum`).
- `projections`: what keeps the set feasible after each step (`ClipMask`, `FullMask`, `SimplexProjection`).
- `stopping`: which samples stop early (`Never`, `Tolerance`).
- `starts`: where the loop begins (`LearnedStart`, `RandomStart`, `MLPStart`).
- `state`: the named loop state (`LoopState`).
- `config`: `InnerLoopConfig`, the validated shorthand settings.

`DSPN` accepts each part as an object or, as Keras accepts `activation="relu"`,
through its shorthand keywords.
"""

from dspn_tf.inner.config import InnerLoopConfig
from dspn_tf.inner.objectives import Objective, StartRegularizer
from dspn_tf.inner.optimizers import ClipPerSample, InnerOptimizer, InnerTransform, Momentum, chain
from dspn_tf.inner.part import Part
from dspn_tf.inner.projections import ClipMask, FullMask, Projection, SimplexProjection
from dspn_tf.inner.starts import LearnedStart, MLPStart, RandomStart, StartingSet
from dspn_tf.inner.state import LoopState
from dspn_tf.inner.stopping import Never, StoppingRule, Tolerance

__all__ = [
    "ClipMask",
    "ClipPerSample",
    "FullMask",
    "InnerLoopConfig",
    "InnerOptimizer",
    "InnerTransform",
    "LearnedStart",
    "LoopState",
    "MLPStart",
    "Momentum",
    "Never",
    "Objective",
    "Part",
    "Projection",
    "RandomStart",
    "SimplexProjection",
    "StartRegularizer",
    "StartingSet",
    "StoppingRule",
    "Tolerance",
    "chain",
]
