"""The decoders of `--decoder`, and which of them run DSPN's inner loop.

The one place that answers "does this run have an inner loop" before a model
exists (a built model answers itself: `model.iterative`). It imports nothing
heavy, so a benchmark's parent process can ask it without loading TensorFlow.
"""

# --decoder value -> whether its decoder runs an inner loop (the others decode in one shot).
_INNER_LOOP = {"dspn": True, "mlp": False, "lstm": False, "deepsets": False}


def names():
    """The `--decoder` values, DSPN first."""
    return list(_INNER_LOOP)


def has_inner_loop(decoder):
    """Whether the decoder named `decoder` runs DSPN's inner loop.

    Raises:
        ValueError: naming an unknown decoder and the known ones.
    """
    try:
        return _INNER_LOOP[decoder]
    except KeyError:
        raise ValueError(f"Unknown decoder {decoder!r}; the decoders are {', '.join(_INNER_LOOP)}.") from None
