"""How a batch is scored: the loss, the steps it averages over, the representation weight and the inner steps."""

import dataclasses

from dspn_tf.assignment import SOLVERS, resolve_solver

LOSSES = ("chamfer", "hungarian", "numbering")


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """How a batch is scored.

    Attributes:
        set_key: Key of the target set in a batch: "set" (set-MNIST), "state"
            or "boxes" (CLEVR).
        loss: "chamfer", "hungarian" or "numbering" (`dspn_tf.losses.numbering_loss`,
            for a `SetToSet` model whose input set holds the class one-hots).
        all_steps: Average the set loss over every decoder step (the paper's
            text; the reference does this for Chamfer) or score the last
            step only (the reference's Hungarian).
        repr_lambda: Weight of `huber(g(target) - z)` (DSPN with an image
            encoder: 0.1; 0 disables it).
        iters: Inner steps of a DSPN decoder when a batch is scored (None:
            the decoder's own `iters`); an `iters` passed to
            `per_sample_losses` (the loop's `--iters_schedule`) overrides it.
        solver: The Hungarian loss's assignment solver: "tf" (in TensorFlow
            ops, XLA-compilable), "scipy" (on the host) or "auto"
            (`dspn_tf.losses.hungarian_assignment`); `SetModel.fit` /
            `evaluate` and the custom loop's `Trainer` resolve "auto" to "tf"
            when the step is XLA-compiled or an accelerator is visible
            (`for_step`). Configs saved without it load as "auto".
        score_mask: Compare the mask as one more feature of every element
            (True) or the set's features only (False: sets without padding,
            whose decoder holds the mask at 1). Configs saved without it load as True.
    """

    set_key: str = "set"
    loss: str = "chamfer"
    all_steps: bool = True
    repr_lambda: float = 0.0
    iters: int | None = None
    solver: str = "auto"
    score_mask: bool = True

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"LossSettings: `loss` must be one of {LOSSES}; received {self.loss!r}.")
        if self.repr_lambda < 0:
            raise ValueError(f"LossSettings: `repr_lambda` must be >= 0; received {self.repr_lambda}.")
        if self.iters is not None and (
            isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1
        ):
            raise ValueError(f"LossSettings: `iters` must be None or an int >= 1; received {self.iters!r}.")
        if not isinstance(self.score_mask, bool):
            raise ValueError(f"LossSettings: `score_mask` must be True or False; received {self.score_mask!r}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"LossSettings: `solver` must be one of {SOLVERS}; received {self.solver!r}.")

    def for_step(self, *, jit_compile=False):
        """These settings with "auto" `solver` resolved for a step (XLA-compiled if `jit_compile`)."""
        if self.solver != "auto":
            return self
        return dataclasses.replace(self, solver=resolve_solver("auto", jit_compile=jit_compile))

    def get_config(self):
        """The settings as a plain dict (what `from_config` and a model's `get_config` hold)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        """`LossSettings` from `get_config`'s dict; `None` gives the defaults, a `LossSettings` is returned as is.

        Raises:
            TypeError: if `config` is neither.
        """
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if not isinstance(config, dict):
            raise TypeError(f"LossSettings: expected a LossSettings or a dict; received {type(config).__name__}.")
        return cls(**config)
