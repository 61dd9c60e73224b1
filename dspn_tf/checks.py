"""Argument and shape checks shared by the layers, with messages that name the culprit."""


def positive_ints(name, **values):
    """Raises ValueError unless every keyword value is an int >= 1."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: `{key}` must be a positive integer; received {key}={value!r}.")


def set_and_mask(name, x, mask):
    """Raises ValueError unless `x` is `[batch, n, c]` and `mask` is `[batch, n]`."""
    if x.shape.rank != 3:
        raise ValueError(f"{name}: the set must have rank 3 [batch, set_size, features]; received shape {x.shape}.")
    if mask is None:
        return
    if mask.shape.rank != 2 or not mask.shape.is_compatible_with(x.shape[:2]):
        raise ValueError(
            f"{name}: `mask` must have shape [batch, set_size] = {x.shape[:2]} "
            f"to match the set of shape {x.shape}; received mask shape {mask.shape}."
        )


def features(name, x, expected):
    """Raises ValueError if the last dim of `x` differs from the built one."""
    received = x.shape[-1]
    if received is not None and expected is not None and received != expected:
        raise ValueError(f"{name} was built for {expected} features per element but received a set of shape {x.shape}.")


def embedding(name, z, latent):
    """Raises ValueError unless `z` is `[batch, latent]` (latent as built, if known)."""
    if z.shape.rank != 2:
        raise ValueError(f"{name}: `z` must have shape [batch, latent]; received shape {z.shape}.")
    if latent is not None and z.shape[-1] is not None and z.shape[-1] != latent:
        raise ValueError(f"{name} was built for embeddings of size {latent} but received z of shape {z.shape}.")


def choice(name, key, value, choices):
    """Raises ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"{name}: `{key}` must be one of {', '.join(repr(c) for c in choices)}; received {key}={value!r}."
        )


def positive_float(name, **values):
    """Raises ValueError unless every keyword value is a finite real number > 0."""
    for key, value in values.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")
        if not ok:
            raise ValueError(f"{name}: `{key}` must be a positive number; received {key}={value!r}.")


def finite_float(name, key, value):
    """`value` as a float; raises ValueError unless it is a finite real number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < float("inf")
    if not ok:
        raise ValueError(f"{name}: `{key}` must be a finite number; received {key}={value!r}.")
    return float(value)
