"""Input checks at mi-ref's boundaries, written once: each raises ``ValueError`` with a message that says
what was expected and what was given."""

import numbers

import numpy as np


def positive_int(value, name, minimum=1):
    """``value`` as an int if it is an integer >= ``minimum`` (not a bool), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def sizes(value, name, allow_empty=False):
    """``value`` as a tuple if it is a tuple of positive integers (layer widths, channels), non-empty unless
    ``allow_empty``, else ``ValueError``."""
    if not isinstance(value, (tuple, list)) or any(
            isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)) or v < 1 for v in value):
        raise ValueError(f"{name} must be a tuple of positive integers, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must list at least one width, got ()")
    return tuple(int(v) for v in value)


def nonempty(value, name, what="name"):
    """``value`` as a tuple if it is a non-empty tuple (of names of variants, targets, ...), else ``ValueError``."""
    if not isinstance(value, (tuple, list)) or not value:
        raise ValueError(f"{name} must list at least one {what}, got {value!r}")
    return tuple(value)


def positive_number(value, name):
    """``value`` as a float if it is a finite number > 0, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def nonnegative_number(value, name):
    """``value`` as a float if it is a finite number >= 0, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def one_of(value, choices, name):
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")
    return value


def batch(x, width, name="input"):
    """Raise ``ValueError`` unless ``x`` is a 2-D batch ``(B, width)`` with B >= 1."""
    shape = np.shape(x)
    if len(shape) != 2 or shape[1] != width or shape[0] < 1:
        raise ValueError(f"{name} must have shape (batch, {width}), got {shape}")


def finite_batch(x, in_dim):
    """x as a float64 array ``(B, in_dim)`` with B >= 1 and finite entries, else ``ValueError``
    (``in_dim`` None: any width)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1 or (in_dim is not None and x.shape[1] != in_dim):
        width = "in_dim" if in_dim is None else in_dim
        raise ValueError(f"x must be a batch of inputs with shape (batch, {width}) and batch >= 1, "
                         f"got shape {x.shape}; reshape a single input to (1, {width})")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"x has non-finite entries (nan or inf), first at index "
                         f"{tuple(int(i) for i in bad)}; Jacobians are only defined at finite inputs")
    return x


def generator(rng):
    """``rng`` if it is a ``numpy.random.Generator`` (the explicit source of every random draw), else
    ``ValueError`` saying how to make one."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"expected a numpy.random.Generator, got {type(rng).__name__}; "
                         "pass numpy.random.default_rng(seed)")
    return rng
